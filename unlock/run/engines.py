"""The evaluation engines (config ``eval.engine``): name -> "module:Class" of its evaluator, imported
only when chosen (the vLLM one imports vLLM, tens of seconds). A new engine is one row here, its
evaluator class (``evaluate_many(items)``) and its tests."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENGINES: dict[str, str] = {
    "hf": "unlock.run.evaluate:Evaluator",  # lm-eval's HFLM + Steering, one condition at a time
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


def evaluator(name: str, *args: Any) -> Any:
    if name not in ENGINES:
        raise ValueError(f"eval.engine {name!r} is not allowed; allowed: {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(*args)
