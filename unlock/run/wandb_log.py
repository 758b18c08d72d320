"""The one W&B writer: a run, a sweep's aggregate and ``make analyze``'s grid each become a W&B run through
:func:`init_run` (project, entity, mode from the ``logger`` config; ``WANDB_MODE`` wins). Results are on
disk before W&B is touched, a W&B failure is reported and loses nothing, and ``logger=none`` never
imports wandb."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from unlock.analysis.paired import words
from unlock.run.settings import LoggerSettings
from unlock.run.summary import behaviour_results, paired_columns


def wandb_mode(mode: str) -> Any:
    """The W&B mode: WANDB_MODE where set, else the logger's (online, offline, disabled, shared)."""
    return os.environ.get("WANDB_MODE", mode)


def init_run(logger: LoggerSettings, out_dir: Path, name: str, **fields: Any) -> Any:
    """A W&B run in ``out_dir`` for the ``logger`` settings (project, entity, mode); ``fields`` are
    wandb.init's own (group, job_type, config, tags)."""
    import wandb

    return wandb.init(
        project=logger.project,
        entity=logger.entity,
        dir=str(out_dir),
        mode=wandb_mode(logger.mode),
        name=name,
        reinit="finish_previous",
        **fields,
    )


def log_files(
    logger: LoggerSettings, out_dir: Path, name: str, tables: dict[str, list[dict]], images: list[Path], **fields: Any
) -> None:
    """A run of tables (rows of dicts, one column per key) and images: a sweep's aggregate, the analysis
    grid. A failure is reported; the files are on disk."""
    try:
        import wandb

        run = init_run(logger, out_dir, name, **fields)
        logged: dict[str, Any] = {p.stem: wandb.Image(str(p)) for p in images}
        for key, rows in tables.items():
            columns = sorted({k for row in rows for k in row})
            logged[key] = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        run.log(logged)
        run.finish()
    except Exception as error:
        message = f"W&B logging of {name} failed ({type(error).__name__}: {error}); the files are on disk"
        print(f"[unlock] {message}", file=sys.stderr)


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


def log_run(logger: LoggerSettings, record: dict[str, Any], output_dir: str | Path) -> None:
    """One W&B run per Hydra job (a multirun's jobs share the sweep's group); a W&B failure is reported
    and never loses the on-disk results."""
    if logger.name != "wandb":
        return
    try:
        import wandb

        run = init_run(
            logger,
            Path(output_dir),
            Path(output_dir).name,
            config=record.get("config"),
            group=logger.group,
            tags=list(logger.tags),
        )
        run.log(flat_metrics(record))
        run.summary.update({**record.get("settings", {}), "status": record.get("status")})
        run.log(wandb_tables(wandb, record))
        run.finish()
    except Exception as error:  # results are already on disk
        print(f"[unlock] W&B logging failed ({type(error).__name__}: {error}); results.json is intact", file=sys.stderr)
