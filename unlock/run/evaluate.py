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
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlock.lm_eval.prompts import task_manager
from unlock.method.pipeline import Cached
from unlock.method.steer import SteeringSettings
from unlock.models.loading import ModelSpec, model_identity
from unlock.run.conditions import CONDITIONS
from unlock.run.engines import EvalResult, EvalSettings, Evaluator, ModelProvider, evaluator
from unlock.run.scores import RECORDS, EvalItem, response_lengths, sample_rows, summarise
from unlock.run.settings import RunSettings
from unlock.store.artifacts import atomic_write_bytes
from unlock.store.cache import StageCache, fingerprint, load_json, save_json
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


class HFEvaluator:
    """The ``hf`` engine: one lm-eval model object for the loaded model; steering is switched per condition."""

    def __init__(self, settings: EvalSettings, models: ModelProvider) -> None:
        self.settings, self.models = settings, models
        self._lm: Any = None

    def lm(self, model: ModelSpec):
        from unlock.lm_eval.hf_model import UnlockLM

        loaded = self.models.get(model)
        if self._lm is None or self._lm.model is not loaded.model:
            self._lm = UnlockLM(
                pretrained=loaded.model,
                tokenizer=loaded.tokenizer,
                batch_size=self.settings.batch_size,
                device=str(model.device),
                track_entropy=True,
            )
        return self._lm

    def evaluate(
        self, model: ModelSpec, task: str, steering: Cached[dict] | None, how: SteeringSettings | None
    ) -> EvalResult:
        import lm_eval  # heavy: only when something is evaluated

        lm = self.lm(model)
        if steering is None or how is None:
            lm.set_steering(None)
        else:
            lm.set_steering(steering.value, how, measure_dose=True)
        lm.reset_stats()
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task],
            task_manager=task_manager(self.settings.tasks_dir, [task]),
            limit=self.settings.limit,
            gen_kwargs={"max_gen_toks": int(self.settings.max_new_tokens)},
            log_samples=True,
            bootstrap_iters=int(self.settings.bootstrap_iters),
            random_seed=self.settings.random_seed,
            verbosity="ERROR",
        )
        samples = results["samples"][task]
        lengths = response_lengths(lm.tokenizer, sample_rows(samples)) if lm.stats["generated_tokens"] else []
        metrics = summarise(results["results"][task], samples, lm.stats, lengths, lm.steering_dose())
        return EvalResult(metrics, sample_rows(samples, lengths))

    def evaluate_many(self, items: Sequence[EvalItem]) -> list[EvalResult]:
        """One lm-eval evaluation per item, steering switched between them."""
        return [self.evaluate(item.model, item.lm_task, item.steering, item.how) for item in items]


def plan_items(settings: RunSettings, steering_sets: dict[str, Cached[dict]]) -> tuple[list[EvalItem], dict[str, Any]]:
    """Every (condition, task) the run asks for (conditions.CONDITIONS says which model, prompt and
    steering set each uses), and the conditions skipped with the reason."""
    items, skipped = [], {}
    how, ev = settings.steering, settings.evaluation
    for condition_name in ev.conditions:
        condition = CONDITIONS[condition_name]
        if condition.vectors is not None and condition.vectors not in steering_sets:
            skipped[condition.name] = {
                "skipped": "no Target-Unlocked activations for a native direction "
                "(checkpoint contrast needs eval.reference_model)"
            }
            continue
        model = settings.models.evaluated(condition.model)
        steering = steering_sets[condition.vectors] if condition.vectors is not None else None
        if steering is not None and how.alpha == 0.0:
            steering = None  # alpha 0 is the unsteered model exactly; share its cache entry
        for task in ev.tasks:
            name = eval_task_name(settings.prompt_task(task) if condition.prompt == "unlocked" else task, ev.split)
            items.append(EvalItem(condition.name, task, name, model, steering, how if steering else None))
    return items, skipped


def evaluate_conditions(
    settings: RunSettings,
    cache: StageCache,
    models: ModelProvider,
    steering_sets: dict[str, Cached[dict]],
    output_dir: Path,
) -> tuple[dict[str, Any], dict[str, dict[str, list[dict[str, Any]]]]]:
    """{condition: {task: metrics}} for every configured condition, and {condition: {task: sample rows}}
    for the paired comparisons; the rows also go to output_dir/samples. Each evaluation is its own
    cache entry; the missing ones of each model are evaluated together (with eval.engine=vllm, in one
    engine pass)."""
    items, out = plan_items(settings, steering_sets)
    rows_by: dict[str, dict[str, list[dict[str, Any]]]] = {}
    how = settings.evaluation.engine
    engine = evaluator(how, models)
    groups: dict[str, list[EvalItem]] = {}
    for item in items:
        groups.setdefault(fingerprint(model_identity(item.model)), []).append(item)
    for group in groups.values():

        def compute(missing: list[int], group: list[EvalItem] = group) -> list[tuple[dict[str, Any], int]]:
            return [_computed(r) for r in engine.evaluate_many([group[i] for i in missing])]

        results, _ = cache.get_or_compute_many(
            "eval", [eval_spec(how, item) for item in group], ".json", compute=compute, save=save_json, load=load_json
        )
        for item, cached in zip(group, results, strict=True):
            result = EvalResult(**cached)
            out.setdefault(item.condition, {})[item.task] = {**result.metrics, "lm_eval_task": item.lm_task}
            rows_by.setdefault(item.condition, {})[item.task] = result.samples
            rows = "".join(json.dumps(row, default=str) + "\n" for row in result.samples)
            atomic_write_bytes(output_dir / "samples" / f"{item.condition}__{item.task}.jsonl", rows.encode())
    return {name: out[name] for name in settings.evaluation.conditions if name in out}, rows_by


def eval_spec(ev: EvalSettings, item: EvalItem) -> dict[str, Any]:
    """All that determines one evaluation (its cache key), with what it records (``RECORDS``)."""
    how, steering = item.how, item.steering
    spec = {
        "model": model_identity(item.model),
        "task": item.lm_task,
        "task_files": tasks_fingerprint(ev.tasks_dir),
        "checker": CHECKER,
        "limit": ev.limit,
        "max_new_tokens": ev.max_new_tokens,
        "batch_size": ev.batch_size,
        "seed": ev.random_seed,
        "steering": None
        if steering is None or how is None
        else {"vectors": steering.key, "alpha": how.alpha, "rule": how.rule, "positions": how.positions},
        "records": RECORDS,
    }
    if ev.engine != "hf":
        spec["engine"] = str(ev.engine)
    if ev.engine == "vllm":  # compiled and eager kernels round differently
        mode = str(ev.vllm.get("steering", "graph"))
        eager = mode == "hooks" or str(ev.vllm.get("enforce_eager", False)).lower() in ("true", "1")
        spec["engine_mode"] = {"steering": mode, "eager": eager}
    return spec


def _computed(result: EvalResult) -> tuple[dict[str, Any], int]:
    """A result as the cache stores it (JSON: metrics and samples), and its forward passes."""
    return {"metrics": result.metrics, "samples": result.samples}, int(result.metrics.get("forward_passes", 0))


if TYPE_CHECKING:  # make lint checks the engine against the protocol evaluator() promises
    _engine: type[Evaluator] = HFEvaluator
