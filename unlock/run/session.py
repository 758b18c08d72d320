"""What one run shares: its settings, the stage cache with each stage's file format, the model pool
(one model in memory at a time), and the cached captures and steering sets the method needs."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlock.analysis.lens import TOP, logit_lens
from unlock.lm_eval.prompts import PromptSets, build_prompt_sets
from unlock.method.capture import Activations, capture_activations
from unlock.method.pipeline import (
    Alignment,
    Cached,
    Transfer,
    extract,
)
from unlock.models.loading import (
    LoadedModel,
    ModelSpec,
    load_model,
    model_identity,
)
from unlock.run.plan import Plan
from unlock.run.settings import RunSettings
from unlock.store.artifacts import (
    load_activations,
    load_directions,
    load_maps,
    load_steering_vectors,
    save_activations,
    save_directions,
    save_maps,
    save_steering_vectors,
)
from unlock.store.cache import StageCache, fingerprint, load_json, save_json


class ModelPool:
    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._loaded: dict[str, LoadedModel] = {}
        self.load_seconds: dict[str, float] = {}

    def get(self, spec: ModelSpec) -> LoadedModel:
        key = fingerprint(model_identity(spec))
        if key not in self._loaded:
            self.release_all()
            loaded = load_model(spec, self.cache_dir)
            self._loaded[key] = loaded
            self.load_seconds[spec.name] = self.load_seconds.get(spec.name, 0.0) + loaded.load_seconds
        return self._loaded[key]

    def release_all(self) -> None:
        self._loaded.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load_alignment(path: Path) -> tuple[Alignment, dict[str, Any] | None]:
    maps, pairs, meta = load_maps(path)
    quality = {int(k): v["quality"] for k, v in meta["layers"].items()}
    return Alignment(pairs=pairs, maps=maps, quality=quality), _provenance(meta)


def _provenance(meta: dict[str, Any]) -> dict[str, Any] | None:
    return meta.get("cache")


def _carrying(loader: Callable[[Path], tuple[Any, dict[str, Any]]]) -> Callable[[Path], tuple[Any, dict | None]]:
    """A (value, metadata) loader as a (value, envelope) one."""

    def load(path: Path) -> tuple[Any, dict | None]:
        value, meta = loader(path)
        return value, _provenance(meta)

    return load


# stage -> (suffix, save(path, value, envelope), load(path) -> (value, envelope)); unlock.store.cache checks
# the envelope (stage, key, full spec) against the one asked for before a value is used.
CODECS: dict[str, tuple[str, Callable[[Path, Any, dict], None], Callable[[Path], tuple[Any, dict | None]]]] = {
    "capture": (
        ".safetensors",
        lambda path, acts, env: save_activations(
            path, acts, {"cache": env}, storage=env["spec"].get("storage", "float32")
        ),
        _carrying(load_activations),
    ),
    "extract": (
        ".safetensors",
        lambda path, d, env: save_directions(path, d, {"cache": env}),
        _carrying(load_directions),
    ),
    "align": (
        ".safetensors",
        lambda path, a, env: save_maps(path, a.maps, a.pairs, a.quality, {"cache": env}),
        _load_alignment,
    ),
    "vectors": (
        ".safetensors",
        lambda path, v, env: save_steering_vectors(path, v, {"cache": env}),
        _carrying(load_steering_vectors),
    ),
    "lens": (".json", save_json, load_json),
}


class Session:
    """What one run shares: its settings, the stage cache, the model pool, and the cached pipeline step."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.cache = StageCache(settings.cache_dir)
        self.models = ModelPool(settings.cache_dir)

    def step(
        self, stage: str, spec: dict[str, Any], compute: Callable[[], Any], inputs: Sequence[Cached[Any]]
    ) -> Cached[Any]:
        """A :class:`unlock.method.pipeline.Step`: the key covers the step's settings and its inputs' keys."""
        if any(c.key is None for c in inputs):
            raise ValueError(
                f"{stage}: an input has no cache key; cached steps take inputs from cached steps "
                "(Session.capture), not raw activations"
            )
        full = {**spec, "inputs": [c.key for c in inputs]} if inputs else dict(spec)
        suffix, save, load = CODECS[stage]

        def computed() -> tuple[Any, int]:
            value = compute()
            return value, int(getattr(value, "n_forward_passes", 0))

        value, key = self.cache.get_or_compute(stage, full, suffix, computed, save=save, load=load)
        return Cached(value, key)

    def capture(self, model: ModelSpec, prompts: list[str], label: str) -> Cached[Activations]:
        how, storage = self.settings.capture, self.settings.prompts.activation_storage
        spec = {
            "model": model_identity(model),
            "prompts": fingerprint(prompts, 32),
            "n": len(prompts),
            "position": how.position,
            "padding_side": how.padding_side,
            "max_length": how.max_length,
            "layers": "all",
        }
        if storage != "float32":  # float32 storage keeps the keys it always had
            spec["storage"] = storage

        def compute() -> Activations:
            loaded = self.models.get(model)
            return capture_activations(
                loaded.model,
                loaded.tokenizer,
                prompts,
                position=how.position,
                batch_size=how.batch_size,
                padding_side=how.padding_side,
                max_length=how.max_length,
                progress=f"capture {label}" if self.settings.progress else False,
            )

        return self.step("capture", spec, compute, ())

    def lens(self, vectors: Cached[dict[int, torch.Tensor]]) -> dict[str, Any]:
        """The logit lens of a steering set through the Target's final norm and unembedding (cached)."""

        def compute() -> dict[str, Any]:
            loaded = self.models.get(self.settings.models.target)
            return logit_lens(loaded.model, loaded.tokenizer, vectors.value, TOP)

        return self.step(
            "lens", {"model": model_identity(self.settings.models.target), "top": TOP}, compute, (vectors,)
        ).value


