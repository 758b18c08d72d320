"""results.json: the record of a finished run, its exported steering files, the failure record, and
the no-clobber write (another run's results are never replaced)."""

from __future__ import annotations

import json
import traceback
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unlock.method.pipeline import (
    Cached,
    Transfer,
)
from unlock.run.config import steering_settings
from unlock.run.plan import Plan
from unlock.run.session import Session
from unlock.store.artifacts import (
    atomic_create_bytes,
    atomic_path,
    atomic_write_bytes,
    environment,
    json_bytes,
    save_steering_vectors,
)
from unlock.tasks.answers import CHECKER
from unlock.tasks.hub import dropped_rows


def make_record(
    cfg: DictConfig,
    plan: Plan,
    session: Session,
    result: Transfer,
    conditions: dict[str, Any],
    findings: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
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
        "selected_from": cfg.selected_from,
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
        "benchmark": cfg.benchmark.name,
        "item_set": str(cfg.benchmark.source),
        "capability": cfg.capability.name,
        "n_prompts": cfg.capability.n_prompts,
        "aggregation": cfg.capability.aggregation,
        "rank": cfg.rank.value,
        "rank_effective": plan.rank_effective,
        "method": cfg.rank.method,
        **asdict(steering_settings(cfg)),
        "layer_mode": cfg.layer.mode,
        "n_steered_layers": len(plan.pairs),
        "split": cfg.eval.split,
        "layers": ",".join(str(j) for j in sorted(plan.pairs)),
    }


# What a validation sweep chooses: a test run's settings must equal its selected point's on these.
SELECTED_SETTINGS = ("benchmark", "capability", "n_prompts", "aggregation", "rank", "method", "alpha", "rule")
SELECTED_SETTINGS += ("positions", "layer_mode", "layers")


def check_selected_from(cfg: DictConfig, plan: Plan) -> None:
    """A test run that says it runs a sweep's selected point (``selected_from=<sweep dir>/<job>``) does:
    the point finished on the validation split with the same models and the same settings. Checked
    before any model loads; the mismatched settings are named."""
    if not cfg.selected_from:
        return
    path = Path(str(cfg.selected_from)) / "results.json"
    point = _read_json(path) if path.is_file() else {}
    if point.get("status") != "ok":
        raise ValueError(f"selected_from={cfg.selected_from}: {path} is not a finished sweep point's record")
    split = (point.get("config") or {}).get("eval", {}).get("split")
    if split != "validation" or cfg.eval.split != "test":
        raise ValueError(
            f"selected_from={cfg.selected_from}: a test run (eval.split=test, here {cfg.eval.split}) of a point "
            f"selected on the validation split (that point's split: {split})"
        )
    mine = {"source": cfg.source_model.name, "target": cfg.target_model.name, **settings_summary(cfg, plan)}
    theirs = {"source": point.get("source"), "target": point.get("target"), **point.get("settings", {})}
    differ = [k for k in ("source", "target", *SELECTED_SETTINGS) if mine.get(k) != theirs.get(k)]
    if differ:
        shown = ", ".join(f"{k} {mine.get(k)!r} (the point: {theirs.get(k)!r})" for k in differ)
        raise ValueError(f"selected_from={cfg.selected_from}: this run differs from the selected point: {shown}")


def mean_quality(quality: dict[int, dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for q in quality.values() for k in q if k not in ("n", "train_n")})
    return {k: float(sum(q[k] for q in quality.values()) / len(quality)) for k in keys if quality}


def export_steering(
    output_dir: Path, sets: dict[str, Cached[dict]], cfg: DictConfig, block_path: str
) -> dict[str, str]:
    """The UNLOCK vectors (and the native ones, when made) in this package's format, and the UNLOCK
    ones in lm-eval's own ``steered`` format; returns the files by name."""
    vectors = sets["unlock"].value
    files = {
        "steering_vectors": output_dir / "steering_vectors.safetensors",
        "lm_eval_steered": output_dir / "lm_eval_steered.pt",
    }
    # The `unlock` lm-eval model reads alpha, rule, positions and layers from this file as its
    # defaults, so `--model_args pretrained=DIR,steer=FILE` reproduces the run's unlock condition.
    how = asdict(steering_settings(cfg))
    save_steering_vectors(files["steering_vectors"], vectors, {**how, "condition": "unlock"})
    if "native" in sets:
        files["native_vectors"] = output_dir / "native_vectors.safetensors"
        save_steering_vectors(files["native_vectors"], sets["native"].value, {**how, "condition": "native"})
    # lm-eval's SteeredModel adds steering_coefficient * vector at every position of the modules it
    # names under model.base_model: "<block_path>.{j}" is the Target's decoder block j. That class has
    # no norm-preserving or last-token rule, so it reproduces UNLOCK only approximately; the `unlock`
    # model class reproduces it exactly.
    steered = {
        f"{block_path}.{layer}": {
            "steering_vector": vector.clone(),
            "steering_coefficient": how["alpha"],
            "action": "add",
            "bias": None,
            "head_index": None,
        }
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
    raise RecordExists(
        f"{path} holds the results of another run (run_id {existing.get('run_id')}, status "
        f"{existing.get('status')}); it is not replaced. This run's record is at {aside}"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
