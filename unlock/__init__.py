"""UNLOCK: carry a capability direction from a Source model to a Target model through a low-rank map.

Stages, one module each: capture (activations) -> extract (direction) -> align (map) -> steer.
Names below are imported lazily so that `import unlock` costs nothing until a name is used.

The short import paths in :data:`ALIASES` are permanent (notebooks and the paper's readers use them),
not deprecated: each is a file in this folder that makes the path the very module object it names, so
private names, patches and ``isinstance`` checks agree whichever path is imported.
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
    "SteeringSettings": "unlock.method.steer",
}
__all__ = sorted(_EXPORTS)

# Permanent short import paths -> the module each one is (unlock/<name>.py, one line of sys.modules).
ALIASES = {
    "unlock.align": "unlock.method.align",
    "unlock.artifacts": "unlock.store.artifacts",
    "unlock.capture": "unlock.method.capture",
    "unlock.extract": "unlock.method.extract",
    "unlock.pipeline": "unlock.method.pipeline",
    "unlock.steer": "unlock.method.steer",
    "unlock.tiny": "unlock.models.tiny",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unlock' has no attribute {name!r}")
