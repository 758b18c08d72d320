"""Did a condition beat its baseline on the same items? Paired comparisons, and how many items it takes.

Every condition of a run is scored on the same items, so two conditions are compared item by item:
the items where only the condition is right (wins), where only the baseline is (losses), and where
they agree (which carry no information about the difference). Two separate Wilson intervals cannot
say this; the paired statistics can, with more power:

* diff = (wins - losses) / n, the difference of the two accuracies on the items both saw;
* its 95% interval by Newcombe's hybrid score method for paired proportions (Newcombe 1998, Stat.
  Med. 17:2635, method 10: the two Wilson intervals combined with the estimated correlation of the
  pair, with his correction of that correlation), sensible at 0, 1 and for small n;
* the exact two-sided McNemar p-value: under "no difference" each discordant item is a fair coin,
  so p = min(1, 2 P[Binomial(wins + losses, 1/2) <= min(wins, losses)]).

Power is that of this exact test, computed exactly: with discordance psi (the share of items where
the two disagree) and a true difference delta, the discordant count is Binomial(n, psi) and each
discordant item a win with probability (psi + delta) / (2 psi). (Connor's 1987 normal approximation
overstates it: 0.45 where it is 0.12 at n = 8, delta = 0.47, psi = 0.5.) psi comes from the run (the
observed share) and is at least |delta|, since a difference of delta needs that many discordant items.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Any

import numpy as np

from unlock.run.conditions import BASELINE, CONDITIONS
from unlock.run.scores import wilson_interval

Z95 = NormalDist().inv_cdf(0.975)
LEVEL = 0.05  # the tests' level, matching the 95% intervals
CONTROL = "random"  # the steered control: a steered condition should also beat it


@dataclass(frozen=True)
class PowerSettings:
    """What a comparison should be able to detect: the paper's gain for the setup where it reports one,
    else ``effect`` (an absolute accuracy difference), with probability ``power`` at the 5% level.
    ``discordance`` is the dry run's guess of the share of items two conditions disagree on (a run
    uses the share it observes)."""

    effect: float = 0.10
    power: float = 0.8
    discordance: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.effect <= 1:
            raise ValueError(f"stats.effect {self.effect} is out of range: must be in (0, 1] (an accuracy difference)")
        if not 0 < self.power < 1:
            raise ValueError(f"stats.power {self.power} is out of range: must be in (0, 1)")
        if not 0 < self.discordance <= 1:
            raise ValueError(f"stats.discordance {self.discordance} is out of range: must be in (0, 1]")


def baselines(condition: str) -> list[str]:
    """What a condition is compared with: every condition with the unsteered Target, and every steered
    one also with the random direction of the same norm (the control for "any push helps")."""
    steered = CONDITIONS[condition].vectors is not None if condition in CONDITIONS else False
    out = [BASELINE] if condition != BASELINE else []
    return out + ([CONTROL] if steered and condition != CONTROL else [])


def effect_for(
    gains: Mapping[tuple[str, str, str], float], key: tuple[str, str, str], settings: PowerSettings
) -> tuple[float, str]:
    """The effect a comparison (condition, task, baseline) should detect and where it comes from: the
    paper's gain (its size) where the paper reports a non-zero one, else ``settings.effect``."""
    paper = gains.get(key)
    return (abs(paper), "paper") if paper else (settings.effect, "default")


