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
from unlock.analysis.paired import CONTROL, excludes_zero, interval_excludes_zero
from unlock.analysis.paired import cell as paired_cell
from unlock.analysis.plots import pyplot, rank_n_heatmap, save_figure
from unlock.run.conditions import BASELINE
from unlock.run.conditions import steered as steered_conditions
from unlock.store.artifacts import atomic_write_bytes, atomic_write_json

FAILED_SWEEP_POINTS: list[dict[str, Any]] = []  # filled at the end of a multirun, read by launch.py
SHOWN_METRICS = ("acc", "gen_tokens", "gen_words", "stepwise", "entropy")
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
    "vs unsteered: paired diff [95% CI] p",
    "vs random",
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
    paired = record.get("paired", {})
    for condition, per_task in record.get("conditions", {}).items():
        if "skipped" in per_task:
            table.add_row(condition, "-", f"skipped: {per_task['skipped']}", *[""] * 7)
            continue
        for task, m in per_task.items():
            versus = paired.get(condition, {}).get(task, {})
            cells = (
                _fmt(m.get("n")),
                _fmt(m.get("gen_tokens"), 1),
                _fmt(m.get("gen_words"), 1),
                _fmt(m.get("stepwise"), 2),
                _fmt(m.get("entropy"), 2),
            )
            table.add_row(
                condition,
                task,
                _acc_cell(m),
                *cells,
                paired_cell(versus.get(BASELINE)),
                paired_cell(versus.get(CONTROL)),
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
    console.print(paired_line(record.get("paired", {})))
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
                    out[f"paired/{condition}/{task}/vs_{baseline}/{name}"] = value
    return out


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
        "wins": result["wins"],
        "losses": result["losses"],
        "items_needed": result["items_needed"],
        "power": result["power"],
        "underpowered": int(result["underpowered"]),
    }


def paired_line(paired: dict[str, Any]) -> str:
    """What the paired tests say, in words: which comparisons' intervals exclude zero, and power."""
    results = [
        (f"{c} vs {b} ({t})", r)
        for c, per_task in paired.items()
        for t, versus in per_task.items()
        for b, r in versus.items()
        if r.get("n")
    ]
    if not results:
        return "paired comparisons: none (no per-item correctness to pair)"
    clear = [name for name, r in results if excludes_zero(r)]
    weak = [name for name, r in results if r["underpowered"]]
    return (
        "paired comparisons (same items; Newcombe 95% interval, exact McNemar): "
        + (f"interval excludes 0 for {', '.join(clear)}" if clear else "no interval excludes 0")
        + (
            f"; {len(weak)} of {len(results)} underpowered for the paper's gain or stats.effect (items needed "
            "in brackets)"
            if weak
            else ""
        )
    )


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
    "wins",
    "losses",
    "items_needed",
    "power",
    "underpowered",
)


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
        [c, t, b, *paired_columns(r).values()]
        for c, per_task in record.get("paired", {}).items()
        for t, versus in per_task.items()
        for b, r in versus.items()
        if r.get("n")
    ]
    if rows:
        tables["paired"] = wandb.Table(columns=list(PAIRED_COLUMNS), data=rows)
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
                    }
                )
    return rows


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
    mark = " underpowered" if row.get("vs_unsteered_underpowered") else ""
    return (
        f"{row['vs_unsteered_diff']:+.3f} [{row['vs_unsteered_ci_low']:+.2f}, {row['vs_unsteered_ci_high']:+.2f}]{mark}"
    )


# selection.objective -> the keys a sweep point is ranked by, in order (later keys break ties).
OBJECTIVES = {
    # the paper's: validation accuracy, as the paired gain over the unsteered Target on the same items
    "acc": ("vs_unsteered_diff", "acc", "stepwise", "gen_words"),
    "stepwise": ("stepwise", "acc", "gen_words"),  # behaviour: share of generations that reason in steps
    "fidelity": ("layers_beating_null", "fidelity", "acc"),  # geometry: layers whose transfer beats the null
}


def select_best(rows: list[dict[str, Any]], objective: str = "acc") -> dict[str, Any] | None:
    """The UNLOCK point of the validation split that ranks first by ``objective`` (OBJECTIVES)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"selection objective {objective!r} is not allowed; allowed: {', '.join(OBJECTIVES)}")
    keys = OBJECTIVES[objective]
    candidates = [
        row
        for row in rows
        if row.get("status") == "ok" and row.get("condition") == "unlock" and row.get("split") == "validation"
    ]
    if not candidates:
        return None
    best = max(candidates, key=lambda row: tuple(row.get(k) or 0.0 for k in keys))
    paired = ("vs_unsteered_ci_low", "vs_unsteered_ci_high", "vs_unsteered_p_mcnemar", "vs_unsteered_underpowered")
    clear = [
        row["job"]
        for row in candidates
        if interval_excludes_zero(row.get("vs_unsteered_ci_low"), row.get("vs_unsteered_ci_high"))
    ]
    return {
        "objective": objective,
        **{
            k: best.get(k)
            for k in ("job", *sweep_axes(rows), *dict.fromkeys((*keys, *OBJECTIVES["acc"])), *paired, "overrides")
        },
        "points_excluding_zero": clear,
    }


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
        print(f"selected on validation by {objective} ({', '.join(OBJECTIVES[objective])}): {selected}")
        if not selected["points_excluding_zero"]:
            print(
                "no sweep point's paired 95% interval against the unsteered Target excludes 0: the selected "
                "point is not distinguishable from no steering on these validation items"
            )
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
