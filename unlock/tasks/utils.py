"""Hooks the shipped lm-eval task YAMLs call (`!function utils.*`).

Data paths are resolved from this file, so the tasks work from any working directory (Hydra changes it).
"""

from __future__ import annotations

from pathlib import Path

from unlock.tasks.answers import check, extract_answer, reasons_in_steps

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "validation", "test")


def load_splits(name: str, **_metadata):
    """A DatasetDict of the shipped JSONL splits named ``{name}_{split}.jsonl``."""
    import datasets

    files = {split: str(DATA_DIR / f"{name}_{split}.jsonl") for split in SPLITS}
    missing = [path for path in files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"missing task data {missing}; regenerate with `python -m unlock.tasks.make_data`")
    return datasets.load_dataset("json", data_files=files)


def process_generation(doc: dict, results: list[str]) -> dict[str, float]:
    """Accuracy by mathematical equivalence, behaviour metrics that show whether CoT moved, the share
    of extracted answers the checker could not parse, and the share whose parse or comparison timed
    out (both scored wrong, counted here; a timed-out answer is not also counted as unparsable)."""
    text = results[0]
    predicted = extract_answer(text)
    verdict = check(predicted, doc["answer"])
    return {
        "acc": float(verdict.equivalent),
        "gen_words": float(len(text.split())),
        "stepwise": float(reasons_in_steps(text)),
        "has_final_phrase": float("final answer is" in text.lower()),
        "unparsable": float(predicted is not None and not verdict.parsed and not verdict.timed_out),
        "checker_timeout": float(verdict.timed_out),
    }
