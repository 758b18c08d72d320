"""Paired comparisons against independent computations: exact binomial sums, a published interval,
exact coverage, and power by enumerating every outcome."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from scipy.stats import binomtest

from unlock.analysis.paired import (
    PowerSettings,
    baselines,
    compare,
    comparisons,
    item_outcomes,
    items_needed,
    mcnemar_exact,
    newcombe_interval,
    power_at,
)


def _two_sided_binomial(wins: int, losses: int) -> float:
    """P[outcome as or less likely than the observed] under Binomial(m, 1/2), summed exactly."""
    m = wins + losses
    observed = math.comb(m, wins)
    return float(sum(Fraction(math.comb(m, i), 2**m) for i in range(m + 1) if math.comb(m, i) <= observed))


@pytest.mark.parametrize("m", [0, 1, 2, 5, 13, 40, 61])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_items(m):
    for wins in range(m + 1):
        expected = _two_sided_binomial(wins, m - wins) if m else 1.0
        assert mcnemar_exact(wins, m - wins) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        if m:
            assert mcnemar_exact(wins, m - wins) == pytest.approx(binomtest(wins, m, 0.5).pvalue, rel=1e-9)


def test_newcombe_interval_matches_the_published_example():
    """Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables, ch. 8 (Cavo et al. 2012):
    estimate -0.0621, 95% CI -0.1186 to -0.0046 (Newcombe's square-and-add method)."""
    low, high = newcombe_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    assert newcombe_interval(59, 16, 6, 80) == pytest.approx((0.0046, 0.1186), abs=1e-4), "symmetric in the pair"


def _multinomial(counts: tuple[int, ...], probs: tuple[float, ...]) -> float:
    n = sum(counts)
    if any(c and not p for c, p in zip(counts, probs, strict=True)):
        return 0.0
    log = math.lgamma(n + 1) + sum(
        c * math.log(p) - math.lgamma(c + 1) for c, p in zip(counts, probs, strict=True) if c
    )
    return math.exp(log)


@pytest.mark.parametrize("probs", [(0.3, 0.2, 0.1), (0.1, 0.05, 0.05), (0.45, 0.3, 0.05), (0.05, 0.02, 0.2)])
def test_interval_covers_the_true_difference_at_least_94_percent_exactly(probs):
    """Exact coverage over every 2x2 table of 30 items (the Wald interval gets 0.926-0.933 on three)."""
    both, win, loss = probs
    neither, n, covered = 1 - both - win - loss, 30, 0.0
    for a in range(n + 1):
        for b in range(n + 1 - a):
            for c in range(n + 1 - a - b):
                low, high = newcombe_interval(a, b, c, n - a - b - c)
                if low <= win - loss <= high:
                    covered += _multinomial((a, b, c, n - a - b - c), (both, win, loss, neither))
    assert 0.94 <= covered <= 0.995


def _power_by_enumeration(n: int, delta: float, psi: float) -> float:
    """Every (wins, losses, concordant) outcome of n items, its probability, and the test's decision."""
    win, loss = (psi + delta) / 2, (psi - delta) / 2
    return sum(
        _multinomial((b, c, n - b - c), (win, loss, 1 - psi))
        for b in range(n + 1)
        for c in range(n + 1 - b)
        if mcnemar_exact(b, c) <= 0.05
    )


@pytest.mark.parametrize(("n", "delta", "psi"), [(25, 0.2, 0.3), (32, 0.1, 0.2), (18, 0.467, 0.5), (40, 0.05, 0.05)])
def test_power_equals_enumerating_every_outcome(n, delta, psi):
    assert power_at(n, delta, psi) == pytest.approx(_power_by_enumeration(n, delta, psi), abs=1e-9)


@pytest.mark.parametrize(("delta", "psi"), [(0.1, 0.2), (0.3, 0.5), (0.467, 0.5), (0.036, 0.15)])
def test_items_needed_is_where_power_crosses_the_target(delta, psi):
    n = items_needed(delta, psi, 0.8)
    assert power_at(n, delta, psi) >= 0.8 > power_at(n - 1, delta, psi)
    assert items_needed(delta, psi / 2, 0.8) <= n, "fewer disagreements (all the gain's) need fewer items"


def test_a_difference_needs_at_least_that_much_discordance():
    assert power_at(50, 0.2, 0.05) == power_at(50, 0.2, 0.2)
    assert items_needed(0.2, 0.0) == items_needed(0.2, 0.2)


def _items(correct: str) -> dict[int, bool]:
    return {i: c == "1" for i, c in enumerate(correct)}


def test_compare_counts_wins_and_losses_on_the_shared_items():
    condition, baseline = _items("1101100110"), _items("1000101110")
    del baseline[9]  # an item the baseline was not scored on is left out
    result = compare(condition, baseline, 0.1, PowerSettings())
    assert (result["n"], result["wins"], result["losses"]) == (9, 2, 1)
    assert result["diff"] == pytest.approx(1 / 9)
    assert result["diff_ci95"] == pytest.approx(list(newcombe_interval(4, 2, 1, 2)))
    assert result["p_mcnemar"] == 1.0 and result["discordance"] == pytest.approx(3 / 9)
    assert result["underpowered"] and result["items_needed"] > 9
    assert compare(condition, {}, 0.1, PowerSettings()) == {"n": 0}


def test_comparisons_pair_every_condition_with_its_baselines_and_the_papers_gain():
    outcomes = {
        name: {"task": _items(bits)}
        for name, bits in (
            ("unsteered", "0000011111"),
            ("unlock", "1111011111"),
            ("random", "0000111111"),
            ("prompting", "1111111111"),
        )
    }
    paired = comparisons(outcomes, {("unlock", "task", "unsteered"): 0.467}, PowerSettings(effect=0.1))
    assert {c: {b for b in paired[c]["task"]} for c in paired} == {
        "unlock": {"unsteered", "random"},
        "random": {"unsteered"},
        "prompting": {"unsteered"},
    }
    vs = paired["unlock"]["task"]["unsteered"]
    assert (vs["wins"], vs["losses"], vs["effect"], vs["effect_from"]) == (4, 0, 0.467, "paper")
    assert paired["unlock"]["task"]["random"]["effect_from"] == "default"
    assert paired["unlock"]["task"]["random"]["effect"] == 0.1
    assert baselines("unsteered") == [] and baselines("reference") == ["unsteered"]


def test_item_outcomes_refuse_a_metric_that_is_not_correctness():
    rows = [{"doc_id": 3, "acc": 1}, {"doc_id": 5, "acc": 0.0}, {"doc_id": None, "acc": True}]
    assert item_outcomes(rows) == {3: True, 5: False, 2: True}
    assert item_outcomes([{"doc_id": 0, "acc": 0.5}]) is None
    assert item_outcomes([{"doc_id": 0}]) is None


@pytest.mark.parametrize(("field", "value"), [("effect", 0.0), ("effect", 1.5), ("power", 1.0), ("discordance", 0.0)])
def test_power_settings_name_the_bad_value(field, value):
    with pytest.raises(ValueError, match=rf"stats\.{field} {value} is out of range"):
        PowerSettings(**{field: value})
