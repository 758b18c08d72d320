"""UNLOCK: carry a capability direction from a Source model to a Target model through a low-rank map.

Stages, one module each: capture (activations) -> extract (direction) -> align (map) -> steer.
"""

from unlock.align import LinearMap, fit_map, fit_quality, pair_layers, pair_layers_linear
from unlock.capture import Activations, capture_activations
from unlock.extract import Directions, direction_from_pairs, extract_directions
from unlock.steer import Steering

__all__ = [
    "Activations",
    "Directions",
    "LinearMap",
    "Steering",
    "capture_activations",
    "direction_from_pairs",
    "extract_directions",
    "fit_map",
    "fit_quality",
    "pair_layers",
    "pair_layers_linear",
]
