"""The rank x N analysis's own pieces (``make analyze``; the run layer's unlock.run.analyze drives them):
the paper's grids, nested prompt subsets, the spectral entropy of activations, and the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unlock.analysis.plots import pyplot, rank_n_heatmap, save_figure
from unlock.method.capture import Activations

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
