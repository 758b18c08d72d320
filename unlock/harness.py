"""One UNLOCK run, stage by stage: plan -> capture -> extract -> align -> steer + evaluate -> record.

Every stage goes through the StageCache, so re-running, or sweeping alpha or rank, recomputes only
what the changed setting determines. Models are loaded lazily and one at a time (Source work first,
then Target work), and never at all when every stage is a cache hit.
"""

from __future__ import annotations

import gc
import json
import math
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unlock.align import pair_layers
from unlock.artifacts import (
    atomic_create_bytes,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    environment,
    json_bytes,
    load_activations,
    load_directions,
    load_maps,
    load_steering_vectors,
    save_activations,
    save_directions,
    save_maps,
    save_steering_vectors,
)
from unlock.cache import StageCache, fingerprint, load_json, save_json
from unlock.capture import Activations, capture_activations
from unlock.config import explicit_pairs, stats_settings, validate
from unlock.evaluate import evaluate_conditions
from unlock.fidelity import summarise as summarise_fidelity
from unlock.fidelity import transfer_fidelity
from unlock.lens import TOP, lens_table, logit_lens
from unlock.loading import LoadedModel, load_model, model_identity, model_skeleton, read_shape
from unlock.memory import format_memory_plan, memory_plan
from unlock.models import block_path_under_base_model
from unlock.paired import baselines, comparisons, items_needed, power_at
from unlock.paper import paper_gains
from unlock.pipeline import Alignment, Cached, MapSettings, Transfer, extract, transfer
from unlock.prompts import PromptSets, build_prompt_sets, load_task
from unlock.tasks.answers import CHECKER
from unlock.tasks.hub import DROPPED, dropped_rows


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
    explicit = explicit_pairs(cfg.layer)
    try:
        pairs = pair_layers(source.n_layers, target.n_layers,
                            target_layers=target_layer_selection(cfg.layer, target.n_layers), explicit=explicit)
    except (ValueError, TypeError) as error:
        raise ValueError(f"layer.{'explicit_pairs' if explicit else 'indices'}: {error}") from None
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
# Caching around the method: each stage's file format, and the pipeline step that uses the cache.
# --------------------------------------------------------------------------------------------------
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


# stage -> (suffix, save(path, value, envelope), load(path) -> (value, envelope)); unlock.cache checks
# the envelope (stage, key, full spec) against the one asked for before a value is used.
CODECS: dict[str, tuple[str, Callable[[Path, Any, dict], None], Callable[[Path], tuple[Any, dict | None]]]] = {
    "capture": (".safetensors", lambda path, acts, env: save_activations(
        path, acts, {"cache": env}, storage=env["spec"].get("storage", "float32")),
        _carrying(load_activations)),
    "extract": (".safetensors", lambda path, d, env: save_directions(path, d, {"cache": env}),
                _carrying(load_directions)),
    "align": (".safetensors", lambda path, a, env: save_maps(path, a.maps, a.pairs, a.quality, {"cache": env}),
              _load_alignment),
    "vectors": (".safetensors", lambda path, v, env: save_steering_vectors(path, v, {"cache": env}),
                _carrying(load_steering_vectors)),
    "lens": (".json", save_json, load_json),
}


