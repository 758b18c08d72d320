"""results.json: the record of a finished run, its exported steering files, the failure record, and
the no-clobber write (another run's results are never replaced)."""

from __future__ import annotations

import copy
import json
import traceback
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from unlock.method.pipeline import (
    Cached,
    Transfer,
)
from unlock.method.steer import SteeringSettings
from unlock.run.plan import Plan
from unlock.run.session import Session
from unlock.run.settings import RunSettings
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
    settings: RunSettings,
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
        "source": settings.models.source.name,
        "target": settings.models.target.name,
        "capability": settings.prompts.capability,
        "settings": settings_summary(settings, plan),
        "plan": {**asdict(plan), "pairs": {str(j): l for j, l in plan.pairs.items()}},
        "fit_quality": {str(k): v for k, v in quality.items()},
        "fit_quality_mean": mean_quality(quality),
        "vector_norms": {str(k): float(v.norm()) for k, v in result.target_vectors.items()},
        "conditions": conditions,
        "selected_from": settings.selected_from,
        "checker": CHECKER,
        "dropped_rows": dropped_rows(),
        "stages": session.cache.summary(),
        "model_load_seconds": session.models.load_seconds,
        "timings": {"total": seconds},
        **findings,
        "config": copy.deepcopy(settings.config),  # the record's own: the settings stay as built
    }


def settings_summary(settings: RunSettings, plan: Plan) -> dict[str, Any]:
    prompts = settings.prompts
    return {
        "benchmark": prompts.benchmark,
        "item_set": prompts.item_set,
        "capability": prompts.capability,
        "n_prompts": prompts.n_prompts,
        "aggregation": settings.map.aggregation,
        "rank": settings.map.rank,
        "rank_effective": plan.rank_effective,
        "method": settings.map.method,
        **asdict(settings.steering),
        "layer_mode": settings.layers.mode,
        "n_steered_layers": len(plan.pairs),
        "split": settings.evaluation.split,
        "layers": ",".join(str(j) for j in sorted(plan.pairs)),
    }


# What determines a sweep point's numbers besides the split: a test run of the point must agree on all of it.
SELECTED_CONFIG = ("source_model", "target_model", "benchmark", "capability", "layer", "rank", "alpha", "seed")


def check_selected_from(settings: RunSettings) -> None:
    """A test run that says it runs a sweep's selected point (``selected_from=<sweep dir>/<job>``) does: the
    sweep selected that job (its aggregate.json), the point finished on the validation split, and the
    models, capability, layers, rank, alpha and seed are the point's (devices aside). Checked before
    any model loads; what differs is named."""
    selected, split_here = settings.selected_from, settings.evaluation.split
    if not selected:
        return
    point_dir = Path(selected)
    point = _read_json(point_dir / "results.json") if (point_dir / "results.json").is_file() else {}
    if point.get("status") != "ok":
        raise ValueError(f"selected_from={selected}: {point_dir}/results.json is not a finished sweep point")
    aggregate = point_dir.parent / "aggregate.json"
    chosen = ((_read_json(aggregate) if aggregate.is_file() else {}).get("selected_on_validation") or {}).get("job")
    if chosen != point_dir.name:
        raise ValueError(
            f"selected_from={selected}: the sweep selected job {chosen!r} ({aggregate}), not {point_dir.name!r}"
        )
    split = (point.get("config") or {}).get("eval", {}).get("split")
    if split != "validation" or split_here != "test":
        raise ValueError(
            f"selected_from={selected}: a test run (eval.split=test, here {split_here}) of a point "
            f"selected on the validation split (that point's split: {split})"
        )
    mine = _comparable(settings.config)
    theirs = _comparable(point.get("config") or {})
    differ = [k for k in SELECTED_CONFIG if mine.get(k) != theirs.get(k)]
    if differ:
        shown = ", ".join(f"{k} {json.dumps(mine.get(k))} (the point: {json.dumps(theirs.get(k))})" for k in differ)
        raise ValueError(f"selected_from={selected}: this run differs from the selected point: {shown}")


def _comparable(composed: dict[str, Any]) -> dict[str, Any]:
    """The config nodes a test run shares with its point, as JSON values, without the models' devices."""
    out = json.loads(json.dumps({k: composed.get(k) for k in SELECTED_CONFIG}, default=str))
    for node in (out.get("source_model"), out.get("target_model"), (out.get("capability") or {}).get("unlocked_model")):
        if isinstance(node, dict):
            node.pop("device", None)
    return out


def mean_quality(quality: dict[int, dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for q in quality.values() for k in q if k not in ("n", "train_n")})
    return {k: float(sum(q[k] for q in quality.values()) / len(quality)) for k in keys if quality}


def export_steering(
    output_dir: Path, sets: dict[str, Cached[dict]], steering: SteeringSettings, block_path: str
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
    how = asdict(steering)
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


def failure_record(composed: dict[str, Any], error: BaseException) -> dict[str, Any]:
    """A failed run's record: the error, its traceback and the composed config (as data, unresolved)."""
    return {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(),
        "config": composed,
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
