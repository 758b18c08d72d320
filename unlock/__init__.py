"""UNLOCK: carry a capability direction from a Source model to a Target model through a low-rank map.

Stages, one module each: capture (activations) -> extract (direction) -> align (map) -> steer.
Names below are imported lazily so that `import unlock` costs nothing until a name is used.
"""

from importlib import import_module

_EXPORTS = {
    "Activations": "unlock.capture",
    "capture_activations": "unlock.capture",
    "Directions": "unlock.extract",
    "direction_from_pairs": "unlock.extract",
    "extract_directions": "unlock.extract",
    "LinearMap": "unlock.align",
    "fit_map": "unlock.align",
    "fit_quality": "unlock.align",
    "pair_layers": "unlock.align",
    "pair_layers_linear": "unlock.align",
    "Steering": "unlock.steer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unlock' has no attribute {name!r}")