class Session:
    """What one run shares: its config, the stage cache, the model pool, and the cached pipeline step."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.cache = StageCache(cfg.paths.cache_dir)
        self.models = ModelPool(cfg.paths.cache_dir)

    def step(self, stage: str, spec: dict[str, Any], compute: Callable[[], Any], inputs: Sequence[Cached[Any]]) -> Cached[Any]:
        """A :class:`unlock.pipeline.Step`: the key covers the step's settings and its inputs' keys."""
        if any(c.key is None for c in inputs):
            raise ValueError(f"{stage}: an input has no cache key; cached steps take inputs from cached steps "
                             "(Session.capture), not raw activations")
        full = {**spec, "inputs": [c.key for c in inputs]} if inputs else dict(spec)
        suffix, save, load = CODECS[stage]

        def computed() -> tuple[Any, int]:
            value = compute()
            return value, int(getattr(value, "n_forward_passes", 0))

        value, key = self.cache.get_or_compute(stage, full, suffix, computed,
                                               save=save, load=load)
        return Cached(value, key)

    def capture(self, model_cfg: Any, prompts: list[str], label: str) -> Cached[Activations]:
        cap = self.cfg.capability
        spec = {"model": model_identity(model_cfg), "prompts": fingerprint(prompts, 32), "n": len(prompts),
                "position": cap.position, "padding_side": "left", "max_length": cap.max_length, "layers": "all"}
        if cap.activation_storage != "float32":  # float32 storage keeps the keys it always had
            spec["storage"] = cap.activation_storage

        def compute() -> Activations:
            loaded = self.models.get(model_cfg)
            return capture_activations(loaded.model, loaded.tokenizer, prompts, position=cap.position,
                                       batch_size=cap.batch_size, max_length=cap.max_length,
                                       progress=f"capture {label}" if self.cfg.progress else False)

        return self.step("capture", spec, compute, ())


@dataclass
class Captures:
    source_locked: Cached[Activations]
    source_unlocked: Cached[Activations]
    target_locked: Cached[Activations]
    held_out: tuple[Cached[Activations], Cached[Activations]] | None  # (Source, Target) Locked, other prompts
    target_unlocked: Cached[Activations] | None  # for the native direction


def capture_all(session: Session, prompts: PromptSets) -> Captures:
    """Every capture the run needs, Source work first, then Target work (one model in memory at a time)."""
    cfg = session.cfg
    source, target, checkpoint = cfg.source_model, cfg.target_model, cfg.capability.contrast == "checkpoint"
    held = prompts.heldout_locked
    source_locked = session.capture(source, prompts.locked, "source locked")
    source_held = session.capture(source, held, "source held-out") if held else None
    source_unlocked = (session.capture(cfg.capability.unlocked_model, prompts.locked, "source unlocked (checkpoint)")
                       if checkpoint else session.capture(source, prompts.unlocked, "source unlocked"))
    target_locked = session.capture(target, prompts.locked, "target locked")
    target_held = session.capture(target, held, "target held-out") if held else None
    native = native_source(cfg, prompts)
    return Captures(source_locked, source_unlocked, target_locked,
                    (source_held, target_held) if source_held else None,
                    session.capture(native[0], native[1], "target unlocked") if native else None)


def native_source(cfg: DictConfig, prompts: PromptSets) -> tuple[Any, list[str]] | None:
    """Whose Unlocked activations give the Target's own direction: the Target with the capability
    prompt, or (checkpoint contrast) its post-trained reference model; None when not evaluated."""
    if "native" not in cfg.eval.conditions:
        return None
    if cfg.capability.contrast != "checkpoint":
        return cfg.target_model, prompts.unlocked
    return (cfg.eval.reference_model, prompts.locked) if cfg.eval.reference_model is not None else None


def steering_sets(session: Session, result: Transfer, captures: Captures, plan: Plan) -> dict[str, Cached[dict]]:
    """The vectors each steered condition adds (conditions.CONDITIONS names them): UNLOCK's own, a
    random direction of the same norm per layer, and the Target's own direction."""
    cfg = session.cfg
    sets: dict[str, Cached[dict]] = {"unlock": result.vectors}
    if "random" in cfg.eval.conditions:
        sets["random"] = session.step("vectors", {"name": "random", "seed": cfg.seed},
                                      lambda: random_like(result.vectors.value, cfg.seed), (result.vectors,))
    if captures.target_unlocked is not None:
        native = extract(captures.target_unlocked, captures.target_locked, cfg.capability.aggregation, session.step)
        layers = sorted(plan.pairs)
        sets["native"] = session.step("vectors", {"name": "native", "layers": layers},
                                      lambda: {j: native.value.vectors[j] for j in layers}, (native,))
    return sets


def _lens(session: Session, vectors: dict[int, torch.Tensor]) -> dict[str, Any]:
    loaded = session.models.get(session.cfg.target_model)
    return logit_lens(loaded.model, loaded.tokenizer, vectors, TOP)


