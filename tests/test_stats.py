"""The statistics library against independent computations: exact binomial sums, a published interval,
exact coverage, power by enumerating every outcome, Holm's procedure run at every level, and the
sign-flip test by enumerating every sign pattern."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binomtest, permutation_test, ttest_1samp

from unlock.analysis.stats import (
    holm,
    items_needed,
    mcnemar_exact,
    mcnemar_one_sided,
    newcombe_interval,
    power_at,
    sign_flip_test,
    t_interval,
    wilson_interval,
)


def test_wilson_interval_is_scipys_wilson_interval():
    for k, n in ((0, 10), (3, 10), (10, 10), (20, 40), (1, 1), (57, 200)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-6)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


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


@pytest.mark.parametrize("m", [0, 1, 2, 5, 13, 40, 61])
def test_one_sided_mcnemar_is_the_upper_binomial_tail(m):
    for wins in range(m + 1):
        tail = float(sum(Fraction(math.comb(m, i), 2**m) for i in range(wins, m + 1))) if m else 1.0
        assert mcnemar_one_sided(wins, m - wins) == pytest.approx(tail, rel=1e-12, abs=1e-15)
        if m:
            expected = binomtest(wins, m, 0.5, alternative="greater").pvalue
            assert mcnemar_one_sided(wins, m - wins) == pytest.approx(expected, rel=1e-9)
            assert mcnemar_one_sided(wins, m - wins) <= mcnemar_exact(wins, m - wins) or wins < m - wins


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


def _power_by_enumeration(n: int, delta: float, psi: float, level: float = 0.05, sided: int = 2) -> float:
    """Every (wins, losses, concordant) outcome of n items, its probability, and the test's decision."""
    win, loss = (psi + delta) / 2, (psi - delta) / 2
    test = mcnemar_exact if sided == 2 else mcnemar_one_sided
    return sum(
        _multinomial((b, c, n - b - c), (win, loss, 1 - psi))
        for b in range(n + 1)
        for c in range(n + 1 - b)
        if test(b, c) <= level
    )


@pytest.mark.parametrize(("n", "delta", "psi"), [(25, 0.2, 0.3), (32, 0.1, 0.2), (18, 0.467, 0.5), (40, 0.05, 0.05)])
@pytest.mark.parametrize(("level", "sided"), [(0.05, 2), (0.05, 1), (0.05 / 28, 2), (0.01, 1)])
def test_power_equals_enumerating_every_outcome(n, delta, psi, level, sided):
    expected = _power_by_enumeration(n, delta, psi, level, sided)
    assert power_at(n, delta, psi, level, sided) == pytest.approx(expected, abs=1e-9)


def test_the_one_sided_test_has_more_power_than_the_two_sided_one():
    assert power_at(64, 0.1, 0.2, 0.05, 1) > power_at(64, 0.1, 0.2, 0.05, 2)
    assert items_needed(0.1, 0.2, 0.8, 0.05, 1) < items_needed(0.1, 0.2, 0.8, 0.05, 2)
    with pytest.raises(ValueError, match="sided 3 is out of range"):
        power_at(10, 0.1, 0.2, 0.05, 3)


@pytest.mark.parametrize(("delta", "psi"), [(0.1, 0.2), (0.3, 0.5), (0.467, 0.5), (0.036, 0.15)])
@pytest.mark.parametrize(("level", "sided"), [(0.05, 2), (0.05, 1), (0.05 / 28, 2)])
def test_items_needed_is_where_power_crosses_the_target(delta, psi, level, sided):
    n = items_needed(delta, psi, 0.8, level, sided)
    assert power_at(n, delta, psi, level, sided) >= 0.8 > power_at(n - 1, delta, psi, level, sided)
    assert items_needed(delta, psi / 2, 0.8, level, sided) <= n, "fewer disagreements (all the gain's) need fewer"


def test_a_difference_needs_at_least_that_much_discordance():
    assert power_at(50, 0.2, 0.05) == power_at(50, 0.2, 0.2)
    assert items_needed(0.2, 0.0) == items_needed(0.2, 0.2)


def _holm_rejects(pvalues: list[float], alpha: float) -> set[int]:
    """Holm's step-down procedure as defined: walk the p-values up from the smallest, rejecting the
    j-th (from 0) while it is <= alpha / (m - j); stop at the first that is not."""
    m, rejected = len(pvalues), set()
    for j, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        if pvalues[i] > alpha / (m - j):
            break
        rejected.add(i)
    return rejected


