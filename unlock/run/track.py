"""Stage 6: record and show results: a printed table per run, W&B runs, and sweep aggregates.

Results JSON is always on disk before W&B is touched; ``logger=none`` never imports wandb. At the end
of a multirun, :class:`AggregateCallback` reads every job's ``results.json`` (never only job status),
writes ``aggregate.csv`` plus PNG plots in the sweep directory, and logs them to W&B when enabled.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from unlock.analysis.fidelity import verdict
from unlock.analysis.generations import write as write_generations
from unlock.analysis.paired import CONTROL, sweep_verdict, verdict_line, words
from unlock.analysis.plots import pyplot, rank_n_heatmap, save_figure
from unlock.analysis.stats import mcnemar_one_sided
from unlock.run.conditions import BASELINE
from unlock.run.conditions import steered as steered_conditions
from unlock.store.artifacts import atomic_write_bytes, atomic_write_json

FAILED_SWEEP_POINTS: list[dict[str, Any]] = []  # filled at the end of a multirun, read by launch.py
SHOWN_METRICS = ("acc", "gen_tokens", "gen_words", "stepwise", "entropy", "dose_mean")
AXIS_FLAG = "axis:"  # rows mark the columns that come from a job's overrides (its sweep axes)


def override_columns(overrides: list[str]) -> dict[str, Any]:
    """A job's Hydra overrides as columns: ``alpha.value=0.1`` -> {"alpha.value": 0.1}; a config group
    choice ``rank=ridge`` -> {"rank option": "ridge"} (beside the settings' rank value)."""
    columns: dict[str, Any] = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if not isinstance(parsed, (int, float, str, bool)) or parsed is None:
            parsed = value  # lists, dicts and null stay as written
        columns[key if "." in key else f"{key} option"] = parsed
    return columns


def sweep_axes(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys whose value differs between the sweep's jobs, in the order they appear."""
    keys = dict.fromkeys(k for row in rows for k in row.get(AXIS_FLAG, ()))
    return [k for k in keys if _varying(rows, k)]


def _fmt(value: Any, digits: int = 3) -> str:
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
                _fmt(m.get("n")),
                _fmt(m.get("gen_tokens"), 1),
                _fmt(m.get("gen_words"), 1),
                _fmt(m.get("stepwise"), 2),
                _fmt(m.get("entropy"), 2),
                _fmt(m.get("dose_mean"), 3),
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
    line = fidelity_line(record.get("transfer_fidelity_summary", {}))
    if line:
        console.print(line)
    if path is not None:
        console.print(f"results: {path}")


# --------------------------------------------------------------------------------------------------
# W&B
# --------------------------------------------------------------------------------------------------
def wandb_mode(cfg_mode: str) -> str:
    return os.environ.get("WANDB_MODE", cfg_mode)


def _sweep_group(output_dir: Path) -> str | None:
    """Jobs of one multirun share a W&B group: the sweep directory's name."""
    try:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return Path(hydra_cfg.sweep.dir).name
    except Exception:
        pass
    return None


def flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    out = {}
    for condition, per_task in record.get("conditions", {}).items():
        for task, metrics in per_task.items():
            if not isinstance(metrics, dict):
                continue
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"{condition}/{task}/{name}"] = value
    for name, value in record.get("fit_quality_mean", {}).items():
        out[f"fit/{name}"] = value
    for name, value in record.get("transfer_fidelity_summary", {}).items():
        out[f"fidelity/{name}"] = value
    for condition, per_task in record.get("paired", {}).items():
        for task, versus in per_task.items():
            for baseline, result in versus.items():
                for name, value in paired_columns(result).items():
                    if isinstance(value, (int, float)):  # metrics only; the words go to the paired table
                        out[f"paired/{condition}/{task}/vs_{baseline}/{name}"] = value
    for condition, task, baseline, metric, result in behaviour_results(record):
        for name in ("diff", "p", "p_adjusted"):
            out[f"behaviour/{condition}/{task}/vs_{baseline}/{metric}/{name}"] = result[name]
        out[f"behaviour/{condition}/{task}/vs_{baseline}/{metric}/significant"] = int(result["significant"])
    verdict = record.get("verdict") or {}
    if verdict.get("transferred") is not None:
        out["verdict/transferred"] = int(verdict["transferred"])
        out["verdict/p"] = verdict["p"]
    return out


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


PAIRED_COLUMNS = (
    "condition",
    "task",
    "baseline",
    "diff",
    "ci_low",
    "ci_high",
    "p_mcnemar",
    "p_adjusted",
    "significant",
    "direction",
    "decided_by",
    "wins",
    "losses",
    "items_needed",
    "power",
    "underpowered",
    "words",
)
BEHAVIOUR_COLUMNS = ("condition", "task", "baseline", "metric", "diff", "ci_low", "ci_high", "p", "p_adjusted")


def wandb_tables(wandb: Any, record: dict[str, Any]) -> dict[str, Any]:
    """The run's per-layer fit and fidelity and its paired comparisons as W&B tables."""
    tables = {}
    by_layer = lambda items: sorted(items, key=lambda kv: int(kv[0]))
    quality = record.get("fit_quality", {})
    if quality:
        columns = ["target_layer", "source_layer", *sorted(next(iter(quality.values())))]
        pairs = record["plan"]["pairs"]
        data = [[int(j), pairs[str(j)], *[q[c] for c in columns[2:]]] for j, q in by_layer(quality.items())]
        tables["fit_quality"] = wandb.Table(columns=columns, data=data)
    fidelity = record.get("transfer_fidelity") or {}
    if fidelity:
        columns = ["target_layer", "cos", "null_p95", "p_value", "self_ceiling"]
        data = [[int(j), *[f.get(c) for c in columns[1:]]] for j, f in by_layer(fidelity.items())]
        tables["transfer_fidelity"] = wandb.Table(columns=columns, data=data)
    rows = [
        [c, t, b, *paired_columns(r).values(), words(r)]
        for c, per_task in record.get("paired", {}).items()
        for t, versus in per_task.items()
        for b, r in versus.items()
        if r.get("n")
    ]
    if rows:
        tables["paired"] = wandb.Table(columns=list(PAIRED_COLUMNS), data=rows)
    behaviour = [
        [c, t, b, m, r["diff"], *(r["diff_ci95"] or [None, None]), r["p"], r["p_adjusted"], r["significant"], words(r)]
        for c, t, b, m, r in behaviour_results(record)
    ]
    if behaviour:
        tables["behaviour"] = wandb.Table(columns=[*BEHAVIOUR_COLUMNS, "significant", "words"], data=behaviour)
    return tables


def log_run(cfg: DictConfig, record: dict[str, Any], output_dir: str | Path) -> None:
    """One W&B run per Hydra job; a W&B failure is reported and never loses the on-disk results."""
    if cfg.logger.name != "wandb":
        return
    try:
        import wandb

        run = wandb.init(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            config=record.get("config"),
            group=_sweep_group(Path(output_dir)),
            tags=list(cfg.logger.tags),
            dir=str(output_dir),
            mode=wandb_mode(cfg.logger.mode),
            name=Path(output_dir).name,
            reinit="finish_previous",
        )
        run.log(flat_metrics(record))
        run.summary.update({**record.get("settings", {}), "status": record.get("status")})
        run.log(wandb_tables(wandb, record))
        run.finish()
    except Exception as error:  # results are already on disk
        print(f"[unlock] W&B logging failed ({type(error).__name__}: {error}); results.json is intact", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Sweep aggregation
# --------------------------------------------------------------------------------------------------
def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per (job, condition, task); failed and unfinished jobs get a row with their error."""
    rows: list[dict[str, Any]] = []
    job_dirs = sorted(
        {p.parent for p in sweep_dir.glob("*/.hydra")} | {p.parent for p in sweep_dir.glob("*/results.json")},
        key=lambda p: (len(p.name), p.name),
    )
    for job_dir in job_dirs:
        path = job_dir / "results.json"
        base = {"job": job_dir.name}
        overrides = job_dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            listed = [str(o) for o in (yaml.safe_load(overrides.read_text()) or [])]
            base["overrides"] = " ".join(listed)
            columns = override_columns(listed)
            base.update(columns)
            base[AXIS_FLAG] = tuple(columns)
        if not path.is_file():
            rows.append({**base, "status": "failed", "error": "no results.json (job died or never ran)"})
            continue
        record = json.loads(path.read_text())
        if record.get("status") != "ok":
            rows.append({**base, "status": record.get("status", "failed"), "error": record.get("error", "")})
            continue
        settings = {"split": record.get("config", {}).get("eval", {}).get("split"), **record.get("settings", {})}
        fit = record.get("fit_quality_mean", {})
        fidelity = record.get("transfer_fidelity_summary", {})
        verdict = record.get("verdict") or {}
        primary = ((record.get("config") or {}).get("eval", {}).get("tasks") or [None])[0]
        for condition, per_task in record["conditions"].items():
            for task, metrics in per_task.items():
                if not isinstance(metrics, dict):
                    continue
                ci = metrics.get("acc_ci95") or [None, None]
                versus = record.get("paired", {}).get(condition, {}).get(task, {})
                rows.append(
                    {
                        **base,
                        "status": "ok",
                        **settings,
                        "condition": condition,
                        "task": task,
                        **{m: metrics.get(m) for m in ("n", *SHOWN_METRICS)},
                        "acc_ci_low": ci[0],
                        "acc_ci_high": ci[1],
                        "fit_r2": fit.get("r2"),
                        "fit_rel_error": fit.get("rel_error"),
                        "fidelity": fidelity.get("mean_cos"),
                        "layers_beating_null": fidelity.get("beat_null"),
                        "fidelity_ceiling": fidelity.get("mean_self_ceiling"),
                        **{
                            f"vs_{b}_{k}": v
                            for b in (BASELINE, CONTROL)
                            for k, v in paired_columns(versus.get(b)).items()
                        },
                        "primary_task": primary is None or task == primary,
                        **(point_evidence(verdict, versus) if condition == "unlock" else {}),
                    }
                )
    return rows


def point_evidence(verdict: dict[str, Any], versus: dict[str, Any]) -> dict[str, Any]:
    """What a sweep point's UNLOCK row says about transfer, as one p-value: the verdict's (unlock beats
    unsteered and random, one-sided) where the point has one, else the one-sided exact McNemar test of
    unlock against unsteered (a sweep that evaluates no random direction); and -log10 of it, to rank by."""
    if verdict.get("transferred") is not None:
        p, source = float(verdict["p"]), "verdict"
    elif (versus.get(BASELINE) or {}).get("n"):
        p, source = mcnemar_one_sided(versus[BASELINE]["wins"], versus[BASELINE]["losses"]), "vs unsteered"
    else:
        return {}
    return {"point_p": p, "point_p_from": source, "point_evidence": -math.log10(max(p, 1e-300))}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns and k != AXIS_FLAG)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _varying(rows: list[dict[str, Any]], axis: str) -> bool:
    return len({row.get(axis) for row in rows if row.get(axis) is not None}) > 1


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def make_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Accuracy and generation length against each swept axis, a rank x N heatmap, lengths per condition."""
    ok = [row for row in rows if row.get("status") == "ok" and row.get("task")]
    if not ok:
        return []
    task = ok[0]["task"]
    ok = [row for row in ok if row["task"] == task]
    steered = [row for row in ok if row["condition"] == "unlock"]
    paths = [_axis_plot(ok, task, axis, out_dir) for axis in sweep_axes(steered)]
    if _varying(steered, "rank") and _varying(steered, "n_prompts"):
        paths.append(_rank_n_heatmap(steered, task, out_dir))
    paths.append(_length_bars(ok, task, out_dir))
    return [path for path in paths if path is not None]


def _axis_plot(ok: list[dict[str, Any]], task: str, axis: str, out_dir: Path) -> Path:
    """Accuracy and generation length of each steered condition against one swept axis."""
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.8))
    for condition in steered_conditions():
        subset = [row for row in ok if row["condition"] == condition]
        xs = sorted(
            {row.get(axis) for row in subset if row.get(axis) is not None}, key=lambda v: (isinstance(v, str), v)
        )
        if not xs:
            continue
        numeric = all(isinstance(x, (int, float)) for x in xs)
        positions = xs if numeric else [str(x) for x in xs]
        for ax, metric in zip(axes, ("acc", "gen_tokens"), strict=False):
            ax.plot(
                positions,
                [_mean(row.get(metric) for row in subset if row.get(axis) == x) for x in xs],
                marker="o",
                label=condition,
            )
            if numeric and axis in ("rank.value", "capability.n_prompts") and min(xs) > 0:
                ax.set_xscale("log", base=2)
    baseline = [row["acc"] for row in ok if row["condition"] == BASELINE and row.get("acc") is not None]
    if baseline:
        axes[0].axhline(_mean(baseline), color="grey", linestyle="--", label=BASELINE)
    axes[0].set(title=f"{task}: accuracy vs {axis}", xlabel=axis, ylabel="accuracy")
    axes[1].set(title=f"{task}: generation length vs {axis}", xlabel=axis, ylabel="generated tokens")
    axes[0].legend(fontsize=8)
    return save_figure(fig, out_dir / f"acc_vs_{axis.replace(' ', '_')}.png")


