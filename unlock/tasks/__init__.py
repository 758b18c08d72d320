"""Local lm-eval tasks shipped with the harness; pass TASKS_DIR to TaskManager(include_path=...)."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

# benchmark.source: where a benchmark's items come from. ``hub``: the dataset hub ids in
# unlock/tasks/hub/unlock_<name>.yaml (the default). ``qwen25_math``: the research code's item sets,
# Qwen2.5-Math's evaluation files at a pinned commit (tasks unlock_<name>_q25*), for these benchmarks.
ITEM_SETS = {"hub": None, "qwen25_math": ("minerva_math", "olympiadbench", "gaokao2023en", "amc23", "math")}


# Benchmarks whose items carry worked solutions (a ``solution`` field), for capability=icl.
WORKED_SOLUTIONS = ("arith", "gsm8k", "math")


def source_task(task: str, benchmark: str, source: str) -> str:
    """The lm-eval task of ``benchmark`` (direct or _cot ``task``) in the item set ``source``."""
    if source not in ITEM_SETS:
        raise ValueError(f"benchmark.source {source!r} is not allowed; allowed: {', '.join(ITEM_SETS)}")
    allowed = ITEM_SETS[source]
    if allowed is None:
        return task
    if benchmark not in allowed:
        raise ValueError(f"benchmark.source={source} has no items for benchmark {benchmark!r}; "
                         f"it covers: {', '.join(allowed)}")
    direct = f"unlock_{benchmark}"
    return f"{direct}_q25{task[len(direct):]}"
