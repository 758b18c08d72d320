"""What both lm-eval model classes (``unlock``, ``unlock_vllm``) take besides the model: a steer file and
the steering model args (alpha, rule, positions, layers), parsed here once into a :class:`SteerArgs`
whose settings are one :class:`~unlock.method.steer.SteeringSettings`.

Each of alpha, rule, positions and layers comes from the model args unless None, else from the steer
file's metadata (a run's file records the settings it steered with), else today's defaults (with one
warning naming the file). Only the small steer file is read, so a bad file or value fails before any
weights load.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from unlock.method.steer import POSITION_RULES, STEER_RULES, SteeringSettings, check_alpha
from unlock.store.artifacts import load_steering_vectors


@dataclass(frozen=True)
class SteerArgs:
    """A model's steering from its model args: the vectors (None without a steer file), how to steer
    with them, and the layers (None: every layer with a vector)."""

    vectors: dict[int, torch.Tensor] | None
    settings: SteeringSettings
    layers: list[int] | None


# What steering a steer file that records no settings gets (today's defaults; layers None = all).
STEER_DEFAULTS: dict[str, Any] = {**asdict(SteeringSettings()), "layers": None}


def parse_layers(spec: str | list[int] | None) -> list[int] | None:
    """'all' or None -> every layer with a vector; '3', '0-5' or '1;4;7' (CLI-safe separators) -> indices."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    if isinstance(spec, (list, tuple)):
        return [int(x) for x in spec]
    layers: list[int] = []
    for part in re.split(r"[;|\s]+", str(spec).strip()):
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span:
            layers.extend(range(int(span[1]), int(span[2]) + 1))
        elif re.fullmatch(r"-?\d+", part):
            layers.append(int(part))
        else:
            raise ValueError(f"layers {spec!r} is not understood; use 'all', '3', '0-5' or '1;4;7'")
    return layers


def parse_alpha(value: float | str) -> float:
    """A finite steering strength; the CLI hands it over as text when it is not a number."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"alpha {value!r} is not allowed: must be a finite number, e.g. alpha=0.1") from None
    return check_alpha(value)


def _choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value.strip() not in allowed:
        raise ValueError(f"{name} {value!r} is not allowed; allowed: {', '.join(allowed)}")
    return value.strip()


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "alpha": parse_alpha,
    "rule": lambda value: _choice(value, "rule", STEER_RULES),
    "positions": lambda value: _choice(value, "positions", tuple(POSITION_RULES)),
    "layers": parse_layers,
}


def steer_args(
    steer: str | None,
    alpha: float | str | None = None,
    rule: str | None = None,
    positions: str | None = None,
    layers: str | list[int] | None = None,
) -> SteerArgs:
    """The steer file's vectors and how to steer with them (see the module docstring). Without a file:
    no vectors, and the given values checked over the defaults."""
    given = {"alpha": alpha, "rule": rule, "positions": positions, "layers": layers}
    if not steer:
        chosen = {**STEER_DEFAULTS, **{key: _PARSERS[key](value) for key, value in given.items() if value is not None}}
        return _args(None, chosen)
    vectors, meta = load_steering_vectors(steer)
    settings: dict[str, Any] = {}
    defaulted: dict[str, Any] = {}
    for key, parse in _PARSERS.items():
        if given.get(key) is not None:
            settings[key] = parse(given[key])
        elif meta.get(key) is not None:
            try:
                settings[key] = parse(meta[key])
            except ValueError as error:
                raise ValueError(f"steer file {steer}: its recorded {error}") from None
        else:
            settings[key] = STEER_DEFAULTS[key]
            defaulted[key] = "all" if STEER_DEFAULTS[key] is None else STEER_DEFAULTS[key]
    if defaulted:
        using = ", ".join(f"{key}={value}" for key, value in defaulted.items())
        warnings.warn(
            f"steer file {steer} records no {', '.join(defaulted)}; using {using} (model args override)", stacklevel=3
        )
    return _args(vectors, settings)


def _args(vectors: dict[int, torch.Tensor] | None, chosen: dict[str, Any]) -> SteerArgs:
    how = SteeringSettings(chosen["alpha"], chosen["rule"], chosen["positions"])
    return SteerArgs(vectors, how, chosen["layers"])
