"""`make analyze`: the paper's analyses from cached activations only (capture once, then linear algebra).
This module drives it (plan, captures, fits, files, W&B); unlock.analysis.grid holds its pieces.

Composed by Hydra like a run (same groups, overrides and stage cache), so after `make run` nothing is
captured again:

    python -m unlock.analysis                      # the default pair, after `make run`
    python -m unlock.analysis experiment=tiny      # seconds

On the paper's grids, clipped to what the activations allow (N up to capability.n_prompts, in nested
subsets as the research code grows N; rank up to min(N, d_s, d_t)): held-out fit of the maps (R^2,
relative error), transfer fidelity against its null and its self-transfer ceiling (unlock.analysis.fidelity: the
most any map into the Target's top-k subspace can reach at that rank and N), and the spectral entropy of the
Source and Target activations against N. Writes analysis.json (a ``grid`` list of rows), analysis.csv
and PNG plots to the run directory, and logs them to W&B with logger=wandb.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from statistics import fmean
from typing import Any

from unlock.analysis.fidelity import summarise, transfer_fidelity
from unlock.analysis.grid import N_GRID, NULL_DRAWS, RANK_GRID, head, plot_analysis, spectral_entropy
from unlock.method.extract import extract_directions
from unlock.method.pipeline import MapSettings, transfer
from unlock.run.plan import make_plan
from unlock.run.record import mean_quality
from unlock.run.session import Captures, Session, capture_all, prompt_sets
from unlock.run.settings import RunSettings
from unlock.run.track import write_csv
from unlock.run.wandb_log import log_files
from unlock.store.artifacts import atomic_write_json


def grid_row(
    captures: Captures, pairs: dict[int, int], base: MapSettings, n: int, rank: int, seed: int
) -> dict[str, Any]:
    """Held-out fit and transfer fidelity of the method run on the first n prompts at this rank."""
    locked = head(captures.target_locked.value, n)
    held = (captures.held_out[0].value, captures.held_out[1].value) if captures.held_out else None
    result = transfer(
        head(captures.source_unlocked.value, n),
        head(captures.source_locked.value, n),
        locked,
        pairs,
        replace(base, rank=rank),
        held,
    )
    maps = result.alignment.value.maps
    quality = mean_quality(result.alignment.value.quality)
    prefix = "" if held else "train_"
    row: dict[str, Any] = {
        "n_prompts": n,
        "rank": rank,
        "rank_effective": min(m.rank_effective for m in maps.values()),
        "r2": quality[f"{prefix}r2"],
        "rel_error": quality[f"{prefix}rel_error"],
    }
    if captures.target_unlocked is not None:
        native = extract_directions(head(captures.target_unlocked.value, n), locked, base.aggregation)
        summary = summarise(
            transfer_fidelity(maps, result.target_vectors, {j: native.vectors[j] for j in pairs}, NULL_DRAWS, seed)
        )
        row.update(
            fidelity=summary["mean_cos"],
            fidelity_null_p95=summary["mean_null_p95"],
            self_ceiling=summary["mean_self_ceiling"],
            layers_beating_null=summary["beat_null"],
            layers=summary["layers"],
        )
    return row


def entropy_rows(captures: Captures, ns: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in ns:
        row: dict[str, float] = {"n_prompts": n}
        for side, acts in (("source", captures.source_locked.value), ("target", captures.target_locked.value)):
            part = head(acts, n)
            row[f"{side}_entropy"] = fmean(spectral_entropy(part[layer]) for layer in part.layers)
        rows.append(row)
    return rows


def analyze(settings: RunSettings) -> dict[str, Any]:
    plan = make_plan(settings)
    session = Session(settings)
    captures = capture_all(session, prompt_sets(settings))
    session.models.release_all()
    n_max, width = settings.prompts.n_prompts, min(plan.source_width, plan.target_width)
    ns = sorted({n for n in N_GRID if n <= n_max} | {n_max})
    grid = [
        grid_row(captures, plan.pairs, settings.map, n, rank, settings.seed)
        for n in ns
        for rank in sorted({r for r in RANK_GRID if r <= min(n, width)} | {min(n, width)})
    ]
    return {
        "grid": grid,
        "entropy": entropy_rows(captures, ns),
        "pairs": {str(j): l for j, l in plan.pairs.items()},
        "source": settings.models.source.name,
        "target": settings.models.target.name,
        "null_draws": NULL_DRAWS,
        "stages": session.cache.summary(),
        "heldout": settings.prompts.n_heldout,
    }


def write_analysis(settings: RunSettings, result: dict[str, Any], out_dir: Path) -> list[Path]:
    """analysis.json and analysis.csv first, then the plots, then W&B (nothing lost if a later step fails)."""
    atomic_write_json(out_dir / "analysis.json", result)
    write_csv(out_dir / "analysis.csv", result["grid"])
    paths = plot_analysis(result, out_dir)
    if settings.logger.name == "wandb":
        log_files(
            settings.logger,
            out_dir,
            f"{out_dir.name}-analyze",
            {"analysis_grid": result["grid"]},
            paths,
            job_type="analyze",
        )
    return paths


def report(settings: RunSettings, out_dir: Path) -> None:
    """Run the analysis for a run's settings and write and print it (the body of `make analyze`)."""
    result = analyze(settings)
    paths = write_analysis(settings, result, out_dir)
    for row in result["grid"]:
        print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"analysis: {out_dir / 'analysis.json'}, {out_dir / 'analysis.csv'} and {len(paths)} plots")