def random_like(vectors: dict[int, torch.Tensor], seed: int) -> dict[int, torch.Tensor]:
    """A random direction per layer with the norm of the given vector (the control condition)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in sorted(vectors):
        noise = torch.randn(vectors[layer].shape, generator=gen)
        out[layer] = noise / noise.norm() * vectors[layer].norm()
    return out


def map_settings(cfg: DictConfig) -> MapSettings:
    return MapSettings(rank=cfg.rank.value, method=cfg.rank.method, aggregation=cfg.capability.aggregation,
                       ridge=cfg.rank.ridge)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def run(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run one composed config end to end and return its results record (launch.py writes it)."""
    started = time.perf_counter()
    plan = make_plan(cfg)
    DROPPED.clear()  # this run's benchmark only (a multirun may run many in one process)
    if cfg.dry_run:
        return dry_run(cfg, plan)
    check_devices_present(cfg)
    session = Session(cfg)
    captures = capture_all(session, prompt_sets(cfg))
    result = transfer(captures.source_unlocked, captures.source_locked, captures.target_locked, plan.pairs,
                      map_settings(cfg), captures.held_out, session.step, progress=bool(cfg.progress))
    sets = steering_sets(session, result, captures, plan)
    lenses = {name: session.step("lens", {"model": model_identity(cfg.target_model), "top": TOP},
                                 lambda v=vectors: _lens(session, v.value), (vectors,)).value
              for name, vectors in sets.items()}
    fidelity = (transfer_fidelity(result.alignment.value.maps, result.target_vectors, sets["native"].value,
                                  seed=cfg.seed) if "native" in sets else {})
    conditions, outcomes = evaluate_conditions(cfg, session.cache, session.models, sets, Path(output_dir))
    session.models.release_all()
    artifacts = export_steering(Path(output_dir), sets, cfg,
                                block_path_under_base_model(model_skeleton(cfg.target_model, cfg.paths.cache_dir)))
    atomic_write_bytes(Path(output_dir) / "logit_lens.md", lens_table(lenses).encode())
    findings = {"artifacts": artifacts, "logit_lens": lenses, "transfer_fidelity": {str(j): f for j, f in fidelity.items()},
                "transfer_fidelity_summary": summarise_fidelity(fidelity),
                "paired": comparisons(outcomes, paper_gains(cfg.paper.setup, cfg.benchmark.name, cfg.capability.locked_task),
                                      stats_settings(cfg))}
    return make_record(cfg, plan, session, result, conditions, findings, time.perf_counter() - started)


def check_devices_present(cfg: DictConfig) -> None:
    """Every model's device exists on this machine, checked before the first model loads (not in a
    dry run, which may plan a GPU job on a login node)."""
    models = {"source_model": cfg.source_model, "target_model": cfg.target_model,
              "capability.unlocked_model": cfg.capability.unlocked_model, "eval.reference_model": cfg.eval.reference_model}
    for name, model in models.items():
        device = torch.device(str(model.device)) if model is not None else None
        if device is not None and device.type == "cuda":
            count = torch.cuda.device_count()
            if count == 0 or (device.index or 0) >= count:
                raise ValueError(f"{name}.device {model.device!r} is not available here: this machine has {count} "
                                 f"CUDA device(s){'; use cpu' if count == 0 else f', cuda:0..cuda:{count - 1}'}")


def prompt_sets(cfg: DictConfig) -> PromptSets:
    cap = cfg.capability
    return build_prompt_sets(cap.locked_task, cap.unlocked_task, cap.prompt_split, cap.n_prompts, cap.n_heldout,
                             cap.seed, cfg.paths.tasks_dir, n_shots=cap.n_shots)


def dry_run(cfg: DictConfig, plan: Plan) -> dict[str, Any]:
    record = {"status": "dry_run", "plan": asdict(plan), "memory": memory_plan(cfg, plan)}
    print_plan(cfg, plan, record["memory"])
    if cfg.check_data or not cfg.benchmark.needs_network:
        record["data"] = data_report(cfg)
        print(f"data {cfg.capability.locked_task}: items per split {record['data']['items']}; rows dropped for "
              f"want of an answer (per hub split): {record['data']['dropped_rows'] or 'none'}")
    split_items = record.get("data", {}).get("items", {}).get(str(cfg.eval.split))
    known = [n for n in (split_items, cfg.eval.limit) if n is not None]
    planned = min(known) if known else None
    record["power"] = planned_power(cfg, planned)
    print(power_lines(cfg, planned, record["power"]))
    return record