@pytest.mark.parametrize("seed", range(6))
def test_holm_adjusted_p_is_the_smallest_level_at_which_the_procedure_rejects(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 12))
    p = [float(v) for v in rng.choice([0.001, 0.004, 0.01, 0.02, 0.03, 0.2, 0.5, 1.0], m)] + list(rng.random(3) / 20)
    adjusted = holm(p)
    assert all(1.0 >= a >= q for a, q in zip(adjusted, p, strict=True)), "never below the raw p, capped at 1"
    order = sorted(range(len(p)), key=lambda i: p[i])
    assert all(adjusted[a] <= adjusted[b] for a, b in itertools.pairwise(order)), "monotone in the raw p"
    levels = sorted({*(a * (1 + 1e-9) for a in adjusted), *(a * (1 - 1e-9) for a in adjusted), 0.05, 0.01})
    for alpha in (a for a in levels if a < 1):  # an adjusted p of 1 is the cap: the procedure's alpha < 1
        assert {i for i, a in enumerate(adjusted) if a <= alpha} == _holm_rejects(p, alpha), alpha
    assert holm([]) == [] and holm([0.3]) == [0.3] and holm([0.6, 0.6]) == [1.0, 1.0]


def _sign_flip_by_enumeration(d: list[int]) -> Fraction:
    observed = abs(sum(d))
    hits = sum(abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= observed for signs in _signs(len(d)))
    return Fraction(hits, 2 ** len(d))


def _signs(n: int):
    return itertools.product((1, -1), repeat=n)


@pytest.mark.parametrize("seed", range(12))
def test_sign_flip_test_equals_enumerating_every_sign_pattern(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 13))
    d = [int(v) for v in rng.integers(-40, 41, n)]
    if seed % 3 == 0:
        d = [int(v) for v in rng.integers(-3, 4, n)]  # small integers: many ties and zeros
    test = sign_flip_test(d)
    assert test.unit == 1.0
    assert test.p == pytest.approx(float(_sign_flip_by_enumeration(d)), rel=1e-12)
    assert sign_flip_test([-x for x in d]).p == pytest.approx(test.p, rel=1e-12), "symmetric"


@pytest.mark.parametrize("seed", range(4))
def test_sign_flip_of_shares_counts_them_in_the_grids_unit(seed):
    """Shares in thousandths: the p-value is the enumeration's on the rounded differences."""
    rng = np.random.default_rng(100 + seed)
    d = rng.uniform(-0.5, 0.5, int(rng.integers(4, 12)))
    test = sign_flip_test(d, unit=1e-3)
    assert test.unit == 1e-3
    expected = _sign_flip_by_enumeration([int(round(x * 1000)) for x in d])
    assert test.p == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_sign_flip_matches_scipys_exact_permutation_test(seed):
    rng = np.random.default_rng(200 + seed)
    n = 14
    x = rng.integers(0, 200, n).astype(float)
    y = x + rng.integers(-30, 40, n)
    exact = permutation_test(
        (x, y), lambda a, b: np.mean(a - b), permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    )
    assert sign_flip_test(x - y).p == pytest.approx(exact.pvalue, rel=1e-9)


def test_sign_flip_coarsens_its_unit_to_keep_the_table_small():
    d = [1_000_000, -250_000, 600_000, 123_457, 2_000_000]
    test = sign_flip_test(d, unit=1.0, max_units=10_000)
    assert test.unit > 1 and sum(round(abs(x) / test.unit) for x in d) <= 10_000
    expected = _sign_flip_by_enumeration([round(x / test.unit) for x in d])
    assert test.p == pytest.approx(float(expected), rel=1e-12)
    assert sign_flip_test([0, 0, 0]).p == 1.0 and sign_flip_test([]).p == 1.0
    assert sign_flip_test([5] * 10).p == pytest.approx(2 / 2**10), "all ten the same sign: the two extremes"
    with pytest.raises(ValueError, match="finite"):
        sign_flip_test([1.0, math.nan])


def test_t_interval_is_scipys_one_sample_interval():
    rng = np.random.default_rng(7)
    d = rng.normal(3, 10, 25)
    ci = ttest_1samp(d, 0).confidence_interval(0.95)
    assert t_interval(d) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert all(math.isnan(v) for v in t_interval([1.0]))
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
