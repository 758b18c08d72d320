"""Figures, written the way every artifact is: atomically, so a crash never leaves half a PNG.
matplotlib is imported on first use, so runs that plot nothing never pay for it."""

from __future__ import annotations

import math
from pathlib import Path

from unlock.store.artifacts import atomic_path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def rank_n_heatmap(
    cells: dict[tuple[int, int], tuple[float, str]],
    title: str,
    path: Path,
    cmap: str = "viridis",
    limits: tuple[float, float] | None = None,
    text_color: str = "white",
) -> Path:
    """A rank (x) by N prompts (y) heatmap, each cell {(n, rank): (value, its label)}; absent cells blank."""
    plt = pyplot()
    ranks, ns = sorted({k for _, k in cells}), sorted({n for n, _ in cells})
    values = [[cells[(n, k)][0] if (n, k) in cells else math.nan for k in ranks] for n in ns]
    fig, ax = plt.subplots(figsize=(1.2 * len(ranks) + 2, 0.8 * len(ns) + 2))
    vmin, vmax = limits or (None, None)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    for (n, k), (_, text) in cells.items():
        ax.text(ranks.index(k), ns.index(n), text, ha="center", va="center", color=text_color, fontsize=7)
    ax.set_xticks(range(len(ranks)), [str(k) for k in ranks])
    ax.set_yticks(range(len(ns)), [str(n) for n in ns])
    ax.set(xlabel="rank", ylabel="N prompts", title=title)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)
