"""Figures written the way every artifact is: atomically, so a crash never leaves half a PNG."""

from __future__ import annotations

from pathlib import Path

from unlock.artifacts import atomic_path


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
