"""The evaluation engines (config ``eval.engine``): name -> "module:Class" of its evaluator, imported
only when chosen (the vLLM one imports vLLM, tens of seconds). A new engine is one row here, its
evaluator class (``evaluate_many(items)``) and its tests."""

from __future__ import annotations

import importlib
from typing import Any

ENGINES: dict[str, str] = {
    "hf": "unlock.run.evaluate:Evaluator",  # lm-eval's HFLM + Steering, one condition at a time
    "vllm": "unlock.run.evaluate_vllm:VLLMEvaluator",  # every condition in one vLLM engine pass
}


def evaluator(name: str, *args: Any) -> Any:
    if name not in ENGINES:
        raise ValueError(f"eval.engine {name!r} is not allowed; allowed: {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(*args)