def planned_power(cfg: DictConfig, n: int | None) -> dict[str, dict[str, Any]]:
    """{"<condition> vs <baseline>": effect, its source, power on n items, items for the target power}
    for the paired tests the run will make, at the assumed discordance (stats.discordance)."""
    if n is None:
        return {}
    stats, task = stats_settings(cfg), cfg.capability.locked_task
    gains = paper_gains(cfg.paper.setup, cfg.benchmark.name, task)
    conditions = [str(c) for c in cfg.eval.conditions]
    out = {}
    for condition in conditions:
        for baseline in (b for b in baselines(condition) if b in conditions):
            paper = gains.get((condition, task, baseline))
            effect = abs(paper) if paper else stats.effect
            out[f"{condition} vs {baseline}"] = {
                "n": n, "effect": effect, "effect_from": "paper" if paper else "default",
                "power": power_at(n, effect, stats.discordance),
                "items_needed": items_needed(effect, stats.discordance, stats.power)}
    return out


def power_lines(cfg: DictConfig, n: int | None, power: dict[str, dict[str, Any]]) -> str:
    if n is None:
        return ("power of the paired tests: the number of test items is unknown until the data is loaded "
                "(add check_data=true, or set eval.limit)")
    stats = stats_settings(cfg)
    head = (f"power of the paired tests on {n} {cfg.eval.split} items (exact McNemar, 5% level, discordance "
            f"assumed {stats.discordance:.2f}; a run reports its own):")
    rows = [f"  {name}: {p['power']:.2f} to detect {p['effect']:+.3f} ({p['effect_from']}); {p['items_needed']} items "
            f"give {stats.power:.0%}" + (" - underpowered" if p["power"] < stats.power else "") for name, p in power.items()]
    return "\n".join([head, *rows])


def data_report(cfg: DictConfig) -> dict[str, Any]:
    """Items per split of the evaluated task, and the rows its loader dropped (hub benchmarks need
    network: the dry run loads them only with check_data=true)."""
    task = load_task(cfg.capability.locked_task, cfg.paths.tasks_dir)
    splits = {"train": (task.has_training_docs, task.training_docs),
              "validation": (task.has_validation_docs, task.validation_docs), "test": (task.has_test_docs, task.test_docs)}
    return {"items": {name: len(list(docs())) for name, (has, docs) in splits.items() if has()},
            "dropped_rows": dropped_rows()}