def _rank_n_heatmap(steered: list[dict[str, Any]], task: str, out_dir: Path) -> Path:
    cells = {}
    for n, k in {(row["n_prompts"], row["rank"]) for row in steered}:
        value = _mean(row["acc"] for row in steered if row["rank"] == k and row["n_prompts"] == n)
        cells[(n, k)] = (value, _fmt(value, 2))
    return rank_n_heatmap(cells, f"{task}: UNLOCK accuracy, rank x N", out_dir / "rank_x_n_heatmap.png")


def _length_bars(ok: list[dict[str, Any]], task: str, out_dir: Path) -> Path | None:
    conditions = list(dict.fromkeys(row["condition"] for row in ok))
    lengths = [_mean(row.get("gen_tokens") for row in ok if row["condition"] == c) for c in conditions]
    if all(math.isnan(v) for v in lengths):
        return None
    fig, ax = pyplot().subplots(figsize=(1.4 * len(conditions) + 2, 3.6))
    ax.bar(conditions, lengths, color="tab:blue")
    ax.set(title=f"{task}: mean generation length per condition", ylabel="generated tokens")
    return save_figure(fig, out_dir / "gen_length_by_condition.png")


def print_sweep_table(rows: list[dict[str, Any]]) -> None:
    axes = sweep_axes(rows)
    table = Table(title=f"sweep: {len({r['job'] for r in rows})} jobs")
    for column in ("job", *axes, "condition", "task", "acc", "vs unsteered [95% CI]", "gen tokens", "status"):
        table.add_column(column)
    for row in rows:
        if row.get("status") != "ok":
            table.add_row(
                row["job"], *["" for _ in axes], "", "", "", "", "", f"{row['status']}: {row.get('error', '')[:60]}"
            )
            continue
        if row["condition"] not in (BASELINE, "unlock", "random"):
            continue
        table.add_row(
            row["job"],
            *[_fmt(row.get(a)) for a in axes],
            row["condition"],
            row["task"],
            _fmt(row.get("acc")),
            _versus_cell(row),
            _fmt(row.get("gen_tokens"), 1),
            "ok",
        )
    Console(file=sys.stdout, width=160).print(table)


