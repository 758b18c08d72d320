"""Stage 2: extract a capability direction per layer from paired Unlocked vs Locked activations.

The pairs come from one of two contrasts, both just two activation sets over the same questions:
(a) one model, direct prompt (Locked) vs step-by-step prompt (Unlocked);
(b) two checkpoints, base (Locked) vs post-trained (Unlocked), same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlock.method.capture import Activations

AGGREGATIONS = ("mean", "pca")


@dataclass
class Directions:
    """One direction per Source layer, plus what a reader needs to judge them."""

    vectors: dict[int, torch.Tensor]
    aggregation: str
    n_pairs: int

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def norms(self) -> dict[int, float]:
        return {layer: float(vector.norm()) for layer, vector in self.vectors.items()}


def direction_from_pairs(unlocked: torch.Tensor, locked: torch.Tensor, aggregation: str = "mean") -> torch.Tensor:
    """The capability direction of one layer from (N, d) paired activations.

    mean: mean of the paired differences, not normalised (its norm carries the effect size).
    pca: top right singular vector of the centred differences (unit norm), via a deterministic
    full SVD in float64, with its sign fixed to agree with the mean difference.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
    if unlocked.shape != locked.shape:
        raise ValueError(
            f"mismatched activation counts: unlocked {tuple(unlocked.shape)} vs locked {tuple(locked.shape)}; "
            "both must be (N, d) over the same N prompts"
        )
    if unlocked.ndim != 2 or unlocked.shape[0] == 0:
        raise ValueError(f"activations must be (N, d) with N >= 1, got shape {tuple(unlocked.shape)}")
    diffs = unlocked.double() - locked.double()
    mean_diff = diffs.mean(dim=0)
    if aggregation == "mean":
        return mean_diff.float()
    if diffs.shape[0] < 2:
        raise ValueError(f"pca aggregation needs N >= 2 paired activations, got N = {diffs.shape[0]}")
    centred = diffs - mean_diff
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    top = vh[0]
    if torch.dot(top, mean_diff) < 0:
        top = -top
    return top.float()


def extract_directions(unlocked: Activations, locked: Activations, aggregation: str = "mean") -> Directions:
    """Directions for every layer both activation sets hold."""
    if unlocked.layers != locked.layers:
        raise ValueError(f"layer sets differ: unlocked {unlocked.layers} vs locked {locked.layers}")
    if unlocked.position == "all" or locked.position == "all":
        raise ValueError("position rule 'all' gives unpaired token rows; extract with 'last' or 'mean'")
    if unlocked.n_prompts != locked.n_prompts:
        raise ValueError(
            f"mismatched activation counts: {unlocked.n_prompts} unlocked vs {locked.n_prompts} locked prompts"
        )
    vectors = {layer: direction_from_pairs(unlocked[layer], locked[layer], aggregation) for layer in unlocked.layers}
    return Directions(vectors=vectors, aggregation=aggregation, n_pairs=unlocked.n_prompts)
