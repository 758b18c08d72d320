"""Stage 5: steer the Target and evaluate each condition with lm-eval, side by side.

Conditions: ``unsteered`` (Target, Locked prompt), ``unlock`` (+ mapped Source direction),
``prompting`` (Target with the capability prompt), ``native`` (+ the Target's own direction, the
upper reference), ``random`` (+ a random direction of equal norm, the control) and ``reference``
(another model, e.g. the Target's post-trained sibling, with the capability prompt).
Each condition's result is a cached artifact, so an alpha sweep re-runs only the steered ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from unlock.artifacts import atomic_write_bytes
from unlock.cache import StageCache, load_json, save_json
from unlock.conditions import CONDITIONS
from unlock.config import prompt_task
from unlock.loading import model_identity
from unlock.pipeline import Cached
from unlock.prompts import task_manager
from unlock.tasks.answers import CHECKER


@lru_cache(maxsize=8)
def tasks_fingerprint(tasks_dir: str) -> str:
    """Hash of the local task files (YAML, scoring code, data): editing any of them invalidates
    cached evaluations, since the prompt, the items or the metric may have changed."""
    digest = hashlib.sha256()
    for path in sorted(Path(tasks_dir).rglob("*")):
        if path.is_file() and (path.suffix in (".py", ".yaml", ".jsonl") or path.name.endswith("_yaml")):
            digest.update(path.relative_to(tasks_dir).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def eval_task_name(task: str, split: str) -> str:
    """Validation runs use the task's ``_val`` variant (same items' validation split)."""
    return task if split == "test" else f"{task}_val"


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; sensible at 0 and 1 and for small n."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(task_results: dict[str, Any], samples: list[dict], stats: dict[str, float],
              response_tokens: list[int]) -> dict[str, Any]:
    """Metrics of one condition on one task. ``gen_tokens`` is the length of the kept response (cut at
    the task's stop sequences), the paper's generation length; ``entropy`` is the mean next-token
    entropy over every token generated before EOS or the token limit."""
    n = len(samples)
    metrics = {key.split(",")[0]: value for key, value in task_results.items()
               if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
    out: dict[str, Any] = {"n": n, **metrics}
    if "acc" in metrics and n:
        low, high = wilson_interval(metrics["acc"] * n, n)
        out["acc_ci95"] = [low, high]
    if response_tokens:
        out["gen_tokens"] = sum(response_tokens) / len(response_tokens)
    generated = stats.get("generated_tokens", 0)
    if generated:
        out["entropy"] = stats["entropy_sum"] / generated
    out["forward_passes"] = stats.get("forward_passes", 0)
    return out


def _sample_rows(samples: list[dict]) -> list[dict]:
    rows = []
    for sample in samples:
        response = sample.get("filtered_resps") or sample.get("resps")
        while isinstance(response, list) and len(response) == 1:
            response = response[0]
        rows.append({
            "doc_id": sample.get("doc_id"),
            "target": sample.get("target"),
            "prompt": (sample.get("arguments") or [[None]])[0][0] if sample.get("arguments") else None,
            "response": response if isinstance(response, str) else json.dumps(response, default=str),
            **{k: sample[k] for k in ("acc", "gen_words", "stepwise", "unparsable", "checker_timeout") if k in sample},
        })
    return rows


class Evaluator:
    """One lm-eval model object for the loaded model; steering is switched per condition."""

    def __init__(self, cfg: DictConfig, models) -> None:
        self.cfg, self.models = cfg, models
        self._lm: Any = None

    def lm(self, model_cfg: Any):
        from unlock.lm_eval_model import UnlockLM

        loaded = self.models.get(model_cfg)
        if self._lm is None or self._lm.model is not loaded.model:
            self._lm = UnlockLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=self.cfg.eval.batch_size,
                                device=str(model_cfg.device), track_entropy=True)
        return self._lm

    def evaluate(self, model_cfg: Any, task: str, steering: Cached[dict] | None) -> dict[str, Any]:
        import lm_eval  # heavy: only when something is evaluated

        lm = self.lm(model_cfg)
        alpha = self.cfg.alpha
        if steering is None:
            lm.set_steering(None)
        else:
            lm.set_steering(steering.value, alpha.value, alpha.rule, alpha.positions)
        lm.reset_stats()
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[task], task_manager=task_manager(self.cfg.paths.tasks_dir, [task]),
            limit=self.cfg.eval.limit, gen_kwargs={"max_gen_toks": int(self.cfg.eval.max_new_tokens)},
            log_samples=True, bootstrap_iters=int(self.cfg.eval.bootstrap_iters),
            random_seed=self.cfg.eval.random_seed, verbosity="ERROR",
        )
        samples = results["samples"][task]
        rows = _sample_rows(samples)
        lengths = [len(lm.tokenizer(row["response"], add_special_tokens=False)["input_ids"])
                   for row in rows if lm.stats["generated_tokens"]]
        return {"metrics": summarise(results["results"][task], samples, lm.stats, lengths), "samples": rows}


def evaluate_conditions(cfg: DictConfig, cache: StageCache, models, steering_sets: dict[str, Cached[dict]],
                        output_dir: Path) -> dict[str, Any]:
    """{condition: {task: metrics}} for every configured condition (conditions.CONDITIONS says which
    model, prompt and steering set each uses); per-sample outputs go to output_dir."""
    evaluator = Evaluator(cfg, models)
    out: dict[str, Any] = {}
    for condition_name in cfg.eval.conditions:
        condition = CONDITIONS[str(condition_name)]
        if condition.vectors is not None and condition.vectors not in steering_sets:
            out[condition.name] = {"skipped": "no Target-Unlocked activations for a native direction "
                                              "(checkpoint contrast needs eval.reference_model)"}
            continue
        model_cfg = cfg.eval.reference_model if condition.model == "reference" else cfg.target_model
        steering = steering_sets[condition.vectors] if condition.vectors is not None else None
        if steering is not None and cfg.alpha.value == 0.0:
            steering = None  # alpha 0 is the unsteered model exactly; share its cache entry
        out[condition.name] = {}
        for task in cfg.eval.tasks:
            name = eval_task_name(prompt_task(cfg, task) if condition.prompt == "unlocked" else task, cfg.eval.split)
            result = _evaluate_cached(cfg, cache, evaluator, model_cfg, name, steering)
            out[condition.name][task] = {**result["metrics"], "lm_eval_task": name}
            rows = "".join(json.dumps(row, default=str) + "\n" for row in result["samples"])
            atomic_write_bytes(output_dir / "samples" / f"{condition.name}__{task}.jsonl", rows.encode())
    return out


def _evaluate_cached(cfg: DictConfig, cache: StageCache, evaluator: Evaluator, model_cfg: Any, task: str,
                     steering: Cached[dict] | None) -> dict[str, Any]:
    """One (model, task, steering) evaluation through the stage cache, keyed by all that determines it."""
    ev, alpha = cfg.eval, cfg.alpha
    spec = {
        "model": model_identity(model_cfg), "task": task, "task_files": tasks_fingerprint(cfg.paths.tasks_dir),
        "checker": CHECKER,
        "limit": ev.limit, "max_new_tokens": ev.max_new_tokens, "batch_size": ev.batch_size, "seed": ev.random_seed,
        "steering": None if steering is None else {
            "vectors": steering.key, "alpha": alpha.value, "rule": alpha.rule, "positions": alpha.positions},
    }
    result, _ = cache.get_or_compute(
        "eval", spec, ".json", compute=lambda: _computed(evaluator.evaluate(model_cfg, task, steering)),
        save=save_json, load=load_json,
    )
    return result


def _computed(result: dict[str, Any]) -> tuple[dict[str, Any], int]:
    return result, int(result["metrics"].get("forward_passes", 0))
