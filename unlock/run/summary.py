"""What a run's record says, on the console: the conditions table, the decision rule's words, the stages
and fidelity lines, and the fidelity plot; plus the record readers the W&B writer and the sweep share
(paired comparisons as flat columns, behaviour comparisons as rows)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from unlock.analysis.fidelity import verdict
from unlock.analysis.paired import CONTROL, verdict_line, words
from unlock.analysis.plots import pyplot, save_figure
from unlock.run.conditions import BASELINE

SHOWN_METRICS = ("acc", "gen_tokens", "gen_words", "stepwise", "entropy", "dose_mean")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _acc_cell(metrics: dict[str, Any]) -> str:
    if "acc" not in metrics:
        return "-"
    ci = metrics.get("acc_ci95")
    return f"{metrics['acc']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{metrics['acc']:.3f}"


SUMMARY_COLUMNS = (
    "condition",
    "task",
    "acc [95% CI]",
    "n",
    "gen tokens",
    "gen words",
    "stepwise",
    "entropy",
    "dose",
    "vs unsteered: paired acc diff [95% CI], what decides",
    "vs random",
    "behaviour vs unsteered (* significant)",
)


BEHAVIOUR_LABELS = {"gen_tokens": "tok", "gen_words": "words", "stepwise": "steps", "repetition": "rep"}


def paired_cell(result: dict[str, Any] | None) -> str:
    """A paired accuracy comparison: the difference, its interval, and the words of the test that decides."""
    if not result or not result.get("n"):
        return "-"
    low, high = result["diff_ci95"]
    return f"{result['diff']:+.3f} [{low:+.2f}, {high:+.2f}] {words(result)}"


def behaviour_cell(per_metric: dict[str, Any] | None) -> str:
    """The behaviour comparisons against one baseline: each metric's mean paired difference, starred when
    its test is significant after the family's adjustment."""
    if not per_metric:
        return "-"
    return ", ".join(
        f"{BEHAVIOUR_LABELS.get(m, m)} {r['diff']:+.3g}{'*' if r.get('significant') else ''}"
        for m, r in per_metric.items()
    )


def conditions_table(record: dict[str, Any]) -> Table:
    """Conditions side by side, with their paired comparisons against the unsteered and random ones."""
    shown = ("n_prompts", "rank_effective", "alpha", "aggregation", "method")
    settings = ", ".join(f"{k}={v}" for k, v in record.get("settings", {}).items() if k in shown)
    table = Table(
        title=f"UNLOCK {record.get('source')} -> {record.get('target')} ({record.get('capability')}): {settings}"
    )
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="left" if column in ("condition", "task") else "right")
    paired, behaviour = record.get("paired", {}), record.get("behaviour", {})
    for condition, per_task in record.get("conditions", {}).items():
        if "skipped" in per_task:
            table.add_row(condition, "-", f"skipped: {per_task['skipped']}", *[""] * (len(SUMMARY_COLUMNS) - 3))
            continue
        for task, m in per_task.items():
            versus = paired.get(condition, {}).get(task, {})
            cells = (
                fmt(m.get("n")),
                fmt(m.get("gen_tokens"), 1),
                fmt(m.get("gen_words"), 1),
                fmt(m.get("stepwise"), 2),
                fmt(m.get("entropy"), 2),
                fmt(m.get("dose_mean"), 3),
            )
            table.add_row(
                condition,
                task,
                _acc_cell(m),
                *cells,
                paired_cell(versus.get(BASELINE)),
                paired_cell(versus.get(CONTROL)),
                behaviour_cell(behaviour.get(condition, {}).get(task, {}).get(BASELINE)),
            )
    return table


def stages_line(stages: dict[str, Any]) -> str:
    return "stages: " + "; ".join(
        f"{name} {s['hits']} hit / {s['misses']} computed"
        + (f" / {s['shared']} from another job" if s.get("shared") else "")
        + (f" / {s['foreign']} foreign file(s) replaced" if s.get("foreign") else "")
        + f", {s['forward_passes']} forward passes, {s['seconds']:.1f}s"
        for name, s in stages.items()
    )


def print_summary(record: dict[str, Any], path: Path | None = None) -> None:
    """One screen: conditions side by side, what the paired tests say, stage cache hits, fit quality
    and transfer fidelity against its null and ceiling."""
    console = Console(file=sys.stdout, width=200)
    console.print(conditions_table(record))
    for line in decision_lines(record):
        console.print(line)
    console.print(stages_line(record.get("stages", {})))
    quality = record.get("fit_quality_mean", {})
    if quality:
        console.print("map fit (mean over layers): " + ", ".join(f"{k}={v:.3f}" for k, v in quality.items()))
    fidelity = fidelity_line(record.get("transfer_fidelity_summary", {}))
    if fidelity:
        console.print(fidelity)
    if path is not None:
        console.print(f"results: {path}")


