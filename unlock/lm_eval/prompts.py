"""Extraction and alignment prompts, rendered by lm-eval from the same task YAMLs that are evaluated.

Using the task's own zero-shot context guarantees that the Locked prompt captured for alignment is
character for character the prompt the unsteered Target is evaluated on. Prompts come from one split
only (train by default), so extraction, selection (validation) and test items never overlap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from unlock.tasks import WORKED_SOLUTIONS

SPLIT_DOCS = {"train": "training_docs", "validation": "validation_docs", "test": "test_docs"}


@dataclass
class PromptSets:
    locked: list[str]  # N fit prompts, Locked form
    unlocked: list[str]  # the same N questions, Unlocked form
    heldout_locked: list[str]  # further questions of the same split, for held-out fit quality


@lru_cache(maxsize=4)
def _manager(tasks_dir: str, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=tasks_dir, include_defaults=include_defaults)


def task_manager(tasks_dir: str, names: list[str] | tuple[str, ...] = ()):
    """A TaskManager that finds ``names``; indexing lm-eval's ~15k built-in tasks takes ~9 s, so it
    is skipped when every name is one of the local tasks in ``tasks_dir``."""
    local = _manager(tasks_dir, False)
    if all(name in local.all_tasks for name in names):
        return local
    manager = _manager(tasks_dir, True)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}; local tasks in {tasks_dir}: {sorted(local.all_tasks)}")
    return manager


def load_task(name: str, tasks_dir: str):
    manager = task_manager(tasks_dir, [name])
    try:
        return manager.load([name])["tasks"][name]
    except Exception as error:  # hub tasks need a network
        raise RuntimeError(
            f"could not load lm-eval task {name!r} ({type(error).__name__}: {error}); "
            "hub tasks need network access, the shipped unlock_* tasks do not"
        ) from error


def _docs(task: Any, split: str) -> list[dict]:
    if split not in SPLIT_DOCS:
        raise ValueError(f"prompt split {split!r} is not allowed; allowed: {', '.join(SPLIT_DOCS)}")
    has = {"train": task.has_training_docs, "validation": task.has_validation_docs, "test": task.has_test_docs}[split]
    if not has():
        raise ValueError(f"task {task.config.task!r} has no {split} split to draw prompts from")
    return list(getattr(task, SPLIT_DOCS[split])())


def render(task: Any, doc: dict) -> str:
    return task.fewshot_context(doc, num_fewshot=0)


def build_prompt_sets(
    locked_task: str,
    unlocked_task: str,
    split: str,
    n_prompts: int,
    n_heldout: int,
    seed: int,
    tasks_dir: str,
    n_shots: int = 0,
) -> PromptSets:
    """N seeded-random questions of ``split`` in both forms, plus ``n_heldout`` other ones. With
    ``n_shots`` > 0 (the paper's in-context variant) every Unlocked prompt is preceded by that many
    worked examples: further items of the same split, fixed by ``seed``, none of them a fit or
    held-out question."""
    locked, unlocked = load_task(locked_task, tasks_dir), load_task(unlocked_task, tasks_dir)
    docs = _docs(locked, split)
    unlocked_docs = _docs(unlocked, split)
    if len(unlocked_docs) != len(docs):
        raise ValueError(f"tasks {locked_task!r} and {unlocked_task!r} have different {split} splits")
    needed = n_prompts + n_heldout + n_shots
    if needed > len(docs):
        terms = "capability.n_prompts + capability.n_heldout" + (" + capability.n_shots" if n_shots else "")
        raise ValueError(
            f"{terms} = {needed} is out of range: the {split} split of {locked_task!r} has {len(docs)} items"
        )
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    fit, held, shots = (
        order[:n_prompts],
        order[n_prompts : n_prompts + n_heldout],
        order[n_prompts + n_heldout : needed],
    )
    context = "".join(worked_example(unlocked, unlocked_docs[i]) for i in shots)
    return PromptSets(
        locked=[render(locked, docs[i]) for i in fit],
        unlocked=[context + render(unlocked, unlocked_docs[i]) for i in fit],
        heldout_locked=[render(locked, docs[i]) for i in held],
    )


def worked_example(task: Any, doc: dict) -> str:
    """One in-context example: the Unlocked prompt, its worked solution and the final-answer phrase."""
    solution = str(doc.get("solution") or "").strip()
    if not solution:
        raise ValueError(
            f"capability.n_shots > 0 needs worked solutions, but task {task.config.task!r} has items "
            f"without one (no 'solution' field); benchmarks with worked solutions: {', '.join(WORKED_SOLUTIONS)}"
        )
    return f"{render(task, doc)}{solution}\nThe final answer is {doc['answer']}.\n\n"
