"""The memory plan of a run, from model configs alone (no weights): what `dry_run=true` prints.

The harness holds one model at a time (Source captures, then Target captures, then evaluation;
ModelPool frees each model before loading the next), so the device must fit the largest model plus
its generation KV cache, not the pair. Activations go to disk, in bfloat16 where
``capability.activation_storage=bfloat16`` (the paper presets do so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unlock.models.loading import ModelSpec, Spec, model_source

GB = 1024**3
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
PROMPT_TOKENS_GUESS = 512  # a long zero-shot math prompt; generation adds eval.max_new_tokens


@dataclass
class ModelFootprint:
    role: str
    name: str
    n_params: int
    weights_gb: float
    kv_cache_gb: float  # 0 for models that are only captured, not evaluated
    context_ok: bool  # a long prompt plus eval.max_new_tokens fits the model's context


def model_size(spec: Spec) -> tuple[int, int, int, int | None]:
    """(parameters, per-layer KV width = kv heads x head dim, layers, context length) from the config
    only (the model source builds it on the meta device; packaged models read their pinned table)."""
    size = model_source(spec).size()
    return size.n_params, size.kv_dim, size.n_layers, size.context


def footprint(role: str, spec: ModelSpec, evaluated: bool, batch_size: int, max_new_tokens: int) -> ModelFootprint:
    """One model's weights, and its generation KV cache if it is evaluated (``batch_size`` prompts of
    a long prompt plus ``max_new_tokens``)."""
    n_params, kv_dim, layers, context = model_size(spec)
    bytes_per = _BYTES.get(spec.dtype, 2)
    tokens = batch_size * (PROMPT_TOKENS_GUESS + max_new_tokens)
    kv = 2 * layers * kv_dim * tokens * bytes_per / GB if evaluated else 0.0
    context_ok = not evaluated or context is None or PROMPT_TOKENS_GUESS + max_new_tokens <= context
    return ModelFootprint(role, spec.name, n_params, n_params * bytes_per / GB, kv, context_ok)


def memory_plan(
    footprints: list[ModelFootprint], activations_disk_gb: float, capacity_gb: float, capacity_of: str
) -> dict[str, Any]:
    """The peak one job needs (the largest model and its KV cache, one at a time), the activation cache
    on disk, and whether the peak fits the capacity the setup asks for."""
    peak = max(f.weights_gb + f.kv_cache_gb for f in footprints) * 1.2  # + framework and temporaries
    return {
        "models": [vars(f) for f in footprints],
        "peak_gb": peak,
        "capacity_gb": capacity_gb,
        "capacity_of": capacity_of,
        "fits": peak <= capacity_gb,
        "context_ok": all(f.context_ok for f in footprints),
        "activations_disk_gb": activations_disk_gb,
    }


def format_memory_plan(memory: dict[str, Any]) -> list[str]:
    lines = ["memory plan (one model in memory at a time; estimates from configs):"]
    for model in memory["models"]:
        kv = f" + KV cache {model['kv_cache_gb']:.1f} GB" if model["kv_cache_gb"] else ""
        lines.append(
            f"  {model['role']:<16} {model['name']}: {model['n_params'] / 1e9:.2f} B params, "
            f"weights {model['weights_gb']:.1f} GB{kv}"
        )
    verdict = "fits" if memory["fits"] else "DOES NOT FIT: raise resources or lower eval.batch_size"
    lines.append(
        f"  peak ~{memory['peak_gb']:.1f} GB of {memory['capacity_gb']} GB ({memory['capacity_of']}): {verdict}"
    )
    lines.append(f"  activation cache on disk ~{memory['activations_disk_gb']:.2f} GB")
    for model in memory["models"]:
        if not model["context_ok"]:
            lines.append(
                f"  WARNING {model['name']}: a {PROMPT_TOKENS_GUESS}-token prompt plus eval.max_new_tokens "
                "exceeds its context length; lower eval.max_new_tokens"
            )
    return lines