def _versus_cell(row: dict[str, Any]) -> str:
    if row.get("vs_unsteered_diff") is None:
        return "-"
    mark = " significant" if row.get("vs_unsteered_significant") else ""
    return (
        f"{row['vs_unsteered_diff']:+.3f} [{row['vs_unsteered_ci_low']:+.2f}, {row['vs_unsteered_ci_high']:+.2f}]{mark}"
    )


# selection.objective -> the keys a sweep point is ranked by, in order (later keys break ties).
OBJECTIVES = {
    # the paper's: validation accuracy, as the paired gain over the unsteered Target on the same items
    "acc": ("vs_unsteered_diff", "acc", "stepwise", "gen_words"),
    "stepwise": ("stepwise", "acc", "gen_words"),  # behaviour: share of generations that reason in steps
    "fidelity": ("layers_beating_null", "fidelity", "acc"),  # geometry: layers whose transfer beats the null
    # the run's own claim: the strongest evidence that unlock beats unsteered and random (point_evidence)
    "verdict": ("point_evidence", "vs_random_diff", "vs_unsteered_diff"),
}


def select_best(rows: list[dict[str, Any]], objective: str = "acc") -> dict[str, Any] | None:
    """The UNLOCK point of the validation split that ranks first by ``objective`` (OBJECTIVES)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"selection objective {objective!r} is not allowed; allowed: {', '.join(OBJECTIVES)}")
    keys = OBJECTIVES[objective]
    candidates = [  # one per point: its UNLOCK row on the primary task (the verdict's)
        row
        for row in rows
        if row.get("status") == "ok"
        and row.get("condition") == "unlock"
        and row.get("split") == "validation"
        and row.get("primary_task", True)
    ]
    if not candidates:
        return None
    index = max(range(len(candidates)), key=lambda i: tuple(_rank(candidates[i].get(k)) for k in keys))
    best = candidates[index]
    paired = ("vs_unsteered_ci_low", "vs_unsteered_ci_high", "vs_unsteered_p_mcnemar", "vs_random_diff")
    shown = ("job", *sweep_axes(rows), *dict.fromkeys((*keys, *OBJECTIVES["acc"])), *paired, "overrides")
    return {
        "objective": objective,
        **{k: best.get(k) for k in shown},
        # The selected point judged among every point it was chosen from (Holm across the k points).
        "across_points": {
            **sweep_verdict([row.get("point_p") for row in candidates], index),
            "p_from": best.get("point_p_from"),
        },
    }


def _rank(value: Any) -> float:
    """A ranking key's value; a missing one ranks below every number (not as 0)."""
    return float("-inf") if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def selection_lines(selected: dict[str, Any], objective: str, sweep_dir: Path) -> list[str]:
    """What the sweep selected, how strong the evidence is once the choice among k points is accounted
    for, and the command that runs the selected point on the test split (tied to this sweep)."""
    across = selected["across_points"]
    gain = selected.get("vs_unsteered_diff")
    low, high = selected.get("vs_unsteered_ci_low"), selected.get("vs_unsteered_ci_high")
    interval = f"{gain:+.3f} [{low:+.2f}, {high:+.2f}]" if gain is not None and low is not None else "-"
    decided = "significant" if across["significant"] else "not significant"
    dropped = ("eval.split=", "+sweep=")  # the test run is the point itself, not the sweep's settings
    overrides = [o for o in str(selected.get("overrides") or "").split() if not o.startswith(dropped)]
    return [
        f"selected on validation by {objective} ({', '.join(OBJECTIVES[objective])}): job {selected['job']}",
        f"  validation gain over unsteered {interval}: optimistic, the best of {across['points']} points",
        f"  its {across['p_from'] or 'point'} p = {across['p']:.2g}, Holm-adjusted across the {across['points']} "
        f"points p_adj = {across['p_adjusted']:.2g}: {decided}",
        "  run it on the test split (the record names the sweep point it came from):",
        f"  python launch.py {' '.join(overrides)} eval.split=test selected_from={sweep_dir}/{selected['job']}",
    ]


