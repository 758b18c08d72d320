"""Every statistical formula the run's comparisons use, pure and exact where it can be: intervals,
exact tests, their exact power, Holm's adjustment, and an exact paired permutation test.

Only the standard library, numpy and scipy: the decisions built on these (unlock.analysis.paired) are
checked against independent computations in tests/test_stats.py.

* :func:`wilson_interval`: one proportion's 95% score interval, sensible at 0, 1 and for small n.
* :func:`newcombe_interval`: the paired difference of two proportions (Newcombe 1998, Stat. Med.
  17:2635, method 10: the two Wilson intervals combined with the pair's estimated correlation, with
  his correction of that correlation).
* :func:`mcnemar_exact`, :func:`mcnemar_one_sided`: under "no difference" each discordant item is a
  fair coin, so the exact tests are binomial sums, computed with Fractions.
* :func:`power_at`, :func:`items_needed`: the exact tests' power, computed exactly. With discordance
  psi (the share of items where the two disagree) and a true difference delta, the discordant count is
  Binomial(n, psi) and each discordant item a win with probability (psi + delta) / (2 psi). (Connor's
  1987 normal approximation overstates it: 0.45 where it is 0.12 at n = 8, delta = 0.47, psi = 0.5.)
  psi is at least |delta|, since a difference of delta needs that many discordant items.
* :func:`holm`: step-down adjusted p-values, so one family of tests keeps its error rate at the level.
* :func:`sign_flip_test`, :func:`t_interval`: a real-valued per-item metric (generation length,
  repetition): under "no difference" each item's difference is as likely negative as positive, so the
  exact null distribution of the summed difference is that of random sign flips, counted by dynamic
  programming over integer sums; the t interval reports the size of the shift beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)
LEVEL = 0.05  # the tests' level, matching the 95% intervals
MAX_UNITS = 2_000_000  # the sign-flip DP's largest sum of |differences| in grid units (its table's length)


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; sensible at 0 and 1 and for small n."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


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
    """Exact two-sided McNemar p-value (conditional binomial test of the discordant items):
    min(1, 2 P[Binomial(wins + losses, 1/2) <= min(wins, losses)])."""
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(wins, losses) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**m)))


def mcnemar_one_sided(wins: int, losses: int) -> float:
    """Exact one-sided McNemar p-value for "the condition is right on more items than the baseline":
    P[Binomial(wins + losses, 1/2) >= wins]. A pre-declared direction (the claim that a method helps)
    needs no second tail, so this test has more power than the two-sided one at the same level."""
    m = wins + losses
    if m == 0:
        return 1.0
    return float(Fraction(sum(math.comb(m, i) for i in range(wins, m + 1)), 2**m))


def _check_sided(sided: int) -> None:
    if sided not in (1, 2):
        raise ValueError(f"sided {sided!r} is out of range: must be 1 (one-sided) or 2 (two-sided)")


def _reject_up_to(m: np.ndarray, level: float) -> np.ndarray:
    """Two-sided: for each number m of discordant items, the largest k with exact two-sided p(k, m - k)
    <= level (-1 where even k = 0 is not significant): the test rejects when min(wins, losses) <= k."""
    from scipy.stats import binom  # a second to import: only where power is computed

    k = binom.ppf(level / 2, m, 0.5).astype(int)  # smallest k with P[B <= k] >= level / 2
    return np.where(2 * binom.cdf(k, m, 0.5) <= level, k, k - 1)


def _reject_from(m: np.ndarray, level: float) -> np.ndarray:
    """One-sided: for each number m of discordant items, the smallest k with P[Binomial(m, 1/2) >= k]
    <= level (m + 1 where none is): the test rejects when wins >= k."""
    from scipy.stats import binom

    guess = np.ceil(binom.isf(level, m, 0.5)).astype(int) + 1  # about the smallest such k
    candidates = guess[:, None] + np.arange(-2, 3)[None, :]  # the float tail may be off by one either way
    ok = (binom.sf(candidates - 1, m[:, None], 0.5) <= level) | (candidates > m[:, None])
    return np.maximum(candidates[np.arange(len(m)), ok.argmax(axis=1)], 0)


@lru_cache(maxsize=4096)  # a run, and the simulation tests, ask for the same (n, discordance) many times
def power_at(n: int, effect: float, discordance: float, level: float = LEVEL, sided: int = 2) -> float:
    """Exact power of the exact McNemar test on n items when the condition's accuracy exceeds the
    baseline's by ``effect`` and a share ``discordance`` (at least |effect|) of items disagree: the
    discordant count is Binomial(n, psi) and each discordant item a win with (psi + delta) / (2 psi).
    ``sided=1``: the one-sided test of a gain (reject when wins >= the smallest k with P[B >= k] <=
    level); ``sided=2``: the two-sided test, which rejects in either direction."""
    from scipy.stats import binom

    _check_sided(sided)
    delta = abs(effect)
    psi = min(max(discordance, delta), 1.0)
    if n < 1 or delta == 0:
        return level if n >= 1 else 0.0
    m = np.arange(n + 1)
    win = (psi + delta) / (2 * psi)
    if sided == 1:
        reject = binom.sf(_reject_from(m, level) - 1, m, win)
    else:
        k = _reject_up_to(m, level)
        reject = np.where(k >= 0, binom.cdf(k, m, win) + binom.sf(m - k - 1, m, win), 0.0)
    return float(np.clip((binom.pmf(m, n, psi) * reject).sum(), 0.0, 1.0))


@lru_cache(maxsize=4096)
def items_needed(effect: float, discordance: float, power: float = 0.8, level: float = LEVEL, sided: int = 2) -> int:
    """The number of items n at which :func:`power_at` first reaches ``power`` (power(n) >= power >
    power(n - 1)), found by bisection from Connor's (1987) normal approximation."""
    _check_sided(sided)
    delta = abs(effect)
    psi = min(max(discordance, delta), 1.0)
    z_a, z_b = NormalDist().inv_cdf(1 - level / sided), NormalDist().inv_cdf(power)
    guess = math.ceil((z_a * math.sqrt(psi) + z_b * math.sqrt(max(psi - delta**2, 0.0))) ** 2 / delta**2)
    low, high = 0, max(guess, 1)
    while power_at(high, delta, psi, level, sided) < power:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power_at(middle, delta, psi, level, sided) >= power else (middle, high)
    return high


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the i-th smallest p becomes the
    running maximum of (m - j + 1) p_(j) over j <= i, capped at 1. A test is significant in the family
    at level alpha exactly when its adjusted p is <= alpha, and the chance of any false rejection in
    the family stays <= alpha whatever the tests' dependence (Holm 1979)."""
    m = len(pvalues)
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


