"""Find the decoder blocks of a Hugging Face causal LM without knowing its family.

Everything in UNLOCK (capture, steering) hooks the decoder blocks, so this is the one place that
knows where each architecture keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelShape:
    """Depth (decoder blocks) and width (residual stream) of a model."""

    n_layers: int
    hidden_size: int


# Attribute paths to the decoder-block ModuleList, most common first.
_DECODER_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/Qwen3, Gemma/Gemma2/Gemma3, Mistral, OLMo-2
    "model.language_model.layers",  # multimodal wrappers (Gemma3ForConditionalGeneration)
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "layers",  # a bare base model
)


def _get_attr_path(root: nn.Module, path: str) -> nn.Module | None:
    module: object = root
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the ModuleList of decoder blocks; block L's output is "layer L" everywhere in UNLOCK."""
    for path in _DECODER_LAYER_PATHS:
        module = _get_attr_path(model, path)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    # Fallback: the longest ModuleList whose length matches the config's depth.
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if depth is not None:
        candidates = [m for m in candidates if len(m) == depth]
    if not candidates:
        raise ValueError(
            f"cannot find the decoder blocks of {type(model).__name__}: none of "
            f"{list(_DECODER_LAYER_PATHS)} is a non-empty ModuleList"
        )
    return max(candidates, key=len)


def block_path_under_base_model(model: nn.Module) -> str:
    """Where the decoder blocks sit under ``model.base_model`` (``layers`` for Llama/Gemma/Qwen, ``h``
    for GPT-2, ``language_model.layers`` for Gemma-3 multimodal): lm-eval's ``steered`` model names
    its hookpoints relative to ``base_model``, so an exported vector for block j is "<path>.j"."""
    blocks = decoder_layers(model)
    base = getattr(model, "base_model", model)
    for name, module in base.named_modules():
        if module is blocks:
            return name
    raise ValueError(
        f"the decoder blocks of {type(model).__name__} are not under its base_model "
        f"({type(base).__name__}); lm-eval's steered model cannot hook them"
    )


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    config = model.config
    text_config = getattr(config, "text_config", None) or config
    for attr in ("hidden_size", "n_embd", "d_model"):
        if getattr(text_config, attr, None):
            return int(getattr(text_config, attr))
    raise ValueError(f"cannot read the hidden size from {type(config).__name__}")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_layers(layers: list[int] | tuple[int, ...], n_layers: int, what: str = "layer") -> list[int]:
    """Validate layer indices against a model depth; negative indices count from the end."""
    resolved = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{what} {layer!r} must be an int in [0, {n_layers - 1}]")
        idx = layer + n_layers if layer < 0 else layer
        if not 0 <= idx < n_layers:
            raise ValueError(
                f"{what} {layer} is out of range: the model has {n_layers} decoder layers, "
                f"allowed range is [0, {n_layers - 1}] (or [-{n_layers}, -1] from the end)"
            )
        resolved.append(idx)
    if not resolved:
        raise ValueError(f"no {what}s given: pass at least one index in [0, {n_layers - 1}]")
    return sorted(set(resolved))