def aggregate(sweep_dir: str | Path, logger_cfg: DictConfig | None = None, objective: str = "acc") -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    rows = collect_rows(sweep_dir)
    write_csv(sweep_dir / "aggregate.csv", rows)
    plots = make_plots(rows, sweep_dir)
    write_generations(sweep_dir)  # pooled over the sweep's jobs, per condition
    failed = [row for row in rows if row.get("status") != "ok"]
    summary = {
        "jobs": len({row["job"] for row in rows}),
        "failed": [{"job": r["job"], "error": r.get("error")} for r in failed],
        "csv": str(sweep_dir / "aggregate.csv"),
        "plots": [str(p) for p in plots],
        "selected_on_validation": select_best(rows, objective),
    }
    atomic_write_json(sweep_dir / "aggregate.json", summary)
    print_sweep_table(rows)
    print(f"aggregate: {summary['csv']} and {len(plots)} plots in {sweep_dir}; {len(failed)} failed jobs")
    selected = summary["selected_on_validation"]
    if selected:
        print("\n".join(selection_lines(selected, objective, sweep_dir)))
    if logger_cfg is not None and logger_cfg.name == "wandb":
        try:
            import wandb

            run = wandb.init(
                project=logger_cfg.project,
                entity=logger_cfg.entity,
                group=sweep_dir.name,
                job_type="aggregate",
                name=f"{sweep_dir.name}-aggregate",
                dir=str(sweep_dir),
                mode=wandb_mode(logger_cfg.mode),
                reinit="finish_previous",
            )
            columns = sorted({k for row in rows for k in row} - {AXIS_FLAG})
            run.log(
                {
                    "aggregate": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows]),
                    **{p.stem: wandb.Image(str(p)) for p in plots},
                }
            )
            run.finish()
        except Exception as error:
            print(
                f"[unlock] W&B aggregate logging failed ({type(error).__name__}: {error}); CSV and plots are on disk",
                file=sys.stderr,
            )
    return summary


class AggregateCallback(Callback):
    """Hydra callback: aggregate a multirun's results once every job has finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        selection = config.get("selection") or {}
        summary = aggregate(config.hydra.sweep.dir, config.get("logger"), str(selection.get("objective", "acc")))
        if summary["failed"]:
            failed = "; ".join(f"job {f['job']}: {f['error']}" for f in summary["failed"])
            print(
                f"[unlock] {len(summary['failed'])} of {summary['jobs']} sweep points failed ({failed}); "
                f"the others are in {summary['csv']}",
                file=sys.stderr,
            )
            # Hydra turns exceptions in callbacks into warnings; launch.py exits non-zero on this.
            FAILED_SWEEP_POINTS.extend(summary["failed"])


if __name__ == "__main__":
    # Re-aggregate a sweep directory by hand (e.g. after resubmitting failed jobs).
    if len(sys.argv) != 2:
        sys.exit("usage: python -m unlock.run.track SWEEP_DIR")
    aggregate(sys.argv[1])
