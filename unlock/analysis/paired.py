"""Did the capability transfer? The run's paired comparisons and the one rule that decides them.

Every condition of a run is scored on the same items, so two conditions are compared item by item
(paired by lm-eval's doc_id): on accuracy, the items where only the condition is right (wins), where
only the baseline is (losses), and where they agree (which carry no information about the difference);
on a behaviour metric (generation length, stepwise reasoning, repetition), the per-item differences.
The formulas are in :mod:`unlock.analysis.stats`; this module says what is compared with what
(:class:`Design`) and which test decides each comparison, so that "significant" means the same thing
at the console, in W&B and in the report. The verdict and the family each hold their error at 5% (so
together at most 10%); simulated with no effect, anything fires in 2.6% of runs (tests/test_paired.py):

1. The verdict, the run's one pre-declared claim "UNLOCK transferred": on the primary task's accuracy,
   ``unlock`` beats ``unsteered``, ``random`` and (where evaluated) ``reversed``, each by the one-sided
   exact McNemar test at 5%. All must hold, so it is an intersection-union test: no adjustment, its
   p-value is the largest of them (Berger 1982). Its power is the product of the same one-sided tests'
   powers (a lower bound: they share the primary condition's outcomes).
2. Every other comparison of the run (each condition with each of its baselines, each task, accuracy
   and every behaviour metric) is one family, Holm-adjusted at 5% with two-sided p-values: exact
   McNemar for 0/1 per-item outcomes, the exact sign-flip permutation test for real-valued ones (the
   t interval of the mean difference beside it). An interval that excludes 0 decides nothing: with
   dozens of comparisons some always do. Accuracy power is that of the two-sided exact test at the
   Bonferroni level 0.05 / m (m the family's size): a lower bound on Holm's.
3. A sweep selects its point among k validation points by the largest gain; the selected point's
   verdict p is Holm-adjusted across the k points (:func:`sweep_verdict`), so picking the best of k
   noisy points does not make a finding.

    python -m unlock.analysis.paired logs/runs/<time> [...]   # writes paired.json into each directory
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unlock.analysis.generations import longest_repeat_share
from unlock.analysis.paper import paper_gains
from unlock.analysis.stats import (
    LEVEL,
    holm,
    items_needed,
    mcnemar_exact,
    mcnemar_one_sided,
    newcombe_interval,
    power_at,
    sign_flip_test,
    t_interval,
)
from unlock.store.artifacts import atomic_write_json

BEHAVIOUR = ("gen_tokens", "gen_words", "stepwise", "repetition")  # per-item metrics beside accuracy
BINARY = ("stepwise",)  # 0/1 per item: exact McNemar and Newcombe's interval, like accuracy
# The sign-flip test's grid: token and word counts are integers (exact); a repetition share is counted
# in thousandths (a share moves by at least 1/len(words), about 1e-2 for a short generation).
UNITS = {"gen_tokens": 1.0, "gen_words": 1.0, "stepwise": 1e-3, "repetition": 1e-3}


@dataclass(frozen=True)
class Design:
    """What is compared with what: every condition except the baseline with the baseline, and every
    steered condition except the control also with the control (a random direction of the same norm:
    "any push helps" would beat the baseline too). The primary condition is also compared with its own
    controls (``primary_controls``: its vector negated, the same push the other way; a push in any
    direction of a Target's activation subspace can change its output where an isotropic random one
    does not, and only a direction that carries the capability beats its own reverse).

    The verdict is the primary condition against the baseline, the control, and each of its own
    controls the run evaluates."""

    baseline: str = "unsteered"
    control: str = "random"
    primary: str = "unlock"
    steered: tuple[str, ...] = ("unlock", "native", "random", "reversed")
    primary_controls: tuple[str, ...] = ("reversed",)
    level: float = LEVEL

    def baselines(self, condition: str) -> list[str]:
        out = [self.baseline] if condition != self.baseline else []
        if condition in self.steered and condition != self.control:
            out.append(self.control)
        return out + (list(self.primary_controls) if condition == self.primary else [])

    def verdict_baselines(self, evaluated: Collection[str] | None = None) -> tuple[str, ...]:
        """What the primary must beat: the baseline and the control always, its own controls where
        ``evaluated`` (all of them when None)."""
        own = tuple(c for c in self.primary_controls if evaluated is None or c in evaluated)
        return (self.baseline, self.control, *own)


DESIGN = Design()
CONTROL = DESIGN.control


@dataclass(frozen=True)
class PowerSettings:
    """What a comparison should be able to detect: the paper's gain for the setup where it reports one,
    else ``effect`` (an absolute accuracy difference), with probability ``power`` at the test's level.
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