def behaviour_results(record: dict[str, Any]) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """(condition, task, baseline, metric, result) for every behaviour comparison of a record."""
    return [
        (c, t, b, m, r)
        for c, per_task in record.get("behaviour", {}).items()
        for t, versus in per_task.items()
        for b, per_metric in versus.items()
        for m, r in per_metric.items()
    ]


def paired_columns(result: dict[str, Any] | None) -> dict[str, Any]:
    """A paired comparison as flat columns (W&B, the sweep CSV)."""
    if not result or not result.get("n"):
        return {}
    low, high = result["diff_ci95"]
    return {
        "diff": result["diff"],
        "ci_low": low,
        "ci_high": high,
        "p_mcnemar": result["p_mcnemar"],
        "p_adjusted": result.get("p_adjusted"),
        "significant": int(bool(result.get("significant"))),
        "direction": result.get("direction"),
        "decided_by": result.get("decided_by"),
        "wins": result["wins"],
        "losses": result["losses"],
        "items_needed": result["items_needed"],
        "power": result["power"],
        "underpowered": int(result["underpowered"]),
    }


def decision_lines(record: dict[str, Any]) -> list[str]:
    """What the run's tests decide, in the words every surface uses: the verdict; every other comparison
    significant after the family's adjustment, one line per pair; and the comparisons that found nothing
    with less than the target power (a "no" there says little)."""
    if "verdict" not in record:  # a record from before the decision rule
        return ["paired comparisons: this record has no verdict (made before the decision rule)"]
    family = record.get("family") or {}
    found: dict[str, list[str]] = {}
    for c, per_task in record.get("paired", {}).items():
        for t, versus in per_task.items():
            for b, r in versus.items():
                if r.get("significant") and r.get("decided_by") == "holm":
                    found.setdefault(f"{c} vs {b} ({t})", []).append(f"accuracy {words(r)}")
    for c, t, b, m, r in behaviour_results(record):
        if r["significant"]:
            found.setdefault(f"{c} vs {b} ({t})", []).append(f"{m} {words(r)}")
    head = f"other comparisons ({family.get('tests', 0)} tests, Holm-adjusted at {family.get('level', 0.05):g}): "
    lines = [verdict_line(record["verdict"]), head + ("" if found else "none significant")]
    lines += [f"  {pair}: " + "; ".join(what).replace("significant ", "") for pair, what in found.items()]
    weak = [
        f"{c} vs {b}"
        for c, per_task in record.get("paired", {}).items()
        for versus in per_task.values()
        for b, r in versus.items()
        if r.get("n") and r.get("underpowered") and not r.get("significant")
    ]
    if weak:
        lines.append(
            "not significant and underpowered for the paper's gain or stats.effect (the deciding test's power "
            f"< stats.power): {', '.join(weak)}"
        )
    return lines


def fidelity_line(summary: dict[str, Any]) -> str | None:
    if not summary:
        return None
    line = (
        f"transfer fidelity: {summary['beat_null']} of {summary['layers']} layers beat the null (cos(UNLOCK, "
        f"native) above the 95th percentile of random Source directions' |cos| through the same map); mean cos "
        f"{summary['mean_cos']:.3f}, mean null p95 {summary['mean_null_p95']:.3f}"
    )
    if "mean_self_ceiling" not in summary:  # a record from before the ceiling was measured
        return line
    return (
        f"{line}\nfidelity {summary['mean_cos']:.2f} against a self-transfer ceiling of "
        f"{summary['mean_self_ceiling']:.2f} (the most any map into its subspace reaches): {verdict(summary)}"
    )


def plot_fidelity(record: dict[str, Any], out_dir: str | Path) -> Path | None:
    """cos(UNLOCK, native) per Target layer against the null's 95th percentile band (transfer_fidelity.png)."""
    fidelity = record.get("transfer_fidelity") or {}
    if not fidelity:
        return None
    layers = sorted(fidelity, key=int)
    xs = [int(j) for j in layers]
    band = [fidelity[j]["null_p95"] for j in layers]
    fig, ax = pyplot().subplots(figsize=(max(6.0, 0.35 * len(xs) + 2), 3.8))
    ax.fill_between(xs, [-b for b in band], band, color="grey", alpha=0.3, label="null: 95% of random |cos|")
    ax.plot(xs, [fidelity[j]["cos"] for j in layers], marker="o", label="cos(UNLOCK, native)")
    if all("self_ceiling" in fidelity[j] for j in layers):
        ceiling = [fidelity[j]["self_ceiling"] for j in layers]
        ax.plot(xs, ceiling, color="tab:red", linestyle="--", label="self-transfer ceiling (|cos| cannot exceed)")
        ax.plot(xs, [-c for c in ceiling], color="tab:red", linestyle="--")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set(
        xlabel="Target layer",
        ylabel="cosine",
        ylim=(-1.05, 1.05),
        title=f"{record.get('source')} -> {record.get('target')}: transfer fidelity by layer",
    )
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out_dir) / "transfer_fidelity.png")
