"""The evaluation engines (config ``eval.engine``): name -> "module:Class" of its evaluator, imported
only when chosen (the vLLM one imports vLLM, tens of seconds). A new engine is one row here, its
evaluator class (the :class:`Evaluator` protocol) and its tests."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from unlock.models.loading import LoadedModel, ModelSpec
from unlock.run.scores import EvalItem

ENGINES: dict[str, str] = {
    "hf": "unlock.run.evaluate:HFEvaluator",  # lm-eval's HFLM + Steering, one condition at a time
    "vllm": "unlock.run.evaluate_vllm:VLLMEvaluator",  # every condition in one vLLM engine pass
}


@dataclass(frozen=True)
class EvalSettings:
    """How an engine evaluates (config group ``eval``, plus where the tasks and checkpoints are): what the
    evaluators receive instead of the config. The schema's defaults are these."""

    tasks_dir: str
    cache_dir: str
    limit: int | None = None
    max_new_tokens: int = 512
    batch_size: int = 16
    random_seed: int = 0
    bootstrap_iters: int = 0
    engine: str = "hf"
    vllm: Mapping[str, Any] = field(default_factory=dict)  # vLLM's own engine arguments


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: the condition's metrics (unlock.run.scores.summarise) and its sample rows
    (sample_rows), as the cache stores them and the paired tests read them."""

    metrics: dict[str, Any]
    samples: list[dict[str, Any]]


class ModelProvider(Protocol):
    """What an evaluator gets its models from (the run's ModelPool): one model in memory at a time."""

    load_seconds: dict[str, float]

    def get(self, spec: ModelSpec) -> LoadedModel: ...

    def release_all(self) -> None: ...


class Evaluator(Protocol):
    """An engine: built with ``(EvalSettings, ModelProvider)``; evaluates the items of one model together
    and returns one result per item, in order."""

    def evaluate_many(self, items: Sequence[EvalItem]) -> list[EvalResult]: ...


def evaluator(settings: EvalSettings, models: ModelProvider) -> Evaluator:
    """The evaluator of ``settings.engine`` (a row of :data:`ENGINES`)."""
    if settings.engine not in ENGINES:
        raise ValueError(f"eval.engine {settings.engine!r} is not allowed; allowed: {', '.join(ENGINES)}")
    module, cls = ENGINES[settings.engine].split(":")
    return getattr(importlib.import_module(module), cls)(settings, models)