def effect_for(
    gains: Mapping[tuple[str, str, str], float], key: tuple[str, str, str], settings: PowerSettings
) -> tuple[float, str]:
    """The effect a comparison (condition, task, baseline) should detect and where it comes from: the
    paper's gain (its size) where the paper reports a non-zero one, else ``settings.effect``."""
    paper = gains.get(key)
    return (abs(paper), "paper") if paper else (settings.effect, "default")


def family_size(design: Design, conditions: Sequence[str], tasks: Sequence[str], primary_task: str | None) -> int:
    """The Holm family's size when every condition is evaluated on every task and every metric (accuracy
    and :data:`BEHAVIOUR`) is measured: what the dry run can know. A run's family is never larger (a
    metric a task does not report is not tested), so power at 0.05 / this size is a lower bound."""
    pairs = sum(b in conditions for c in conditions for b in design.baselines(c)) * len(tasks)
    required = design.verdict_baselines(conditions)
    verdict = design.primary in conditions and all(b in conditions for b in required)
    return pairs * (1 + len(BEHAVIOUR)) - (len(required) if verdict and primary_task in tasks else 0)


def _item(index: int, row: Mapping[str, Any]) -> Hashable:
    return index if row.get("doc_id") is None else row["doc_id"]


def item_outcomes(rows: Sequence[Mapping[str, Any]]) -> dict[Hashable, bool] | None:
    """{item: correct} from an evaluation's sample rows (lm-eval's doc_id, else the row's position);
    None when a row has no 0/1 ``acc`` (a metric that is not per-item correctness)."""
    out: dict[Hashable, bool] = {}
    for index, row in enumerate(rows):
        acc = row.get("acc")
        if isinstance(acc, bool) or acc in (0, 1):
            out[_item(index, row)] = bool(acc)
        else:
            return None
    return out


def item_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[Hashable, float]]:
    """{metric: {item: value}} for the :data:`BEHAVIOUR` metrics the rows report (a metric no row has is
    left out, never zero-filled). ``repetition`` is measured on generated text only: rows of a task that
    reports generation metrics (a loglikelihood task's "response" is its serialised scores)."""
    out: dict[str, dict[Hashable, float]] = {}
    for index, row in enumerate(rows):
        for metric in BEHAVIOUR[:3]:
            value = row.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.setdefault(metric, {})[_item(index, row)] = float(value)
        generated = "gen_words" in row or "gen_tokens" in row
        if generated and isinstance(row.get("response"), str):
            out.setdefault("repetition", {})[_item(index, row)] = longest_repeat_share(row["response"])
    return out


def _shared(condition: Mapping[Hashable, Any], baseline: Mapping[Hashable, Any]) -> list[Hashable]:
    return sorted(set(condition) & set(baseline), key=str)


def compare(
    condition: Mapping[Hashable, bool],
    baseline: Mapping[Hashable, bool],
    effect: float,
    settings: PowerSettings,
    level: float = LEVEL,
    sided: int = 2,
) -> dict[str, Any]:
    """The paired accuracy comparison on the items both were scored on (keys: item ids; values: correct),
    with the power of the exact McNemar test that decides it (``sided``, at ``level``)."""
    items = _shared(condition, baseline)
    n = len(items)
    if n == 0:
        return {"n": 0}
    wins = sum(condition[i] and not baseline[i] for i in items)
    losses = sum(baseline[i] and not condition[i] for i in items)
    both = sum(condition[i] and baseline[i] for i in items)
    low, high = newcombe_interval(both, wins, losses, n - both - wins - losses)
    discordance = (wins + losses) / n
    power = power_at(n, effect, discordance, level, sided)
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "diff": (wins - losses) / n,
        "diff_ci95": [low, high],
        "p_mcnemar": mcnemar_exact(wins, losses),
        "discordance": discordance,
        "effect": effect,
        "items_needed": items_needed(effect, discordance, settings.power, level, sided),
        "power": power,
        "underpowered": power < settings.power,
    }


