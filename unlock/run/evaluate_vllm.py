"""eval.engine=vllm: a run's conditions on one vLLM engine, in one lm-eval evaluation.

Each (condition, task) becomes a copy of the lm-eval task named ``<task>@<condition>`` whose
generation kwargs carry ``unlock_steer: <condition>``; the engine registers each condition's steering
under that name. lm-eval then hands the model every generation request of every condition at once,
and ``unlock_vllm`` sends them to vLLM in one call, each request steered by its condition (and
checked). Loglikelihood tasks have no generation kwargs to carry a tag: they are evaluated one
condition at a time on the same engine.

The engine is kept for the process (one at a time), so consecutive points of a local sweep that
share the Target reuse it; its start-up is reported apart (``model_load_seconds``, "<name> (vllm
engine)").
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lm_eval

from unlock.lm_eval.prompts import task_manager
from unlock.lm_eval.vllm_model import CONDITION_KEY, UnlockVLLM
from unlock.models.loading import ModelSpec, model_checkpoint
from unlock.run.engines import EvalResult, EvalSettings, Evaluator, ModelProvider
from unlock.run.scores import EvalItem, response_lengths, sample_rows, summarise
from unlock.store.cache import fingerprint

_ENGINE: dict[str, UnlockVLLM] = {}  # at most one, by what determines it


class VLLMEvaluator:
    """Evaluates items of one model together on a vLLM engine with per-request steering."""

    def __init__(self, settings: EvalSettings, models: ModelProvider) -> None:
        self.settings, self.models = settings, models

    def lm(self, model: ModelSpec) -> UnlockVLLM:
        path = model_checkpoint(model, self.settings.cache_dir)
        args = {"dtype": "auto" if model.dtype == "auto" else str(model.dtype), **self.settings.vllm}
        key = fingerprint({"path": path, **args})
        if key not in _ENGINE:
            _ENGINE.clear()
            self.models.release_all()  # the HF weights are not needed while vLLM holds its own
            start = time.perf_counter()
            _ENGINE[key] = lm = UnlockVLLM(pretrained=path, batch_size="auto", **args)
            mode = "compiled" if lm.compiled else "eager"
            how = f"{lm.steering.mode} steering" + (" (the hook fallback)" if lm.steering.mode == "hooks" else "")
            print(f"[unlock] {model.name}: vLLM engine, {how}, {mode}", file=sys.stderr)
            # In results.json's model_load_seconds; absent when a sweep's earlier point started it.
            self.models.load_seconds[f"{model.name} (vllm engine)"] = time.perf_counter() - start
        return _ENGINE[key]

    def evaluate_many(self, items: Sequence[EvalItem]) -> list[EvalResult]:
        lm = self.lm(items[0].model)
        names = [f"{item.lm_task}@{item.condition}" for item in items]
        for item, name in zip(items, names, strict=True):
            if item.steering is None or item.how is None:
                lm.add_steering(name, None)
            else:
                lm.add_steering(name, item.steering.value, item.how)
        base = task_manager(self.settings.tasks_dir, [i.lm_task for i in items]).load_task_or_group(
            sorted({i.lm_task for i in items})
        )
        tagged = [_tagged(base[item.lm_task], name) for item, name in zip(items, names, strict=True)]
        together = [t for t in tagged if t.OUTPUT_TYPE == "generate_until"]
        results, steps = self._run(lm, together) if together else ({"results": {}, "samples": {}}, 0)
        doses = {name: lm.steering_dose(name) for name in names}
        for task, name in zip(tagged, names, strict=True):
            if task.OUTPUT_TYPE != "generate_until":  # no kwargs to carry the tag: one at a time
                single, more = self._run(lm, [task], default=name)
                steps += more
                doses[name] = lm.steering_dose(name)
                for part in ("results", "samples"):
                    results[part].update(single[part])
        # The engine's steps serve the conditions together; each is given its share.
        share = round(steps / len(items))
        return [self._metrics(lm, results, name, share, doses.get(name, {})) for name in names]

    def _run(self, lm: UnlockVLLM, tasks: list[Any], default: str | None = None) -> tuple[dict[str, Any], int]:
        """One lm-eval evaluation of these tasks; ``default``: the steering of untagged requests."""
        lm.use_steering(default)
        lm.reset_stats()
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        ev = self.settings
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            limit=ev.limit,
            gen_kwargs={"max_gen_toks": int(ev.max_new_tokens)},
            log_samples=True,
            bootstrap_iters=int(ev.bootstrap_iters),
            random_seed=ev.random_seed,
            verbosity="ERROR",
        )
        lm.use_steering(None)
        return {"results": dict(results["results"]), "samples": dict(results["samples"])}, lm.stats["forward_passes"]

    def _metrics(
        self, lm: UnlockVLLM, results: dict[str, Any], name: str, steps: int, dose: dict[int, float]
    ) -> EvalResult:
        samples = results["samples"][name]
        generation = bool(samples) and isinstance((samples[0].get("filtered_resps") or [None])[0], str)
        lengths = response_lengths(lm.tokenizer, sample_rows(samples)) if generation else []
        metrics = summarise(results["results"][name], samples, {"forward_passes": steps}, lengths, dose)
        metrics["vllm"] = {"steering": lm.steering.mode, "compiled": lm.compiled}  # the hook fallback is named
        return EvalResult(metrics, sample_rows(samples, lengths))


def _tagged(task: Any, name: str) -> Any:
    """A copy of an lm-eval task under another name whose generation requests carry the steering tag."""
    copied = copy.deepcopy(task)
    copied.set_config(key="task", value=name)
    if copied.OUTPUT_TYPE == "generate_until":
        copied.set_config(key="generation_kwargs", value={CONDITION_KEY: name}, update=True)
    return copied


if TYPE_CHECKING:  # make lint checks the engine against the protocol evaluator() promises
    _engine: type[Evaluator] = VLLMEvaluator
