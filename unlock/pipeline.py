"""The method in one place: extract on the Source, align Source to Target, carry the direction over.

This layer holds no model code; it takes captured activations and returns what the Target is
steered with, so callers (launch.py, tests, notebooks) can cache each stage as they like.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from unlock.align import LinearMap, fit_map, fit_quality
from unlock.capture import Activations
from unlock.extract import Directions, extract_directions


@dataclass
class Transfer:
    """Everything the align stage produces, keyed by Target layer."""

    pairs: dict[int, int]  # Target layer -> Source layer
    maps: dict[int, LinearMap]
    target_vectors: dict[int, torch.Tensor]
    quality: dict[int, dict[str, float]] = field(default_factory=dict)


def fit_maps(
    source_locked: Activations,
    target_locked: Activations,
    pairs: Mapping[int, int],
    rank: int,
    method: str = "unlock",
    centre: bool = False,
    ridge: float = 1e-2,
    held_out: tuple[Activations, Activations] | None = None,
    progress: bool = False,
) -> tuple[dict[int, LinearMap], dict[int, dict[str, float]]]:
    """One map per (Target layer, Source layer) pair, fit on Locked activations of the same prompts.

    ``held_out`` = (Source Locked, Target Locked) activations of other prompts, for fit quality.
    """
    if source_locked.n_prompts != target_locked.n_prompts:
        raise ValueError(
            f"mismatched activation counts: {source_locked.n_prompts} Source vs {target_locked.n_prompts} Target "
            "prompts; the map is fit on the same N prompts in both models"
        )
    maps: dict[int, LinearMap] = {}
    quality: dict[int, dict[str, float]] = {}
    for target_layer, source_layer in tqdm(pairs.items(), desc="align", disable=not progress, leave=False):
        fitted = fit_map(source_locked[source_layer], target_locked[target_layer], rank, method, centre, ridge)
        maps[target_layer] = fitted
        quality[target_layer] = {"train_" + k: v for k, v in fit_quality(
            fitted, source_locked[source_layer], target_locked[target_layer]).items()}
        if held_out is not None:
            quality[target_layer].update(fit_quality(fitted, held_out[0][source_layer], held_out[1][target_layer]))
    return maps, quality


def map_directions(directions: Directions, maps: Mapping[int, LinearMap], pairs: Mapping[int, int]) -> dict[int, torch.Tensor]:
    """r_j = v_{pair(j)}^T W_j for every Target layer j."""
    return {target_layer: maps[target_layer].map_direction(directions.vectors[source_layer])
            for target_layer, source_layer in pairs.items()}


def transfer(
    source_unlocked: Activations,
    source_locked: Activations,
    target_locked: Activations,
    pairs: Mapping[int, int],
    rank: int,
    aggregation: str = "mean",
    method: str = "unlock",
    ridge: float = 1e-2,
    held_out: tuple[Activations, Activations] | None = None,
) -> tuple[Directions, Transfer]:
    """UNLOCK steps 3-5: Source direction, per-layer maps (centred for pca), mapped Target vectors."""
    directions = extract_directions(source_unlocked, source_locked, aggregation)
    maps, quality = fit_maps(
        source_locked, target_locked, pairs, rank, method, centre=aggregation == "pca", ridge=ridge, held_out=held_out
    )
    vectors = map_directions(directions, maps, pairs)
    return directions, Transfer(pairs=dict(pairs), maps=maps, target_vectors=vectors, quality=quality)
