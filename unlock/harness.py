"""One UNLOCK run, stage by stage: plan -> capture -> extract -> align -> steer + evaluate -> record.

Every stage goes through the StageCache, so re-running, or sweeping alpha or rank, recomputes only
what the changed setting determines. Models are loaded lazily and one at a time (Source work first,
then Target work), and never at all when every stage is a cache hit.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unlock.align import pair_layers
from unlock.artifacts import (
    atomic_write_json,
    environment,
    load_activations,
    load_directions,
    load_maps,
    load_steering_vectors,
    save_activations,
    save_directions,
    save_maps,
    save_steering_vectors,
)
from unlock.cache import StageCache
from unlock.capture import Activations, capture_activations
from unlock.config import validate
from unlock.extract import Directions, extract_directions
from unlock.loading import LoadedModel, fingerprint, load_model, model_identity, model_skeleton, read_shape
from unlock.models import block_path_under_base_model
from unlock.pipeline import fit_maps, map_directions
from unlock.prompts import PromptSets, build_prompt_sets


# --------------------------------------------------------------------------------------------------
# Plan: everything that can be checked from configs alone, before any weights are loaded.
# --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    source_layers: int
    source_width: int
    target_layers: int
    target_width: int
    pairs: dict[int, int]  # Target layer -> Source layer
    rank_effective: int


def target_layer_selection(layer_cfg: Any, n_target: int) -> list[int] | None:
    if layer_cfg.mode == "all":
        return None
    if layer_cfg.mode == "single" and layer_cfg.depth is not None:
        return [math.floor(layer_cfg.depth * (n_target - 1) + 0.5)]  # round half up, not to even
    return [int(i) for i in layer_cfg.indices]


def make_plan(cfg: DictConfig) -> Plan:
    validate(cfg)
    source = read_shape(cfg.source_model)
    target = read_shape(cfg.target_model)
    unlocked = cfg.capability.unlocked_model
    if cfg.capability.contrast == "checkpoint":
        other = read_shape(unlocked)
        if (other.n_layers, other.hidden_size) != (source.n_layers, source.hidden_size):
            raise ValueError(
                f"capability.unlocked_model has {other.n_layers} layers x {other.hidden_size} wide, but the Source "
                f"has {source.n_layers} x {source.hidden_size}; a checkpoint contrast needs one architecture"
            )
    explicit = OmegaConf.to_container(cfg.layer.explicit_pairs) if cfg.layer.explicit_pairs else None
    pairs = pair_layers(
        source.n_layers, target.n_layers, target_layers=target_layer_selection(cfg.layer, target.n_layers),
        explicit=explicit,
    )
    width_limit = min(source.hidden_size, target.hidden_size)
    if cfg.rank.value > width_limit:
        raise ValueError(
            f"rank.value {cfg.rank.value} is out of range for these models: must be <= min(d_s, d_t) = "
            f"min({source.hidden_size}, {target.hidden_size}) = {width_limit}"
        )
    return Plan(
        source_layers=source.n_layers, source_width=source.hidden_size,
        target_layers=target.n_layers, target_width=target.hidden_size, pairs=pairs,
        rank_effective=min(cfg.rank.value, cfg.capability.n_prompts, width_limit),
    )


# --------------------------------------------------------------------------------------------------
# Models, loaded on first use and released when the run moves on (one in memory at a time).
# --------------------------------------------------------------------------------------------------
class ModelPool:
    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._loaded: dict[str, LoadedModel] = {}
        self.load_seconds: dict[str, float] = {}

    def get(self, model_cfg: Any) -> LoadedModel:
        key = fingerprint(model_identity(model_cfg))
        if key not in self._loaded:
            self.release_all()
            loaded = load_model(model_cfg, self.cache_dir)
            self._loaded[key] = loaded
            self.load_seconds[model_cfg.name] = self.load_seconds.get(model_cfg.name, 0.0) + loaded.load_seconds
        return self._loaded[key]

    def release_all(self) -> None:
        self._loaded.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------
class Stages:
    """The cached stages of one run; each method returns its artifact and the key it is stored under."""

    def __init__(self, cfg: DictConfig, cache: StageCache, models: ModelPool) -> None:
        self.cfg, self.cache, self.models = cfg, cache, models
        self.progress = bool(cfg.progress)

    def capture(self, model_cfg: Any, prompts: list[str], label: str) -> tuple[Activations, str]:
        cap = self.cfg.capability
        spec = {
            "model": model_identity(model_cfg),
            "prompts": fingerprint(prompts, 32),
            "n": len(prompts),
            "position": cap.position,
            "padding_side": "left",
            "max_length": cap.max_length,
            "layers": "all",
        }
        half = cap.activation_storage == "float16"
        if half:  # float32 storage keeps the keys it always had
            spec["storage"] = cap.activation_storage

        def compute() -> tuple[Activations, int]:
            loaded = self.models.get(model_cfg)
            acts = capture_activations(
                loaded.model, loaded.tokenizer, prompts, position=cap.position, batch_size=cap.batch_size,
                max_length=cap.max_length, progress=f"capture {label}" if self.progress else False,
            )
            return acts, acts.n_forward_passes

        return self.cache.get_or_compute(
            "capture", spec, ".safetensors", compute,
            save=lambda path, acts: save_activations(path, acts, {"model": model_cfg.name, "label": label}, half=half),
            load=lambda path: load_activations(path)[0],
        )

    def extract(self, unlocked: tuple[Activations, str], locked: tuple[Activations, str], label: str) -> tuple[Directions, str]:
        aggregation = self.cfg.capability.aggregation
        spec = {"unlocked": unlocked[1], "locked": locked[1], "aggregation": aggregation}
        return self.cache.get_or_compute(
            "extract", spec, ".safetensors",
            compute=lambda: (extract_directions(unlocked[0], locked[0], aggregation), 0),
            save=lambda path, d: save_directions(path, d, {"label": label, "position": self.cfg.capability.position}),
            load=lambda path: load_directions(path)[0],
        )

    def align(self, source_locked, target_locked, heldout, pairs: dict[int, int]):
        rank = self.cfg.rank
        centre = self.cfg.capability.aggregation == "pca"
        spec = {
            "source_locked": source_locked[1], "target_locked": target_locked[1],
            "heldout": [h[1] for h in heldout] if heldout else None,
            "pairs": {str(k): v for k, v in pairs.items()},
            "rank": rank.value, "method": rank.method, "ridge": rank.ridge if rank.method == "ridge" else None,
            "centre": centre,
        }

        def compute():
            held = (heldout[0][0], heldout[1][0]) if heldout else None
            maps, quality = fit_maps(
                source_locked[0], target_locked[0], pairs, rank.value, rank.method, centre, rank.ridge, held,
                progress=self.progress,
            )
            return (maps, pairs, quality), 0

        def save(path, value):
            maps, pairs_, quality = value
            save_maps(path, maps, pairs_, quality, {"source": self.cfg.source_model.name,
                                                     "target": self.cfg.target_model.name})

        def load(path):
            maps, pairs_, meta = load_maps(path)
            return maps, pairs_, {int(k): v["quality"] for k, v in meta["layers"].items()}

        return self.cache.get_or_compute("align", spec, ".safetensors", compute, save, load)

    def vectors(self, name: str, spec: dict[str, Any], make) -> tuple[dict[int, torch.Tensor], str]:
        return self.cache.get_or_compute(
            "vectors", {"name": name, **spec}, ".safetensors", compute=lambda: (make(), 0),
            save=lambda path, v: save_steering_vectors(path, v, {"condition": name, **spec}),
            load=lambda path: load_steering_vectors(path)[0],
        )


def random_like(vectors: dict[int, torch.Tensor], seed: int) -> dict[int, torch.Tensor]:
    """A random direction per layer with the norm of the given vector (the control condition)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in sorted(vectors):
        noise = torch.randn(vectors[layer].shape, generator=gen)
        out[layer] = noise / noise.norm() * vectors[layer].norm()
    return out


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def run(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run one composed config end to end and return its results record (launch.py writes it)."""
    from unlock.evaluate import evaluate_conditions

    output_dir = Path(output_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    plan = make_plan(cfg)
    if cfg.dry_run:
        from unlock.memory import memory_plan

        record = {"status": "dry_run", "plan": asdict(plan), "memory": memory_plan(cfg, plan)}
        print_plan(cfg, plan, record["memory"])
        return record

    cap = cfg.capability
    tick = time.perf_counter()
    prompts: PromptSets = build_prompt_sets(
        cap.locked_task, cap.unlocked_task, cap.prompt_split, cap.n_prompts, cap.n_heldout, cap.seed,
        cfg.paths.tasks_dir,
    )
    timings["prompts"] = time.perf_counter() - tick
    cache = StageCache(cfg.paths.cache_dir)
    models = ModelPool(cfg.paths.cache_dir)
    stages = Stages(cfg, cache, models)
    source, target = cfg.source_model, cfg.target_model
    checkpoint = cap.contrast == "checkpoint"

    # 1. Capture: Source work first, then Target work, so one model is in memory at a time.
    tick = time.perf_counter()
    source_locked = stages.capture(source, prompts.locked, "source locked")
    source_held = stages.capture(source, prompts.heldout_locked, "source held-out") if prompts.heldout_locked else None
    source_unlocked = (
        stages.capture(cap.unlocked_model, prompts.locked, "source unlocked (checkpoint)")
        if checkpoint else stages.capture(source, prompts.unlocked, "source unlocked")
    )
    target_locked = stages.capture(target, prompts.locked, "target locked")
    target_held = stages.capture(target, prompts.heldout_locked, "target held-out") if prompts.heldout_locked else None
    native_source = None
    if "native" in cfg.eval.conditions:
        if not checkpoint:
            native_source = (target, prompts.unlocked)
        elif cfg.eval.reference_model is not None:
            native_source = (cfg.eval.reference_model, prompts.locked)
    target_unlocked = stages.capture(native_source[0], native_source[1], "target unlocked") if native_source else None
    timings["capture"] = time.perf_counter() - tick

    # 2. Extract the Source direction (and the Target's own, for the native reference).
    tick = time.perf_counter()
    directions = stages.extract(source_unlocked, source_locked, "source")
    native = stages.extract(target_unlocked, target_locked, "target native") if target_unlocked else None
    timings["extract"] = time.perf_counter() - tick

    # 3. Align each (Target layer, Source layer) pair and carry the direction over.
    tick = time.perf_counter()
    heldout = (source_held, target_held) if source_held else None
    (maps, pairs, quality), align_key = stages.align(source_locked, target_locked, heldout, plan.pairs)
    unlock_vectors, unlock_key = stages.vectors(
        "unlock", {"directions": directions[1], "maps": align_key},
        lambda: map_directions(directions[0], maps, pairs),
    )
    steering_sets: dict[str, tuple[dict[int, torch.Tensor], str]] = {"unlock": (unlock_vectors, unlock_key)}
    if "random" in cfg.eval.conditions:
        steering_sets["random"] = stages.vectors(
            "random", {"like": unlock_key, "seed": cfg.seed}, lambda: random_like(unlock_vectors, cfg.seed)
        )
    if native is not None:
        steering_sets["native"] = stages.vectors(
            "native", {"directions": native[1], "layers": sorted(pairs)},
            lambda: {j: native[0].vectors[j] for j in sorted(pairs)},
        )
    timings["align"] = time.perf_counter() - tick

    # 4. Steer and evaluate every condition side by side.
    tick = time.perf_counter()
    conditions = evaluate_conditions(cfg, stages, models, steering_sets, output_dir)
    timings["evaluate"] = time.perf_counter() - tick
    models.release_all()
    timings["total"] = time.perf_counter() - started

    record = {
        "status": "ok",
        "source": source.name,
        "target": target.name,
        "capability": cap.name,
        "settings": settings_summary(cfg, plan),
        "plan": {**asdict(plan), "pairs": {str(j): l for j, l in plan.pairs.items()}},
        "fit_quality": {str(k): v for k, v in quality.items()},
        "fit_quality_mean": mean_quality(quality),
        "vector_norms": {str(k): float(v.norm()) for k, v in unlock_vectors.items()},
        "conditions": conditions,
        "stages": cache.summary(),
        "model_load_seconds": models.load_seconds,
        "timings": timings,
        "artifacts": {"steering_vectors": str(cache.path("vectors", unlock_key, ".safetensors"))},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    block_path = block_path_under_base_model(model_skeleton(target, cfg.paths.cache_dir))
    export_steering(output_dir, unlock_vectors, cfg, block_path)
    return record


def settings_summary(cfg: DictConfig, plan: Plan) -> dict[str, Any]:
    return {
        "benchmark": cfg.benchmark.name,
        "n_prompts": cfg.capability.n_prompts, "aggregation": cfg.capability.aggregation,
        "rank": cfg.rank.value, "rank_effective": plan.rank_effective, "method": cfg.rank.method,
        "alpha": cfg.alpha.value, "rule": cfg.alpha.rule, "positions": cfg.alpha.positions,
        "layer_mode": cfg.layer.mode, "n_steered_layers": len(plan.pairs), "split": cfg.eval.split,
        "layers": ",".join(str(j) for j in sorted(plan.pairs)),
    }


def mean_quality(quality: dict[int, dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for q in quality.values() for k in q if k not in ("n", "train_n")})
    return {k: float(sum(q[k] for q in quality.values()) / len(quality)) for k in keys if quality}


def export_steering(output_dir: Path, vectors: dict[int, torch.Tensor], cfg: DictConfig, block_path: str) -> None:
    """The UNLOCK vectors in this package's format and in lm-eval's own ``steered`` format."""
    from unlock.artifacts import atomic_path

    save_steering_vectors(output_dir / "steering_vectors.safetensors", vectors, {"alpha": cfg.alpha.value})
    # lm-eval's SteeredModel adds steering_coefficient * vector at every position of the modules it
    # names under model.base_model: "<block_path>.{j}" is the Target's decoder block j. That class has
    # no norm-preserving or last-token rule, so it reproduces UNLOCK only approximately; the `unlock`
    # model class reproduces it exactly.
    steered = {
        f"{block_path}.{layer}": {"steering_vector": vector.clone(), "steering_coefficient": float(cfg.alpha.value),
                                  "action": "add", "bias": None, "head_index": None}
        for layer, vector in vectors.items()
    }
    with atomic_path(output_dir / "lm_eval_steered.pt") as tmp:
        torch.save(steered, tmp)


def failure_record(cfg: DictConfig, error: BaseException) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(),
        "config": OmegaConf.to_container(cfg, resolve=False),
    }


def print_plan(cfg: DictConfig, plan: Plan, memory: dict[str, Any]) -> None:
    """What a run would do, checked against the model configs: the dry-run output."""
    from unlock.memory import format_memory_plan

    cap, ev = cfg.capability, cfg.eval
    lines = [
        f"Source {cfg.source_model.name}: {plan.source_layers} layers x {plan.source_width}",
        f"Target {cfg.target_model.name}: {plan.target_layers} layers x {plan.target_width}",
        f"contrast {cap.contrast}: Locked {cap.locked_task} vs Unlocked "
        f"{cap.unlocked_model.name if cap.contrast == 'checkpoint' else cap.unlocked_task}, "
        f"N {cap.n_prompts} ({cap.prompt_split} split), {cap.aggregation}",
        f"rank {cfg.rank.value} (effective {plan.rank_effective}, {cfg.rank.method}), alpha {cfg.alpha.value} "
        f"({cfg.alpha.rule}, {cfg.alpha.positions})",
        "pairs (target <- source): " + ", ".join(f"{j}<-{l}" for j, l in plan.pairs.items()),
        f"evaluate {list(ev.tasks)} ({ev.split} split, limit {ev.limit}, {ev.max_new_tokens} new tokens, "
        f"batch {ev.batch_size}): {', '.join(ev.conditions)}",
        *format_memory_plan(memory),
    ]
    if cfg.benchmark.needs_network:
        lines.append(f"benchmark {cfg.benchmark.name} loads its data from the dataset hub (needs network)")
    if cfg.paper.setup:
        lines.append(f"paper {cfg.paper.setup} / {cfg.benchmark.name}: {dict(cfg.paper.numbers)}")
    print("\n".join(lines))


def write_record(output_dir: Path, record: dict[str, Any]) -> Path:
    """results.json, atomically, with the environment that made it (added to ``record`` in place, so
    W&B logs the same)."""
    record.setdefault("environment", environment())
    path = Path(output_dir) / "results.json"
    atomic_write_json(path, record)
    return path