def comparisons(
    outcomes: Mapping[str, Mapping[str, Mapping[Hashable, bool]]],
    effects: Mapping[tuple[str, str, str], float],
    settings: PowerSettings,
    design: Design = DESIGN,
) -> dict[str, Any]:
    """``paired[condition][task][baseline]``, unadjusted (two-sided, 5%), for every condition and
    baseline (:meth:`Design.baselines`) a run evaluated; ``outcomes[condition][task][item] = correct``;
    ``effects[(condition, task, baseline)]``: the paper's gain where it reports one (``effect_from``
    says which was used). Nothing here decides: :func:`analyse` does."""
    out: dict[str, Any] = {}
    for condition, per_task in outcomes.items():
        for task, items in per_task.items():
            for baseline in design.baselines(condition):
                if task not in outcomes.get(baseline, {}):
                    continue
                effect, source = effect_for(effects, (condition, task, baseline), settings)
                result = compare(items, outcomes[baseline][task], effect, settings)
                result["effect_from"] = source
                out.setdefault(condition, {}).setdefault(task, {})[baseline] = result
    return out


def _finite(values: Sequence[float]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def metric_test(
    condition: Mapping[Hashable, float], baseline: Mapping[Hashable, float], metric: str
) -> dict[str, Any] | None:
    """One behaviour metric, paired per item: exact McNemar and Newcombe's interval for a 0/1 metric,
    else the exact sign-flip test of the mean difference (on the metric's grid, :data:`UNITS`) with the
    t interval. None without shared items."""
    items = _shared(condition, baseline)
    if not items:
        return None
    x = np.array([condition[i] for i in items])
    y = np.array([baseline[i] for i in items])
    if metric in BINARY and np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all():
        wins, losses, both = int((x > y).sum()), int((x < y).sum()), int(((x == 1) & (y == 1)).sum())
        low, high = newcombe_interval(both, wins, losses, len(items) - both - wins - losses)
        return {
            "n": len(items),
            "diff": (wins - losses) / len(items),
            "diff_ci95": [low, high],
            "p": mcnemar_exact(wins, losses),
            "test": "exact McNemar",
        }
    d = x - y
    flip = sign_flip_test(d, UNITS.get(metric, 1e-3))
    return {
        "n": len(items),
        "diff": float(d.mean()),
        "diff_ci95": _finite(t_interval(d)),
        "p": flip.p,
        "test": "exact sign-flip",
        "unit": flip.unit,
    }


def _direction(diff: float, significant: bool, words: tuple[str, str]) -> str | None:
    if not significant or diff == 0:
        return None
    return words[0] if diff > 0 else words[1]


def _verdict(
    outcomes: Mapping[str, Mapping[str, Mapping[Hashable, bool]]],
    effects: Mapping[tuple[str, str, str], float],
    settings: PowerSettings,
    design: Design,
    task: str | None,
) -> dict[str, Any]:
    """Item 1 of the module's rule: the intersection-union test of the primary claim."""
    required = design.verdict_baselines([c for c, per in outcomes.items() if task in per])
    claim = (
        f"{design.primary} beats {', '.join(required)} on {task} accuracy "
        f"(one-sided exact McNemar, each at {design.level:g})"
    )
    head = {"claim": claim, "condition": design.primary, "metric": "acc", "task": task, "level": design.level}
    if task is None:
        return {**head, "transferred": None, "reason": "no primary task (several tasks and none named)"}
    missing = [c for c in (design.primary, *required) if task not in outcomes.get(c, {})]
    if missing:
        return {**head, "transferred": None, "reason": f"no per-item accuracy of {', '.join(missing)} on {task}"}
    tests = {}
    for baseline in required:
        effect, source = effect_for(effects, (design.primary, task, baseline), settings)
        result = compare(outcomes[design.primary][task], outcomes[baseline][task], effect, settings, design.level, 1)
        if not result["n"]:
            return {**head, "transferred": None, "reason": f"{design.primary} and {baseline} share no item on {task}"}
        p = mcnemar_one_sided(result["wins"], result["losses"])
        tests[baseline] = {
            **{k: result[k] for k in ("n", "wins", "losses", "diff", "diff_ci95", "discordance")},
            "p_one_sided": p,
            "significant": p <= design.level,
            **{k: result[k] for k in ("effect", "power", "items_needed", "underpowered")},
            "effect_from": source,
        }
    return {
        **head,
        "transferred": all(t["significant"] for t in tests.values()),
        "p": max(t["p_one_sided"] for t in tests.values()),
        "tests": tests,
        **_joint_power(list(tests.values()), settings.power, design.level),
    }


def _joint_power(tests: list[Mapping[str, Any]], target: float, level: float) -> dict[str, Any]:
    """The verdict's power: every one of its one-sided tests must reject, so the product of their powers
    (exact for independent tests; the tests share the primary condition's outcomes, which makes them
    positively dependent and the product a lower bound), and the items at which it reaches ``target``."""
    specs = [(t["effect"], t["discordance"]) for t in tests]

    def power(n: int) -> float:
        return math.prod(power_at(n, effect, psi, level, 1) for effect, psi in specs)

    low = max(items_needed(effect, psi, target, level, 1) for effect, psi in specs) - 1  # each test alone
    high = low + 1
    while power(high) < target:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power(middle) >= target else (middle, high)
    joint = math.prod(t["power"] for t in tests)
    return {"power": joint, "underpowered": joint < target, "items_needed": high}


Pair = tuple[str, str, str]  # (condition, task, baseline)


def analyse(
    rows: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    effects: Mapping[tuple[str, str, str], float] | None = None,
    settings: PowerSettings | None = None,
    design: Design = DESIGN,
    primary_task: str | None = None,
) -> dict[str, Any]:
    """The run's comparisons and what decides them (the module's rule). ``rows[condition][task]``: one
    evaluation's per-item sample rows (``doc_id``, ``acc`` 0/1, and where known ``gen_tokens``,
    ``gen_words``, ``stepwise``, ``response``); ``effects``: the paper's gains for power.

    Returns ``verdict`` (the primary claim), ``paired[condition][task][baseline]`` (accuracy),
    ``behaviour[condition][task][baseline][metric]`` and ``family`` (the Holm family: its size and level)."""
    effects, settings = effects or {}, settings or PowerSettings()
    outcomes = {c: {t: o for t, r in per.items() if (o := item_outcomes(r)) is not None} for c, per in rows.items()}
    metrics = {c: {t: item_metrics(r) for t, r in per.items()} for c, per in rows.items()}
    verdict = _verdict(outcomes, effects, settings, design, primary_task)
    # the verdict's own comparisons (none without a primary task: no pair's task is None)
    decided: set[Pair] = {(design.primary, primary_task, b) for b in verdict.get("tests", {}) if primary_task}
    pairs = [(c, t, b) for c, per in rows.items() for t in per for b in design.baselines(c) if t in rows.get(b, {})]
    behaviour, family = _family(pairs, outcomes, metrics, decided)
    adjusted = dict(zip(((key, metric) for key, metric, _ in family), holm([p for *_, p in family]), strict=True))
    for ((c, t, b), metric), p_adjusted in adjusted.items():
        if metric != "acc":
            result = behaviour[c][t][b][metric]
            result.update(p_adjusted=p_adjusted, significant=p_adjusted <= design.level)
            result["direction"] = _direction(result["diff"], result["significant"], ("increase", "decrease"))
    paired: dict[str, Any] = {}
    for pair in pairs:
        c, t, b = pair
        if t in outcomes.get(c, {}) and t in outcomes.get(b, {}):
            entry = _accuracy_entry(pair, outcomes, effects, settings, design, verdict, adjusted, len(family))
            paired.setdefault(c, {}).setdefault(t, {})[b] = entry
    return {
        "verdict": verdict,
        "paired": paired,
        "behaviour": behaviour,
        "family": {"tests": len(family), "level": design.level, "adjustment": "holm", "p": "two-sided"},
    }


def _family(
    pairs: list[Pair],
    outcomes: Mapping[str, Mapping[str, Mapping[Hashable, bool]]],
    metrics: Mapping[str, Mapping[str, Mapping[str, Mapping[Hashable, float]]]],
    decided: set[Pair],
) -> tuple[dict[str, Any], list[tuple[Pair, str, float]]]:
    """Every behaviour comparison (unadjusted), and the Holm family: (pair, metric, two-sided p) for the
    behaviour ones and every accuracy comparison the verdict does not decide."""
    family: list[tuple[Pair, str, float]] = []
    behaviour: dict[str, Any] = {}
    for c, t, b in pairs:
        for metric in BEHAVIOUR:
            if metric in metrics[c][t] and metric in metrics[b][t]:
                result = metric_test(metrics[c][t][metric], metrics[b][t][metric], metric)
                if result is not None:
                    behaviour.setdefault(c, {}).setdefault(t, {}).setdefault(b, {})[metric] = result
                    family.append(((c, t, b), metric, result["p"]))
        if (c, t, b) not in decided and t in outcomes.get(c, {}) and t in outcomes.get(b, {}):
            shared = _shared(outcomes[c][t], outcomes[b][t])
            if shared:
                wins = sum(outcomes[c][t][i] and not outcomes[b][t][i] for i in shared)
                losses = sum(outcomes[b][t][i] and not outcomes[c][t][i] for i in shared)
                family.append(((c, t, b), "acc", mcnemar_exact(wins, losses)))
    return behaviour, family


def _accuracy_entry(
    pair: Pair,
    outcomes: Mapping[str, Mapping[str, Mapping[Hashable, bool]]],
    effects: Mapping[tuple[str, str, str], float],
    settings: PowerSettings,
    design: Design,
    verdict: Mapping[str, Any],
    adjusted: Mapping[tuple[Pair, str], float],
    size: int,
) -> dict[str, Any]:
    """``paired[c][t][b]``: the comparison, flagged by what decides it (the verdict, or Holm), with the
    power of that test."""
    c, t, b = pair
    effect, source = effect_for(effects, pair, settings)
    if verdict["transferred"] is not None and c == design.primary and t == verdict["task"] and b in verdict["tests"]:
        # The claim is the pair's conjunction: each entry is significant when the verdict is, and
        # carries the verdict's p (one test alone is not the claim; counted as one, a null run
        # would "find" something in 6% of runs instead of at most 5%).
        result = compare(outcomes[c][t], outcomes[b][t], effect, settings, design.level, 1)
        result.update(
            p_one_sided=verdict["tests"][b]["p_one_sided"],
            p_adjusted=verdict["p"],
            significant=bool(verdict["transferred"]),
            decided_by="verdict",
        )
    elif (pair, "acc") in adjusted:
        result = compare(outcomes[c][t], outcomes[b][t], effect, settings, design.level / size, 2)
        p_adjusted = adjusted[(pair, "acc")]
        result.update(p_adjusted=p_adjusted, significant=p_adjusted <= design.level, decided_by="holm")
    else:
        return {"n": 0}
    result["direction"] = _direction(result["diff"], result["significant"], ("gain", "harm"))
    result["effect_from"] = source
    return result


def sweep_verdict(p_values: Sequence[float | None], selected: int, level: float = LEVEL) -> dict[str, Any]:
    """A sweep's selected point, judged among all k validation points it was chosen from: its verdict
    p (any per-point p-value; a point without one counts as p = 1, still one of the k) Holm-adjusted
    across the points. Selecting the best of k noisy points would otherwise find a "gain" by chance."""
    ps = [1.0 if p is None else float(p) for p in p_values]
    if not 0 <= selected < len(ps):
        raise ValueError(f"selected point {selected} is out of range: the sweep has {len(ps)} points")
    adjusted = holm(ps)[selected]
    return {"points": len(ps), "p": ps[selected], "p_adjusted": adjusted, "significant": adjusted <= level}


def _p(value: float) -> str:
    return f"{value:.2g}"


def words(result: Mapping[str, Any] | None) -> str:
    """The one phrase the console, W&B and the report use for a comparison (a ``paired`` or a
    ``behaviour`` entry): whether its deciding test found a difference, and which way."""
    if not result or not result.get("n"):
        return "no shared items"
    verdict = result.get("decided_by") == "verdict"
    test = "sign-flip" if result.get("test") == "exact sign-flip" else "McNemar"
    raw = result["p_adjusted"] if verdict else result.get("p", result.get("p_mcnemar"))
    if "p_adjusted" not in result:
        return f"not decided (no adjustment; {test} p = {_p(raw)})"
    name = "verdict p" if verdict else "p_adj"
    if result["significant"]:
        return f"significant {result['direction']} ({name} = {_p(result['p_adjusted'])})"
    if verdict and "p_one_sided" in result:  # one test of the claim, which failed as a whole
        return (
            f"not significant: the verdict failed (verdict p = {_p(result['p_adjusted'])}; this test's "
            f"one-sided p = {_p(result['p_one_sided'])})"
        )
    if excludes_zero(result):
        return f"not significant: interval excludes 0, {test} p = {_p(raw)}"
    return f"not significant ({name} = {_p(result['p_adjusted'])})"


def verdict_line(verdict: Mapping[str, Any]) -> str:
    """The verdict in one line, with its tests' p-values and what a "no" lacked."""
    if verdict.get("transferred") is None:
        return f"verdict: undecided ({verdict.get('reason', 'no verdict')})"
    how = f"one-sided exact McNemar, {verdict['level']:.0%} level"
    tests = verdict["tests"]
    if verdict["transferred"]:
        ps = ", ".join(f"{b} p = {_p(t['p_one_sided'])}" for b, t in tests.items())
        return f"verdict: {verdict['condition'].upper()} transferred (beats {ps}, {how})"
    ps = ", ".join(f"vs {b} p = {_p(t['p_one_sided'])}" for b, t in tests.items())
    power = f"; underpowered: needs {verdict['items_needed']} items" if verdict["underpowered"] else ""
    return f"verdict: no evidence of transfer ({ps}; each must be <= {verdict['level']:g}, {how}{power})"


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


def read_rows(directory: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``rows[condition][task]`` from ``directory/samples/<condition>__<task>.jsonl`` (or from such files
    directly in ``directory``)."""
    folder = directory / "samples" if (directory / "samples").is_dir() else directory
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(folder.glob("*__*.jsonl")):
        condition, task = path.stem.split("__", 1)
        out.setdefault(condition, {})[task] = [json.loads(line) for line in path.read_text().splitlines() if line]
    return out


def recorded_settings(
    directory: Path, tasks: Sequence[str], task: str | None = None
) -> tuple[PowerSettings, dict[tuple[str, str, str], float], str | None]:
    """The stats settings, the paper's gains and the primary task: from ``directory/results.json`` where
    the run left one (``config.stats``, ``config.paper``, ``config.eval.tasks[0]``), else the defaults
    and the only task; ``task`` (``--task``) names the primary task either way."""
    results = directory / "results.json"
    config = json.loads(results.read_text()).get("config") if results.is_file() else None
    if not config:
        return PowerSettings(), {}, task or (tasks[0] if len(tasks) == 1 else None)
    stats = {k: float(v) for k, v in (config.get("stats") or {}).items() if k in ("effect", "power", "discordance")}
    gains = paper_gains(
        (config.get("paper") or {}).get("setup"), config["benchmark"]["name"], config["capability"]["locked_task"]
    )
    return PowerSettings(**stats), gains, task or str(config["eval"]["tasks"][0])


def write(directory: str | Path, task: str | None = None) -> dict[str, Any]:
    """Analyse a directory's samples and write ``paired.json`` there ({} and nothing written without samples)."""
    directory = Path(directory)
    rows = read_rows(directory)
    if not rows:
        return {}
    tasks = sorted({t for per in rows.values() for t in per})
    settings, gains, primary = recorded_settings(directory, tasks, task)
    result = analyse(rows, gains, settings, DESIGN, primary)
    atomic_write_json(directory / "paired.json", result)
    return result


def summary(result: Mapping[str, Any]) -> str:
    """The verdict line and every significant comparison, in words."""
    lines = [verdict_line(result["verdict"])]
    for c, per_task in result["paired"].items():
        for t, versus in per_task.items():
            for b, r in versus.items():
                if r.get("significant") and r.get("decided_by") == "holm":
                    lines.append(f"  {c} vs {b} on {t}, accuracy: {words(r)}")
    for c, per_task in result["behaviour"].items():
        for t, versus in per_task.items():
            for b, per_metric in versus.items():
                lines.extend(f"  {c} vs {b} on {t}, {m}: {words(r)}" for m, r in per_metric.items() if r["significant"])
    family = result["family"]
    if len(lines) == 1:
        lines.append(f"  no other comparison is significant (Holm, {family['tests']} tests at {family['level']:g})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unlock.analysis.paired",
        description="Paired comparisons and the verdict of a run's samples; writes DIR/paired.json.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories (or directories of samples files)")
    parser.add_argument("--task", help="the primary task (default: results.json's eval.tasks[0], else the only one)")
    args = parser.parse_args(argv)
    status = 0
    for directory in args.dirs:
        result = write(directory, args.task)
        if not result:
            print(f"{directory}: no samples/<condition>__<task>.jsonl found", file=sys.stderr)
            status = 1
            continue
        print(f"{directory}/paired.json\n{summary(result)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