@dataclass
class Captures:
    source_locked: Cached[Activations]
    source_unlocked: Cached[Activations]
    target_locked: Cached[Activations]
    held_out: tuple[Cached[Activations], Cached[Activations]] | None  # (Source, Target) Locked, other prompts
    target_unlocked: Cached[Activations] | None  # for the native direction


def capture_all(session: Session, prompts: PromptSets) -> Captures:
    """Every capture the run needs, Source work first, then Target work (one model in memory at a time)."""
    settings = session.settings
    models, checkpoint = settings.models, settings.prompts.contrast == "checkpoint"
    source, target = models.source, models.target
    held = prompts.heldout_locked
    source_locked = session.capture(source, prompts.locked, "source locked")
    source_held = session.capture(source, held, "source held-out") if held else None
    source_unlocked = (
        session.capture(models.unlocked, prompts.locked, "source unlocked (checkpoint)")
        if checkpoint and models.unlocked is not None  # validate() requires it for a checkpoint contrast
        else session.capture(source, prompts.unlocked, "source unlocked")
    )
    target_locked = session.capture(target, prompts.locked, "target locked")
    target_held = session.capture(target, held, "target held-out") if held else None
    native = native_source(settings, prompts)
    return Captures(
        source_locked,
        source_unlocked,
        target_locked,
        (source_held, target_held) if source_held and target_held else None,
        session.capture(native[0], native[1], "target unlocked") if native else None,
    )


def native_source(settings: RunSettings, prompts: PromptSets) -> tuple[ModelSpec, list[str]] | None:
    """Whose Unlocked activations give the Target's own direction: the Target with the capability
    prompt, or (checkpoint contrast) its post-trained reference model; None when not evaluated."""
    models = settings.models
    if "native" not in settings.evaluation.conditions:
        return None
    if settings.prompts.contrast != "checkpoint":
        return models.target, prompts.unlocked
    return (models.reference, prompts.locked) if models.reference is not None else None


def steering_sets(session: Session, result: Transfer, captures: Captures, plan: Plan) -> dict[str, Cached[dict]]:
    """The vectors each steered condition adds (conditions.CONDITIONS names them): UNLOCK's own, a
    random direction of the same norm per layer, UNLOCK's own negated, and the Target's own direction."""
    settings = session.settings
    conditions, seed = settings.evaluation.conditions, settings.seed
    sets: dict[str, Cached[dict]] = {"unlock": result.vectors}
    if "random" in conditions:
        sets["random"] = session.step(
            "vectors",
            {"name": "random", "seed": seed},
            lambda: random_like(result.vectors.value, seed),
            (result.vectors,),
        )
    if "reversed" in conditions:
        sets["reversed"] = session.step(
            "vectors", {"name": "reversed"}, lambda: {j: -v for j, v in result.vectors.value.items()}, (result.vectors,)
        )
    if captures.target_unlocked is not None:
        native = extract(captures.target_unlocked, captures.target_locked, settings.map.aggregation, session.step)
        layers = sorted(plan.pairs)
        sets["native"] = session.step(
            "vectors",
            {"name": "native", "layers": layers},
            lambda: {j: native.value.vectors[j] for j in layers},
            (native,),
        )
    return sets


def random_like(vectors: dict[int, torch.Tensor], seed: int) -> dict[int, torch.Tensor]:
    """A random direction per layer with the norm of the given vector (the control condition)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in sorted(vectors):
        noise = torch.randn(vectors[layer].shape, generator=gen)
        out[layer] = noise / noise.norm() * vectors[layer].norm()
    return out


def prompt_sets(settings: RunSettings) -> PromptSets:
    cap = settings.prompts
    return build_prompt_sets(
        cap.locked_task,
        cap.unlocked_task,
        cap.split,
        cap.n_prompts,
        cap.n_heldout,
        cap.seed,
        settings.tasks_dir,
        n_shots=cap.n_shots,
    )
