"""The method in one place (docs/method.md, steps 3-5): extract the Source direction, fit one map per
(Target layer, Source layer) pair, carry the direction over to the Target.

The harness, the tests and a notebook all call :func:`transfer`. It holds no model code: it takes
captured activations and returns what the Target is steered with. Each step goes through ``step``,
which by default just computes; the harness passes one that looks the result up in its stage cache
first, keyed by the step's settings and the keys of its inputs, so caching wraps the method without
the method being written a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch
from tqdm.auto import tqdm

from unlock.method.align import LinearMap, fit_map, fit_quality, solver_options
from unlock.method.capture import Activations
from unlock.method.extract import Directions, extract_directions

T = TypeVar("T")


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A step's value and the key it is stored under (None when nothing caches it)."""

    value: T
    key: str | None = None


class Step(Protocol):
    def __call__(
        self, stage: str, spec: dict[str, Any], compute: Callable[[], T], inputs: Sequence[Cached[Any]]
    ) -> Cached[T]: ...


def uncached(stage: str, spec: dict[str, Any], compute: Callable[[], T], inputs: Sequence[Cached[Any]]) -> Cached[T]:
    """The default step: compute, store nothing."""
    return Cached(compute())


@dataclass(frozen=True)
class MapSettings:
    """How the maps are fit (config group ``rank``, plus the capability's aggregation)."""

    rank: int
    method: str = "unlock"
    aggregation: str = "mean"
    options: Mapping[str, Any] = field(default_factory=dict)  # the solver's own (align.SOLVERS)

    def __post_init__(self) -> None:
        solver_options(self.method, self.options)  # an unknown method or option fails here, named

    @property
    def centre(self) -> bool:
        """The pca direction is a direction of centred differences, so its maps are fit centred."""
        return self.aggregation == "pca"

    def spec(self) -> dict[str, Any]:
        """Exactly the settings that change a map: rank, method, centring and the method's own options
        (defaults filled in, so leaving an option out and giving its default share a key)."""
        return {
            "rank": int(self.rank),
            "method": str(self.method),
            "centre": self.centre,
            **solver_options(self.method, self.options),
        }


@dataclass
class Alignment:
    pairs: dict[int, int]  # Target layer -> Source layer
    maps: dict[int, LinearMap]
    quality: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass
class Transfer:
    """Everything :func:`transfer` produces, each with its cache key."""

    directions: Cached[Directions]
    alignment: Cached[Alignment]
    vectors: Cached[dict[int, torch.Tensor]]  # Target layer -> r_j

    @property
    def target_vectors(self) -> dict[int, torch.Tensor]:
        return self.vectors.value


def as_cached(value: T | Cached[T]) -> Cached[T]:
    return value if isinstance(value, Cached) else Cached(value)


def extract(
    unlocked: Cached[Activations], locked: Cached[Activations], aggregation: str, step: Step = uncached
) -> Cached[Directions]:
    """One direction per layer from paired Unlocked vs Locked activations (docs/method.md step 3)."""
    return step(
        "extract",
        {"aggregation": str(aggregation)},
        lambda: extract_directions(unlocked.value, locked.value, aggregation),
        (unlocked, locked),
    )


def fit_maps(
    source_locked: Activations,
    target_locked: Activations,
    pairs: Mapping[int, int],
    settings: MapSettings,
    held_out: tuple[Activations, Activations] | None = None,
    progress: bool = False,
) -> Alignment:
    """One map per (Target layer, Source layer) pair, fit on Locked activations of the same prompts;
    ``held_out`` = (Source Locked, Target Locked) activations of other prompts, for fit quality."""
    if source_locked.n_prompts != target_locked.n_prompts:
        raise ValueError(
            f"mismatched activation counts: {source_locked.n_prompts} Source vs {target_locked.n_prompts} Target "
            "prompts; the map is fit on the same N prompts in both models"
        )
    maps: dict[int, LinearMap] = {}
    quality: dict[int, dict[str, float]] = {}
    for target_layer, source_layer in tqdm(pairs.items(), desc="align", disable=not progress, leave=False):
        x, y = source_locked[source_layer], target_locked[target_layer]
        maps[target_layer] = fit_map(x, y, settings.rank, settings.method, settings.centre, **settings.options)
        quality[target_layer] = {"train_" + k: v for k, v in fit_quality(maps[target_layer], x, y).items()}
        if held_out is not None:
            quality[target_layer].update(
                fit_quality(maps[target_layer], held_out[0][source_layer], held_out[1][target_layer])
            )
    return Alignment(pairs=dict(pairs), maps=maps, quality=quality)


def align(
    source_locked: Cached[Activations],
    target_locked: Cached[Activations],
    pairs: Mapping[int, int],
    settings: MapSettings,
    held_out: tuple[Cached[Activations], Cached[Activations]] | None = None,
    step: Step = uncached,
    progress: bool = False,
) -> Cached[Alignment]:
    """The maps of every pair (docs/method.md step 4), through ``step``."""
    held = (held_out[0].value, held_out[1].value) if held_out else None
    spec = {"pairs": {str(k): v for k, v in pairs.items()}, **settings.spec(), "heldout": held_out is not None}
    return step(
        "align",
        spec,
        lambda: fit_maps(source_locked.value, target_locked.value, pairs, settings, held, progress),
        (source_locked, target_locked, *(held_out or ())),
    )


def map_directions(directions: Directions, alignment: Alignment) -> dict[int, torch.Tensor]:
    """r_j = v_{pair(j)}^T W_j for every Target layer j (docs/method.md step 5)."""
    return {
        target_layer: alignment.maps[target_layer].map_direction(directions.vectors[source_layer])
        for target_layer, source_layer in alignment.pairs.items()
    }


def carry(
    directions: Cached[Directions], alignment: Cached[Alignment], step: Step = uncached
) -> Cached[dict[int, torch.Tensor]]:
    return step(
        "vectors",
        {"name": "unlock"},
        lambda: map_directions(directions.value, alignment.value),
        (directions, alignment),
    )


def transfer(
    source_unlocked: Activations | Cached[Activations],
    source_locked: Activations | Cached[Activations],
    target_locked: Activations | Cached[Activations],
    pairs: Mapping[int, int],
    settings: MapSettings,
    held_out: tuple[Activations | Cached[Activations], Activations | Cached[Activations]] | None = None,
    step: Step = uncached,
    progress: bool = False,
) -> Transfer:
    """UNLOCK steps 3-5: Source direction, per-layer maps, mapped Target vectors."""
    source_locked = as_cached(source_locked)
    held = (as_cached(held_out[0]), as_cached(held_out[1])) if held_out else None
    directions = extract(as_cached(source_unlocked), source_locked, settings.aggregation, step)
    alignment = align(source_locked, as_cached(target_locked), pairs, settings, held, step, progress)
    return Transfer(directions=directions, alignment=alignment, vectors=carry(directions, alignment, step))
