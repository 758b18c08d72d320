"""UNLOCK: carry a capability direction from a Source model to a Target model through a low-rank map.

Stages, one module each: capture (activations) -> extract (direction) -> align (map) -> steer.
Names below are imported lazily so that `import unlock` costs nothing until a name is used.
"""

from importlib import import_module

_EXPORTS = {
    "Activations": "unlock.method.capture",
    "capture_activations": "unlock.method.capture",
    "Directions": "unlock.method.extract",
    "direction_from_pairs": "unlock.method.extract",
    "extract_directions": "unlock.method.extract",
    "LinearMap": "unlock.method.align",
    "fit_map": "unlock.method.align",
    "fit_quality": "unlock.method.align",
    "pair_layers": "unlock.method.align",
    "pair_layers_linear": "unlock.method.align",
    "Steering": "unlock.method.steer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unlock' has no attribute {name!r}")
