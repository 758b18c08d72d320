"""`make analyze`: the paper's analyses from cached activations only (capture once, then linear algebra).

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

import torch
from omegaconf import DictConfig

from unlock.analysis.fidelity import summarise, transfer_fidelity
from unlock.analysis.plots import pyplot, rank_n_heatmap, save_figure
from unlock.method.capture import Activations
from unlock.method.extract import extract_directions
from unlock.method.pipeline import MapSettings, transfer
from unlock.run.config import map_settings
from unlock.run.plan import make_plan
from unlock.run.record import mean_quality
from unlock.run.session import Captures, Session, capture_all, prompt_sets
from unlock.run.track import write_csv
from unlock.run.wandb_log import log_files
from unlock.store.artifacts import atomic_write_json

N_GRID = (4, 16, 32, 64, 128, 256, 512)
RANK_GRID = (1, 4, 16, 32, 64, 128, 256, 512)
NULL_DRAWS = 200


def head(acts: Activations, n: int) -> Activations:
    """The first n prompts' activations (nested subsets: N=16 holds the N=4 prompts)."""
    return Activations({layer: x[:n] for layer, x in acts.per_layer.items()}, acts.position, acts.token_counts[:n])


def spectral_entropy(x: torch.Tensor) -> float:
    """Entropy (nats) of the normalised squared singular values of the centred activations: how many
    directions the activations spread over (log of that number at most)."""
    s = torch.linalg.svdvals(x.double() - x.double().mean(dim=0))
    p = s.pow(2) / s.pow(2).sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


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
        row = {"n_prompts": n}
        for side, acts in (("source", captures.source_locked.value), ("target", captures.target_locked.value)):
            part = head(acts, n)
            row[f"{side}_entropy"] = fmean(spectral_entropy(part[layer]) for layer in part.layers)
        rows.append(row)
    return rows


def analyze(cfg: DictConfig) -> dict[str, Any]:
    plan = make_plan(cfg)
    session = Session(cfg)
    captures = capture_all(session, prompt_sets(cfg))
    session.models.release_all()
    n_max, width = cfg.capability.n_prompts, min(plan.source_width, plan.target_width)
    ns = sorted({n for n in N_GRID if n <= n_max} | {n_max})
    grid = [
        grid_row(captures, plan.pairs, map_settings(cfg), n, rank, cfg.seed)
        for n in ns
        for rank in sorted({r for r in RANK_GRID if r <= min(n, width)} | {min(n, width)})
    ]
    return {
        "grid": grid,
        "entropy": entropy_rows(captures, ns),
        "pairs": {str(j): l for j, l in plan.pairs.items()},
        "source": cfg.source_model.name,
        "target": cfg.target_model.name,
        "null_draws": NULL_DRAWS,
        "stages": session.cache.summary(),
        "heldout": cfg.capability.n_heldout,
    }


def plot_analysis(result: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    grid, paths = result["grid"], []
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({row["n_prompts"] for row in grid}):
        rows = [row for row in grid if row["n_prompts"] == n]
        ax.plot([row["rank"] for row in rows], [row["rel_error"] for row in rows], marker="o", label=f"N={n}")
    ax.set(xscale="log", xlabel="rank", ylabel="held-out relative error", title="map error vs rank")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out_dir / "error_vs_rank.png"))
    if "fidelity" in grid[0]:
        paths.append(_fidelity_heatmap(grid, out_dir))
    fig, ax = plt.subplots(figsize=(6, 4))
    for side in ("source", "target"):
        ax.plot(
            [r["n_prompts"] for r in result["entropy"]],
            [r[f"{side}_entropy"] for r in result["entropy"]],
            marker="o",
            label=result[side],
        )
    ax.set(xscale="log", xlabel="N prompts", ylabel="spectral entropy (nats)", title="activation spectral entropy vs N")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out_dir / "entropy_vs_n.png"))
    return paths


def _fidelity_heatmap(grid: list[dict[str, Any]], out_dir: Path) -> Path:
    cells = {
        (r["n_prompts"], r["rank"]): (
            r["fidelity"],
            f"{r['fidelity']:.2f}/{r['self_ceiling']:.2f}\n{r['layers_beating_null']}/{r['layers']}",
        )
        for r in grid
    }
    return rank_n_heatmap(
        cells,
        "mean cos(UNLOCK, native) / self-transfer ceiling; layers beating the null",
        out_dir / "fidelity_heatmap.png",
        cmap="coolwarm",
        limits=(-1, 1),
        text_color="black",
    )


def write_analysis(cfg: DictConfig, result: dict[str, Any], out_dir: Path) -> list[Path]:
    """analysis.json and analysis.csv first, then the plots, then W&B (nothing lost if a later step fails)."""
    atomic_write_json(out_dir / "analysis.json", result)
    write_csv(out_dir / "analysis.csv", result["grid"])
    paths = plot_analysis(result, out_dir)
    if cfg.logger.name == "wandb":
        log_files(
            cfg.logger, out_dir, f"{out_dir.name}-analyze", {"analysis_grid": result["grid"]}, paths, job_type="analyze"
        )
    return paths


def report(cfg: DictConfig, out_dir: Path) -> None:
    """Run the analysis for a composed config and write and print it (the body of `make analyze`)."""
    result = analyze(cfg)
    paths = write_analysis(cfg, result, out_dir)
    for row in result["grid"]:
        print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"analysis: {out_dir / 'analysis.json'}, {out_dir / 'analysis.csv'} and {len(paths)} plots")
