"""Logit lens of steering vectors: which Target tokens a vector promotes most when read out through
the model's final norm and unembedding, as if it were a residual-stream state. Do the mapped UNLOCK
vectors promote what the Target's own (native) direction promotes ("Step", "First", "Let")?
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unlock.method.blocks import model_device

TOP = 8
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last decoder block (``model.norm`` for Llama/Qwen/Gemma, ``ln_f`` for GPT-2)."""
    base = getattr(model, "base_model", model)
    for root in (base, getattr(base, "language_model", None)):
        for name in _FINAL_NORMS:
            module = getattr(root, name, None) if root is not None else None
            if isinstance(module, nn.Module):
                return module
    raise ValueError(f"cannot find the final norm of {type(model).__name__}: none of {list(_FINAL_NORMS)}")


@torch.no_grad()
def logit_lens(model: nn.Module, tokenizer, vectors: dict[int, torch.Tensor], top: int = TOP) -> dict[str, Any]:
    """Per layer, the ``top`` tokens of unembed(final_norm(r_j)); overall, those of the mean over
    layers of each layer's standardised logits (so no layer's scale dominates)."""
    layers = sorted(vectors)
    head = model.get_output_embeddings()  # type: ignore[operator]  # a transformers model's method
    stacked = torch.stack([vectors[j].float() for j in layers]).to(model_device(model), head.weight.dtype)
    logits = head(final_norm(model)(stacked[:, None, :]))[:, 0].float()
    standardised = (logits - logits.mean(dim=-1, keepdim=True)) / logits.std(dim=-1, keepdim=True).clamp_min(1e-12)

    def tokens(row: torch.Tensor) -> list[str]:
        return [tokenizer.decode([int(i)]) for i in row.topk(top).indices]

    return {
        "per_layer": {str(j): tokens(logits[i]) for i, j in enumerate(layers)},
        "overall": tokens(standardised.mean(dim=0)),
    }


def lens_table(lenses: dict[str, dict[str, Any]]) -> str:
    """A markdown table: each condition's overall top tokens."""
    lines = ["| vectors | tokens promoted most (logit lens, all layers) |", "|---|---|"]
    for name, lens in lenses.items():
        lines.append(f"| {name} | {', '.join(repr(t) for t in lens['overall'])} |")
    return "\n".join(lines) + "\n"