class SignFlip(NamedTuple):
    """An exact sign-flip test's two-sided p-value and the grid unit its differences were counted in."""

    p: float
    unit: float


def _grid(differences: np.ndarray, unit: float, max_units: int) -> tuple[np.ndarray, float]:
    """|differences| as integers of ``unit``, the unit coarsened by whole factors until their sum is at
    most ``max_units`` (the DP's table is that long, and each item costs a pass over it)."""
    sizes = np.rint(np.abs(differences) / unit).astype(np.int64)
    while sizes.sum() > max_units:
        unit *= math.ceil(sizes.sum() / max_units)
        sizes = np.rint(np.abs(differences) / unit).astype(np.int64)
    return sizes, unit


def _upper_tail(sizes: np.ndarray, threshold: int) -> float:
    """P[X >= threshold] for X = sum_i sizes[i] B_i with B_i independent fair coins: the distribution of
    X by dynamic programming over its integer values (each item adds its size to half the mass), the
    smallest sizes first so the table grows slowly."""
    dist = np.zeros(int(sizes.sum()) + 1)
    dist[0], top = 1.0, 0
    for size in np.sort(sizes[sizes > 0]).tolist():
        dist[size : top + size + 1] += dist[: top + 1]  # overlapping operands: numpy buffers them
        top += size
        dist[: top + 1] *= 0.5
    return float(dist[threshold:].sum())


def sign_flip_test(differences: Sequence[float], unit: float = 1.0, max_units: int = MAX_UNITS) -> SignFlip:
    """Exact two-sided paired sign-flip permutation test of the mean difference: under "no difference"
    every item's difference d_i is as likely +|d_i| as -|d_i|, so p = P[|S| >= |s_obs|] over all 2^n sign
    patterns, S = sum of the signed differences. Counted exactly on an integer grid: differences of
    integer metrics (token or word counts) with ``unit=1`` are exact; others are rounded to multiples
    of ``unit`` (e.g. 1e-3 for shares), the unit coarsened when the sum of |d| in units would exceed
    ``max_units``. S = 2X - T with T the sum of |d| and X the sizes whose sign is +, and X is symmetric
    about T / 2, so p = 2 P[X >= (T + |s_obs|) / 2] (1 when s_obs = 0)."""
    d = np.asarray(differences, dtype=float)
    if not np.isfinite(d).all():
        raise ValueError("sign_flip_test: differences must be finite")
    if not unit > 0:
        raise ValueError(f"sign_flip_test: unit {unit} is out of range: must be > 0")
    sizes, unit = _grid(d, unit, max_units)
    observed = abs(int((np.sign(d).astype(np.int64) * sizes).sum()))
    if observed == 0:
        return SignFlip(1.0, unit)
    total = int(sizes.sum())
    return SignFlip(min(1.0, 2 * _upper_tail(sizes, (total + observed) // 2)), unit)


@lru_cache(maxsize=1024)  # scipy's t.ppf costs 0.1 ms a call; a run asks for a few item counts only
def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def t_interval(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of the per-item differences (NaN for fewer than 2 items): the
    size of the shift, reported beside the sign-flip test, which alone decides."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return (math.nan, math.nan)
    half = _t_quantile((1 + confidence) / 2, d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    mean = float(d.mean())
    return (mean - half, mean + half)