def make_record(cfg: DictConfig, plan: Plan, session: Session, result: Transfer, conditions: dict[str, Any],
                findings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """results.json's content; ``findings``: the run's files and its analyses (lens, fidelity)."""
    quality = result.alignment.value.quality
    return {
        "status": "ok",
        "source": cfg.source_model.name,
        "target": cfg.target_model.name,
        "capability": cfg.capability.name,
        "settings": settings_summary(cfg, plan),
        "plan": {**asdict(plan), "pairs": {str(j): l for j, l in plan.pairs.items()}},
        "fit_quality": {str(k): v for k, v in quality.items()},
        "fit_quality_mean": mean_quality(quality),
        "vector_norms": {str(k): float(v.norm()) for k, v in result.target_vectors.items()},
        "conditions": conditions,
        "checker": CHECKER,
        "dropped_rows": dropped_rows(),
        "stages": session.cache.summary(),
        "model_load_seconds": session.models.load_seconds,
        "timings": {"total": seconds},
        **findings,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def settings_summary(cfg: DictConfig, plan: Plan) -> dict[str, Any]:
    return {
        "benchmark": cfg.benchmark.name, "item_set": str(cfg.benchmark.source), "capability": cfg.capability.name,
        "n_prompts": cfg.capability.n_prompts, "aggregation": cfg.capability.aggregation,
        "rank": cfg.rank.value, "rank_effective": plan.rank_effective, "method": cfg.rank.method,
        "alpha": cfg.alpha.value, "rule": cfg.alpha.rule, "positions": cfg.alpha.positions,
        "layer_mode": cfg.layer.mode, "n_steered_layers": len(plan.pairs), "split": cfg.eval.split,
        "layers": ",".join(str(j) for j in sorted(plan.pairs)),
    }


def mean_quality(quality: dict[int, dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for q in quality.values() for k in q if k not in ("n", "train_n")})
    return {k: float(sum(q[k] for q in quality.values()) / len(quality)) for k in keys if quality}


def export_steering(output_dir: Path, sets: dict[str, Cached[dict]], cfg: DictConfig, block_path: str) -> dict[str, str]:
    """The UNLOCK vectors (and the native ones, when made) in this package's format, and the UNLOCK
    ones in lm-eval's own ``steered`` format; returns the files by name."""
    vectors = sets["unlock"].value
    files = {"steering_vectors": output_dir / "steering_vectors.safetensors",
             "lm_eval_steered": output_dir / "lm_eval_steered.pt"}
    # The `unlock` lm-eval model reads alpha, rule, positions and layers from this file as its
    # defaults, so `--model_args pretrained=DIR,steer=FILE` reproduces the run's unlock condition.
    how = {"alpha": float(cfg.alpha.value), "rule": str(cfg.alpha.rule), "positions": str(cfg.alpha.positions)}
    save_steering_vectors(files["steering_vectors"], vectors, {**how, "condition": "unlock"})
    if "native" in sets:
        files["native_vectors"] = output_dir / "native_vectors.safetensors"
        save_steering_vectors(files["native_vectors"], sets["native"].value, {**how, "condition": "native"})
    # lm-eval's SteeredModel adds steering_coefficient * vector at every position of the modules it
    # names under model.base_model: "<block_path>.{j}" is the Target's decoder block j. That class has
    # no norm-preserving or last-token rule, so it reproduces UNLOCK only approximately; the `unlock`
    # model class reproduces it exactly.
    steered = {
        f"{block_path}.{layer}": {"steering_vector": vector.clone(), "steering_coefficient": float(cfg.alpha.value),
                                  "action": "add", "bias": None, "head_index": None}
        for layer, vector in vectors.items()
    }
    with atomic_path(files["lm_eval_steered"]) as tmp:
        torch.save(steered, tmp)
    return {name: str(path) for name, path in files.items()}


def failure_record(cfg: DictConfig, error: BaseException) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(),
        "config": OmegaConf.to_container(cfg, resolve=False),
    }


def print_plan(cfg: DictConfig, plan: Plan, memory: dict[str, Any]) -> None:
    """What a run would do, checked against the model configs: the dry-run output."""
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
        lines.append(f"benchmark {cfg.benchmark.name} loads its data from the dataset hub (needs network; add "
                     "check_data=true to load it now); rows without a usable answer are dropped and counted per "
                     "split in results.json (dropped_rows)")
    lines.append(f"answers checked by {CHECKER} after the paper's extraction (final-answer phrase, \\boxed{{}}, last number)")
    if cfg.paper.setup:
        lines.append(f"paper {cfg.paper.setup} / {cfg.benchmark.name}: {dict(cfg.paper.numbers)}")
    print("\n".join(lines))


class RecordExists(RuntimeError):
    """results.json already holds another run's results: it is never replaced."""


def write_record(output_dir: Path, record: dict[str, Any]) -> Path:
    """results.json, atomically, with the environment that made it and a run id (added to ``record``
    in place, so W&B logs the same). Another run's finished results.json is never replaced: this
    run's record then goes beside it as results.<run_id>.json and :class:`RecordExists` is raised.
    A failed run's record may be replaced (a retry of that point)."""
    record.setdefault("environment", environment())
    record.setdefault("run_id", uuid.uuid4().hex[:12])
    path = Path(output_dir) / "results.json"
    data = json_bytes(record)
    try:
        atomic_create_bytes(path, data)
        return path
    except FileExistsError:
        pass
    existing = _read_json(path)
    if existing.get("status") == "failed" or existing.get("run_id") == record["run_id"]:
        atomic_write_bytes(path, data)
        return path
    aside = path.with_name(f"results.{record['run_id']}.json")
    atomic_write_bytes(aside, data)
    raise RecordExists(f"{path} holds the results of another run (run_id {existing.get('run_id')}, status "
                       f"{existing.get('status')}); it is not replaced. This run's record is at {aside}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
