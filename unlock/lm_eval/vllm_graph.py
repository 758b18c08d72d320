"""UNLOCK's steering compiled into vLLM's decoder layers: it runs under torch.compile and CUDA graphs.

vLLM compiles the model's forward pass (Dynamo traces it, Inductor fuses it, CUDA graphs replay it),
and a Python hook on a compiled layer never runs. Here the steering is part of the layers' own code,
so the compiler traces it like the rest of the layer:

* :func:`steered_architecture` registers, through vLLM's documented out-of-tree model API
  (``ModelRegistry.register_model``), a subclass of the Target's vLLM model class under a new
  architecture name; the engine is built with ``hf_overrides={"architectures": [that name]}``, so no
  other vLLM model in the process changes. Its decoder layers become subclasses of their own class
  whose ``forward`` ends with :meth:`SteeringBank.steer` (parameter names and weight loading are
  untouched).
* :class:`SteeringBank` holds persistent buffers of fixed shape: per layer and slot the shift each
  steering set adds and whether it steers that layer, per slot the rule, and per row of the step's
  flattened batch its slot (-1: not steered) and its dose meter. The engine writes the per-row
  buffers before every model step (:mod:`unlock.lm_eval.vllm_steer`); the compiled graph reads them at
  run time and steers with :func:`unlock.method.steer_op.steer_rows_update` (plain ops, fused by
  Inductor), and adds each steered row's relative dose and count to per-layer, per-meter sums: the
  count is how the engine checks afterwards that every planned row was steered at every layer.
* ``additional_config`` carries :data:`CODE_KEY`, a hash of this module and the update, which enters
  vLLM's compile-cache key: a graph compiled before (without steering, or with older steering code)
  is never loaded for a steered engine.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import torch
from torch import nn

from unlock.method import steer_op
from unlock.method.blocks import decoder_layers
from unlock.method.steer import relative_change
from unlock.method.steer_op import steer_rows_update

PREFIX = "UnlockSteered_"
SETS = 16  # steering sets resident at once (one engine call may use at most this many)
METERS = 64  # dose meters (condition x task) one engine call may use


def _code_hash() -> str:
    digest = hashlib.sha256()
    for module in (inspect.getmodule(_code_hash), steer_op):
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


CODE_KEY = {"unlock_steering": {"code": _code_hash(), "sets": SETS, "meters": METERS}}


class SteeringBank(nn.Module):
    """The persistent buffers one compiled engine steers from (see the module docstring)."""

    def __init__(self, n_layers: int, width: int, max_rows: int, sets: int = SETS, meters: int = METERS) -> None:
        super().__init__()
        self.sets, self.meters, self.max_rows = sets, meters, max_rows
        f32 = {"dtype": torch.float32}
        self.register_buffer("shifts", torch.zeros(n_layers, sets, width, **f32), persistent=False)
        self.register_buffer("active", torch.zeros(n_layers, sets, dtype=torch.bool), persistent=False)
        self.register_buffer("rules", torch.zeros(sets, dtype=torch.int64), persistent=False)
        self.register_buffer("slots", torch.full((max_rows,), -1, dtype=torch.int64), persistent=False)
        # the last meter is the bin of rows that are not steered
        self.register_buffer("meter", torch.full((max_rows,), meters, dtype=torch.int64), persistent=False)
        # float64 and int64: one call's sums stay exact far beyond float32's 2**24 rows
        self.register_buffer("dose", torch.zeros(n_layers, meters + 1, dtype=torch.float64), persistent=False)
        self.register_buffer("count", torch.zeros(n_layers, meters + 1, dtype=torch.int64), persistent=False)

    def steer(self, layer: int, output: Any) -> Any:
        """A decoder layer's output with its planned rows steered. vLLM's layers return ``(hidden,
        residual)`` and the next layer's fused add+norm sums them: a steered row gets the steered
        stream in ``hidden`` and zero in ``residual`` (exact); a layer returning one tensor gets it there."""
        hidden, residual = output if isinstance(output, tuple) else (output, None)
        n = hidden.shape[0]
        stream = hidden if residual is None else (hidden.float() + residual.float()).to(hidden.dtype)
        slots = self.slots[:n]
        steered, on = steer_rows_update(stream, self.shifts[layer], slots, self.rules)
        on = on & self.active[layer].index_select(0, slots.clamp(min=0))
        meter = torch.where(on, self.meter[:n], self.meters)
        self.dose[layer].index_add_(0, meter, relative_change(stream, steered).double())
        self.count[layer].index_add_(0, meter, on.long())
        mask = on.unsqueeze(-1)
        if residual is None:
            return torch.where(mask, steered, hidden)
        return (torch.where(mask, steered, hidden), torch.where(mask, torch.zeros_like(residual), residual))


class _SteeredLayer:
    """Mixed in before a decoder layer's class: its forward, then the bank's steering."""

    unlock_bank: SteeringBank
    unlock_index: int

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.unlock_bank.steer(self.unlock_index, super().forward(*args, **kwargs))


_LAYER_CLASSES: dict[type, type] = {}


def _steered_layer_class(cls: type) -> type:
    if issubclass(cls, _SteeredLayer):
        return cls
    if cls not in _LAYER_CLASSES:
        _LAYER_CLASSES[cls] = type(f"{PREFIX}{cls.__name__}", (_SteeredLayer, cls), {})
    return _LAYER_CLASSES[cls]


def install_bank(model: nn.Module, vllm_config: Any) -> SteeringBank:
    """Give ``model``'s decoder layers the steering (before anything traces them)."""
    layers = decoder_layers(model)
    width = int(vllm_config.model_config.get_hidden_size())
    scheduler = vllm_config.scheduler_config
    max_rows = int(max(scheduler.max_num_batched_tokens, vllm_config.model_config.max_model_len))
    weight = next(model.parameters())
    bank = SteeringBank(len(layers), width, max_rows).to(weight.device)
    model.unlock_bank = bank
    for index, layer in enumerate(layers):
        layer.__class__ = _steered_layer_class(type(layer))
        layer.unlock_bank = bank
        layer.unlock_index = index
    return bank


def steered_architecture(architecture: str) -> str:
    """Register (once) and return the name of the steered subclass of vLLM's class for ``architecture``."""
    from vllm import ModelRegistry

    name = f"{PREFIX}{architecture}"
    if name in ModelRegistry.get_supported_archs():
        return name
    if architecture not in ModelRegistry.get_supported_archs():
        raise ValueError(
            f"vLLM has no model class for architecture {architecture!r}; steer this Target with the HF engine "
            "(eval.engine=hf)"
        )
    if architecture in _config_fixed_architectures():
        raise ValueError(
            f"vLLM adjusts its engine config for architecture {architecture!r} by name, which the steered "
            "subclass's name would skip; steer it with steering=hooks (eager) or the HF engine"
        )
    # The registry's table of architectures (an attribute of vLLM's ModelRegistry object, guarded by
    # tests/test_vllm.py): each entry imports its class on demand.
    base = ModelRegistry.models[architecture].load_model_cls()

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        install_bank(self, vllm_config)

    ModelRegistry.register_model(name, type(name, (base,), {"__init__": __init__}))
    return name


def _config_fixed_architectures() -> set[str]:
    """Architectures whose engine config vLLM adjusts by name (MODELS_CONFIG_MAP)."""
    try:
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    except ImportError:  # a later vLLM may move it; the steered engine's parity tests still guard the result
        return set()
    return set(MODELS_CONFIG_MAP)
