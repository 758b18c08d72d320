"""The memory plan of a run, from model configs alone (no weights): what `dry_run=true` prints.

The harness holds one model at a time (Source captures, then Target captures, then evaluation;
ModelPool frees each model before loading the next), so the device must fit the largest model plus
its generation KV cache, not the pair. Activations go to disk, in bfloat16 where
``capability.activation_storage=bfloat16`` (the paper presets do so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unlock.models.loading import model_source

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


def model_size(model_cfg: Any) -> tuple[int, int, int, int | None]:
    """(parameters, per-layer KV width = kv heads x head dim, layers, context length) from the config
    only (the model source builds it on the meta device; packaged models read their pinned table)."""
    size = model_source(model_cfg).size()
    return size.n_params, size.kv_dim, size.n_layers, size.context


def memory_plan(cfg: Any, plan: Any) -> dict[str, Any]:
    """Per-model weights and KV cache, the peak one job needs, the activation cache on disk, and
    whether the peak fits the resources the setup asks for."""
    ev, cap = cfg.eval, cfg.capability
    roles = [("source", cfg.source_model, False), ("target", cfg.target_model, True)]
    if cap.contrast == "checkpoint":
        roles.append(("source unlocked", cap.unlocked_model, False))
    if "reference" in ev.conditions or (cap.contrast == "checkpoint" and "native" in ev.conditions):
        if ev.reference_model is not None:
            roles.append(("reference", ev.reference_model, "reference" in ev.conditions))
    footprints = []
    for role, model_cfg, evaluated in roles:
        n_params, kv_dim, layers, context = model_size(model_cfg)
        bytes_per = _BYTES.get(model_cfg.dtype, 2)
        tokens = ev.batch_size * (PROMPT_TOKENS_GUESS + ev.max_new_tokens)
        kv = 2 * layers * kv_dim * tokens * bytes_per / GB if evaluated else 0.0
        context_ok = not evaluated or context is None or PROMPT_TOKENS_GUESS + ev.max_new_tokens <= context
        footprints.append(ModelFootprint(role, model_cfg.name, n_params, n_params * bytes_per / GB, kv, context_ok))
    peak = max(f.weights_gb + f.kv_cache_gb for f in footprints) * 1.2  # + framework and temporaries
    # Captures: Source Locked, held-out, Unlocked; Target Locked, held-out (and Unlocked for native).
    rows = cap.n_prompts * 2 + cap.n_heldout
    storage = 2 if cap.activation_storage == "bfloat16" else 4
    disk = (
        rows * plan.source_layers * plan.source_width
        + (rows if "native" in ev.conditions else cap.n_prompts + cap.n_heldout)
        * plan.target_layers
        * plan.target_width
    )
    on_gpu = any(str(model_cfg.device).startswith("cuda") for _, model_cfg, _ in roles)
    res = cfg.resources
    capacity = res.gpus_per_node * res.gpu_mem_gb if on_gpu else res.mem_gb
    return {
        "models": [vars(f) for f in footprints],
        "peak_gb": peak,
        "capacity_gb": capacity,
        "capacity_of": f"{res.gpus_per_node} x {res.gpu_mem_gb} GB GPU" if on_gpu else f"{res.mem_gb} GB host memory",
        "fits": peak <= capacity,
        "context_ok": all(f.context_ok for f in footprints),
        "activations_disk_gb": disk * storage / GB,
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
