"""What one evaluation reports: the item it evaluates, its metrics, and its per-sample rows.

Shared by both engines (unlock.run.evaluate for HF, unlock.run.evaluate_vllm for vLLM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from unlock.analysis.stats import wilson_interval
from unlock.method.pipeline import Cached
from unlock.method.steer import SteeringSettings
from unlock.models.loading import ModelSpec

# What an evaluation records, part of its cache key: 2 added each item's response length in tokens
# (gen_tokens, for the paired behaviour tests) and the steering dose per layer.
RECORDS = 2


@dataclass(frozen=True)
class EvalItem:
    """One evaluation: a condition's model, prompt variant and steering on one configured task."""

    condition: str
    task: str  # the configured task (a row of the table)
    lm_task: str  # the lm-eval task run (capability-prompt variant, _val split)
    model: ModelSpec
    steering: Cached[dict] | None
    how: SteeringSettings | None = None  # alpha, rule, positions when ``steering`` is set


def summarise(
    task_results: dict[str, Any],
    samples: list[dict],
    stats: dict[str, float],
    response_tokens: list[int],
    dose: dict[int, float] | None = None,
) -> dict[str, Any]:
    """Metrics of one condition on one task. ``gen_tokens`` is the length of the kept response (cut at
    the task's stop sequences), the paper's generation length; ``entropy`` is the mean next-token
    entropy over every token generated before EOS or the token limit; ``dose`` is the mean relative
    change ||h' - h|| / ||h|| steering applied at the steered positions, per layer, and ``dose_mean``
    its mean over layers (steered conditions only)."""
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
    if dose:
        out["dose"] = {str(layer): value for layer, value in sorted(dose.items())}
        out["dose_mean"] = sum(dose.values()) / len(dose)
    return out


def response_lengths(tokenizer: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Each kept response's length in tokens (cut at the task's stop sequences, as scored)."""
    return [len(tokenizer(row["response"], add_special_tokens=False)["input_ids"]) for row in rows]


def sample_rows(samples: list[dict], response_tokens: list[int] | None = None) -> list[dict]:
    """One row per item: lm-eval's doc_id, target, prompt and response, the task's per-item metrics,
    and ``gen_tokens`` (the response's length in tokens) where the engine gave it."""
    rows = []
    for index, sample in enumerate(samples):
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
                **({"gen_tokens": response_tokens[index]} if response_tokens else {}),
            }
        )
    return rows