def newcombe_interval(both: int, wins: int, losses: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """95% interval for p_condition - p_baseline from the paired 2x2 table (Newcombe 1998, method 10)."""
    n = both + wins + losses + neither
    p1, p2 = (both + wins) / n, (both + losses) / n
    l1, u1 = wilson_interval(both + wins, n, z)
    l2, u2 = wilson_interval(both + losses, n, z)
    margins = (both + wins) * (losses + neither) * (both + losses) * (wins + neither)
    phi = 0.0
    if margins:
        cross = both * neither - wins * losses
        phi = (cross - n / 2 if cross > n / 2 else min(cross, 0)) / math.sqrt(margins)
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = diff + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def mcnemar_exact(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value (conditional binomial test of the discordant items)."""
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(wins, losses) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**m)))


def _reject_up_to(m: np.ndarray, level: float) -> np.ndarray:
    """For each number m of discordant items, the largest k with exact two-sided p(k, m - k) <= level
    (-1 where even k = 0 is not significant): the test rejects when min(wins, losses) <= k."""
    from scipy.stats import binom  # a second to import: only where power is computed

    k = binom.ppf(level / 2, m, 0.5).astype(int)  # smallest k with P[B <= k] >= level / 2
    return np.where(2 * binom.cdf(k, m, 0.5) <= level, k, k - 1)


def power_at(n: int, effect: float, discordance: float, level: float = LEVEL) -> float:
    """Exact power of the exact McNemar test on n items when the condition's accuracy exceeds the
    baseline's by ``effect`` and a share ``discordance`` (at least |effect|) of items disagree: the
    discordant count is Binomial(n, psi) and each discordant item a win with (psi + delta) / (2 psi)."""
    from scipy.stats import binom

    delta = abs(effect)
    psi = min(max(discordance, delta), 1.0)
    if n < 1 or delta == 0:
        return level if n >= 1 else 0.0
    m = np.arange(n + 1)
    k = _reject_up_to(m, level)
    win = (psi + delta) / (2 * psi)
    reject = np.where(k >= 0, binom.cdf(k, m, win) + binom.sf(m - k - 1, m, win), 0.0)
    return float(np.clip((binom.pmf(m, n, psi) * reject).sum(), 0.0, 1.0))


def items_needed(effect: float, discordance: float, power: float = 0.8, level: float = LEVEL) -> int:
    """The number of items n at which :func:`power_at` first reaches ``power`` (power(n) >= power >
    power(n - 1)), found by bisection from Connor's (1987) normal approximation."""
    delta = abs(effect)
    psi = min(max(discordance, delta), 1.0)
    z_a, z_b = NormalDist().inv_cdf(1 - level / 2), NormalDist().inv_cdf(power)
    guess = math.ceil((z_a * math.sqrt(psi) + z_b * math.sqrt(max(psi - delta**2, 0.0))) ** 2 / delta**2)
    low, high = 0, max(guess, 1)
    while power_at(high, delta, psi, level) < power:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power_at(middle, delta, psi, level) >= power else (middle, high)
    return high


def compare(
    condition: Mapping[Hashable, bool], baseline: Mapping[Hashable, bool], effect: float, settings: PowerSettings
) -> dict[str, Any]:
    """The paired comparison on the items both were scored on (keys: item ids; values: correct)."""
    items = sorted(set(condition) & set(baseline), key=str)
    n = len(items)
    if n == 0:
        return {"n": 0}
    wins = sum(condition[i] and not baseline[i] for i in items)
    losses = sum(baseline[i] and not condition[i] for i in items)
    both = sum(condition[i] and baseline[i] for i in items)
    low, high = newcombe_interval(both, wins, losses, n - both - wins - losses)
    discordance = (wins + losses) / n
    power = power_at(n, effect, discordance)
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "diff": (wins - losses) / n,
        "diff_ci95": [low, high],
        "p_mcnemar": mcnemar_exact(wins, losses),
        "discordance": discordance,
        "effect": effect,
        "items_needed": items_needed(effect, discordance, settings.power),
        "power": power,
        "underpowered": power < settings.power,
    }


def comparisons(
    outcomes: Mapping[str, Mapping[str, Mapping[Hashable, bool]]],
    effects: Mapping[tuple[str, str, str], float],
    settings: PowerSettings,
) -> dict[str, Any]:
    """``paired[condition][task][baseline]`` for every condition and baseline (:func:`baselines`) a run
    evaluated; ``outcomes[condition][task][item] = correct``; ``effects[(condition, task, baseline)]``:
    the paper's gain where it reports one (``effect_from`` says which was used)."""
    out: dict[str, Any] = {}
    for condition, per_task in outcomes.items():
        for task, items in per_task.items():
            for baseline in baselines(condition):
                if task not in outcomes.get(baseline, {}):
                    continue
                effect, source = effect_for(effects, (condition, task, baseline), settings)
                result = compare(items, outcomes[baseline][task], effect, settings)
                result["effect_from"] = source
                out.setdefault(condition, {}).setdefault(task, {})[baseline] = result
    return out


def item_outcomes(rows: list[Mapping[str, Any]]) -> dict[Hashable, bool] | None:
    """{item: correct} from an evaluation's sample rows (lm-eval's doc_id, else the row's position);
    None when a row has no 0/1 ``acc`` (a metric that is not per-item correctness)."""
    out: dict[Hashable, bool] = {}
    for index, row in enumerate(rows):
        acc = row.get("acc")
        if isinstance(acc, bool) or acc in (0, 1):
            out[index if row.get("doc_id") is None else row["doc_id"]] = bool(acc)
        else:
            return None
    return out


def excludes_zero(result: Mapping[str, Any]) -> bool:
    low, high = result.get("diff_ci95") or (0.0, 0.0)
    return interval_excludes_zero(low, high)


def interval_excludes_zero(low: float | None, high: float | None) -> bool:
    """Whether a 95% interval lies wholly above or below 0 (a missing end counts as 0)."""
    return (low or 0.0) > 0 or (high or 0.0) < 0


def cell(result: Mapping[str, Any] | None) -> str:
    """One table cell: the paired difference, its interval, the p-value, and a mark when underpowered."""
    if not result or not result.get("n"):
        return "-"
    low, high = result["diff_ci95"]
    mark = f" (needs {result['items_needed']})" if result["underpowered"] else ""
    return f"{result['diff']:+.3f} [{low:+.2f}, {high:+.2f}] p={result['p_mcnemar']:.2g}{mark}"
