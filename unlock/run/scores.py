"""What one evaluation reports: the item it evaluates, its metrics, and its per-sample rows.

Shared by both engines (unlock.run.evaluate for HF, unlock.run.evaluate_vllm for vLLM).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from unlock.method.pipeline import Cached
from unlock.method.steer import SteeringSettings


@dataclass(frozen=True)
class EvalItem:
    """One evaluation: a condition's model, prompt variant and steering on one configured task."""

    condition: str
    task: str  # the configured task (a row of the table)
    lm_task: str  # the lm-eval task run (capability-prompt variant, _val split)
    model: Any
    steering: Cached[dict] | None
    how: SteeringSettings | None = None  # alpha, rule, positions when ``steering`` is set


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; sensible at 0 and 1 and for small n."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(
    task_results: dict[str, Any], samples: list[dict], stats: dict[str, float], response_tokens: list[int]
) -> dict[str, Any]:
    """Metrics of one condition on one task. ``gen_tokens`` is the length of the kept response (cut at
    the task's stop sequences), the paper's generation length; ``entropy`` is the mean next-token
    entropy over every token generated before EOS or the token limit."""
    n = len(samples)
    metrics = {
        key.split(",")[0]: value
        for key, value in task_results.items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float))
    }
    out: dict[str, Any] = {"n": n, **metrics}
    if "acc" in metrics and n:
        low, high = wilson_interval(metrics["acc"] * n, n)
        out["acc_ci95"] = [low, high]
    if response_tokens:
        out["gen_tokens"] = sum(response_tokens) / len(response_tokens)
    generated = stats.get("generated_tokens", 0)
    if generated and "entropy_sum" in stats:  # the vLLM engine does not measure it
        out["entropy"] = stats["entropy_sum"] / generated
    out["forward_passes"] = stats.get("forward_passes", 0)
    return out


def sample_rows(samples: list[dict]) -> list[dict]:
    rows = []
    for sample in samples:
        response = sample.get("filtered_resps") or sample.get("resps")
        while isinstance(response, list) and len(response) == 1:
            response = response[0]
        rows.append(
            {
                "doc_id": sample.get("doc_id"),
                "target": sample.get("target"),
                "prompt": (sample.get("arguments") or [[None]])[0][0] if sample.get("arguments") else None,
                "response": response if isinstance(response, str) else json.dumps(response, default=str),
                **{
                    k: sample[k]
                    for k in ("acc", "gen_words", "stepwise", "unparsable", "checker_timeout")
                    if k in sample
                },
            }
        )
    return rows
