"""Sweeps: at the end of a multirun, :class:`AggregateCallback` reads every job's ``results.json`` (never
only job status), writes ``aggregate.csv``, ``aggregate.json`` and PNG plots in the sweep directory,
selects the best point on validation by the sweep's objective, and logs them to W&B when enabled. A
sweep with failed points exits non-zero (the callback raises SystemExit once all is written: Hydra
reports an ordinary exception from a callback as a warning only). ``python -m unlock.run.track DIR``
aggregates a sweep directory again by hand.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from rich.console import Console
from rich.table import Table

from unlock.analysis.generations import write as write_generations
from unlock.analysis.paired import CONTROL, sweep_verdict
from unlock.analysis.plots import pyplot, rank_n_heatmap, save_figure
from unlock.analysis.stats import mcnemar_one_sided
from unlock.run.conditions import BASELINE, OBJECTIVES
from unlock.run.conditions import steered as steered_conditions
from unlock.run.config import sweep_settings
from unlock.run.settings import LoggerSettings
from unlock.run.summary import SHOWN_METRICS, fmt, paired_columns
from unlock.run.wandb_log import log_files
from unlock.store.artifacts import atomic_write_bytes, atomic_write_json

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


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per (job, condition, task); failed and unfinished jobs get a row with their error."""
    rows: list[dict[str, Any]] = []
    job_dirs = sorted(
        {p.parent for p in sweep_dir.glob("*/.hydra")} | {p.parent for p in sweep_dir.glob("*/results.json")},
        key=lambda p: (len(p.name), p.name),
    )
    for job_dir in job_dirs:
        path = job_dir / "results.json"
        base: dict[str, Any] = {"job": job_dir.name}
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
    paths: list[Path | None] = [_axis_plot(ok, task, axis, out_dir) for axis in sweep_axes(steered)]
    if _varying(steered, "rank") and _varying(steered, "n_prompts"):
        paths.append(_rank_n_heatmap(steered, task, out_dir))
    paths.append(_length_bars(ok, task, out_dir))
    return [path for path in paths if path is not None]


def _axis_plot(ok: list[dict[str, Any]], task: str, axis: str, out_dir: Path) -> Path:
    """Accuracy and generation length of each steered condition against one swept axis."""
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.8))
    for condition in steered_conditions():
        subset = [row for row in ok if row["condition"] == condition]
        xs: list[Any] = sorted(
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
        cells[(n, k)] = (value, fmt(value, 2))
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
            *[fmt(row.get(a)) for a in axes],
            row["condition"],
            row["task"],
            fmt(row.get("acc")),
            _versus_cell(row),
            fmt(row.get("gen_tokens"), 1),
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


def aggregate(sweep_dir: str | Path, logger: LoggerSettings | None = None, objective: str = "acc") -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    rows = collect_rows(sweep_dir)
    write_csv(sweep_dir / "aggregate.csv", rows)
    plots = make_plots(rows, sweep_dir)
    write_generations(sweep_dir)  # pooled over the sweep's jobs, per condition
    failed = [row for row in rows if row.get("status") != "ok"]
    summary: dict[str, Any] = {
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
    if logger is not None and logger.name == "wandb":
        rows_logged = [{k: v for k, v in row.items() if k != AXIS_FLAG} for row in rows]
        tables = {"aggregate": rows_logged}
        log_files(
            logger,
            sweep_dir,
            f"{sweep_dir.name}-aggregate",
            tables,
            plots,
            job_type="aggregate",
            group=sweep_dir.name,
        )
    return summary


class AggregateCallback(Callback):
    """Hydra callback: aggregate a multirun's results once every job has finished. Hydra calls it with
    the composed config (an entry point of the run layer, like launch.py): it reads it through
    :func:`unlock.run.config.sweep_settings`."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir, logger, objective = sweep_settings(config)
        summary = aggregate(sweep_dir, logger, objective)
        if summary["failed"]:
            failed = "; ".join(f"job {f['job']}: {f['error']}" for f in summary["failed"])
            print(
                f"[unlock] {len(summary['failed'])} of {summary['jobs']} sweep points failed ({failed}); "
                f"the others are in {summary['csv']}",
                file=sys.stderr,
            )
            # Hydra reports an exception from a callback as a warning and exits 0; SystemExit is not an
            # Exception, so it ends the multirun with exit code 1 (tests/test_track.py checks it)
            raise SystemExit(1)


if __name__ == "__main__":
    # Re-aggregate a sweep directory by hand (e.g. after resubmitting failed jobs).
    if len(sys.argv) != 2:
        sys.exit("usage: python -m unlock.run.track SWEEP_DIR")
    aggregate(sys.argv[1])
