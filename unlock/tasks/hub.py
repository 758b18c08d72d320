"""Hub benchmarks of the paper in one format: ``{"question", "answer"}`` rows with disjoint
train / validation / test splits.

The dataset, its configs and splits are named in each task YAML (``dataset_kwargs``), so a user
can point a task at a mirror without touching code; only the field mapping lives here.

Splits: where the hub has a train split, validation is a seeded sample of it and test is the hub's
test split. Where it has only one split (AGIEval-Math, Minerva, OlympiadBench, ...), the research
code drew extraction prompts from the test file; here train and validation are carved from it by a
seeded shuffle and the remaining items are the test split, so extraction, selection and test items
never overlap (the reported test set is smaller than the paper's by the carved items).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from unlock.tasks.answers import boxed_answer

SPLIT_SEED = 20260406
_QUESTION_FIELDS = ("question", "problem", "Question", "query", "input")
_ANSWER_FIELDS = ("answer", "final_answer", "Answer", "target", "output")


def _number_text(value: Any) -> str:
    """145.0 -> '145' (SVAMP stores integers as floats); other values as text."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):  # OlympiadBench: final_answer[0], math mode stripped
        return _number_text(value[0]).strip("$ ") if value else ""
    return str(value).strip()


class NoAnswer(ValueError):
    """A row whose answer field is empty or missing: dropped and counted, not fatal (gaokao2023en
    has two such rows)."""


# {dataset path: {split: rows dropped}}, filled as benchmarks load; results.json and the dry run report it.
DROPPED: dict[str, dict[str, int]] = {}


def dropped_rows() -> dict[str, dict[str, int]]:
    """A copy of the counts so far, for a record."""
    return {path: dict(splits) for path, splits in DROPPED.items()}


def _first_field(row: dict, names: tuple[str, ...], what: str) -> Any:
    present = [name for name in names if name in row]
    for name in present:
        if row[name] not in (None, "", []):
            return row[name]
    if present:
        raise NoAnswer(f"empty {what} in fields {present}")
    raise KeyError(f"no {what} field among {list(names)} in a row with columns {sorted(row)}")


def generic_fields(row: dict) -> dict[str, str]:
    """Question and answer under their usual names (a list answer takes its first element)."""
    answer = _number_text(_first_field(row, _ANSWER_FIELDS, "answer"))
    if not answer:
        raise NoAnswer("empty answer")
    fields = {"question": str(_first_field(row, _QUESTION_FIELDS, "question")).strip(), "answer": answer}
    if isinstance(row.get("solution"), str) and row["solution"].strip():
        fields["solution"] = row["solution"].strip()  # worked solutions, for capability=icl
    return fields


def gsm8k_fields(row: dict) -> dict[str, str]:
    """GSM8K's answer is a worked solution ending in '#### <number>' (kept for in-context examples)."""
    solution, _, answer = row["answer"].rpartition("####")
    return {"question": row["question"].strip(), "answer": answer.strip().replace(",", ""), "solution": solution.strip()}


def math_fields(row: dict) -> dict[str, str]:
    """MATH (and Qwen2.5-Math's Minerva file) keep the answer as the last \\boxed{} of the solution."""
    solution = str(row.get("solution") or "")
    answer = boxed_answer(solution)  # \\boxed{...}, or the brace-less \\boxed 2 of two train rows
    if not answer:
        raise NoAnswer(f"solution without a \\boxed answer: {solution[:80]!r}")
    return {"question": str(_first_field(row, _QUESTION_FIELDS, "question")).strip(), "answer": answer.strip(),
            "solution": solution.strip()}


def svamp_fields(row: dict) -> dict[str, str]:
    """SVAMP splits the problem into a body and a question."""
    question = row.get("question_concat") or f"{row['Body'].strip()} {row['Question'].strip()}"
    return {"question": question.strip(), "answer": _number_text(row["Answer"])}


def agieval_fields(row: dict) -> dict[str, str]:
    """AGIEval's ``query`` wraps the problem as 'Q: ... A: The answer is'; keep the problem."""
    query = str(row.get("question") or row["query"]).strip()
    query = query.removeprefix("Q:").strip()
    for tail in ("A: The answer is", "A:"):
        if query.endswith(tail):
            query = query[: -len(tail)].strip()
            break
    return {"question": query, "answer": _number_text(row["answer"])}


FIELDS: dict[str, Callable[[dict], dict[str, str]]] = {
    "generic": generic_fields, "gsm8k": gsm8k_fields, "math": math_fields, "svamp": svamp_fields,
    "agieval": agieval_fields,
}


def carve(n_items: int, sizes: list[int], seed: int = SPLIT_SEED) -> list[list[int]]:
    """Seeded disjoint index sets of the given sizes, then the rest (the last set)."""
    if sum(sizes) >= n_items:
        raise ValueError(f"cannot carve {sizes} items out of {n_items}: nothing would be left for test")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for size in sizes:
        parts.append(sorted(order[start : start + size]))
        start += size
    parts.append(sorted(order[start:]))
    return parts


def split_rows(train: list[dict] | None, test: list[dict], carve_train: int, carve_validation: int,
               seed: int = SPLIT_SEED) -> dict[str, list[dict]]:
    """train / validation / test rows, never overlapping (see the module docstring)."""
    if train is not None:
        validation_ids, train_ids = carve(len(train), [carve_validation], seed)
        return {"train": [train[i] for i in train_ids], "validation": [train[i] for i in validation_ids], "test": test}
    train_ids, validation_ids, test_ids = carve(len(test), [carve_train, carve_validation], seed)
    return {"train": [test[i] for i in train_ids], "validation": [test[i] for i in validation_ids],
            "test": [test[i] for i in test_ids]}


def load_hub_splits(path: str, fields: str = "generic", configs: list[str | None] | None = None,
                    train_split: str | None = None, test_split: str = "test", carve_train: int = 0,
                    carve_validation: int = 100, data_files: str | None = None, **_metadata):
    """A DatasetDict with disjoint train/validation/test splits of a hub benchmark (needs network).
    With ``data_files`` (path ``json``), a JSONL file by URL through datasets' json builder (the
    benchmark.source=qwen25_math item sets)."""
    import datasets

    if fields not in FIELDS:
        raise ValueError(f"fields {fields!r} is not allowed; allowed: {', '.join(FIELDS)}")
    normalise = FIELDS[fields]

    def rows(split: str) -> list[dict]:
        out, dropped = [], 0
        for name in configs or [None]:
            extra = {"data_files": data_files} if data_files else {}
            for row in datasets.load_dataset(path, name, split=split, **extra):
                try:
                    out.append(normalise(dict(row)))
                except NoAnswer:
                    dropped += 1
        DROPPED.setdefault(data_files or path, {})[split] = dropped
        return out

    parts = split_rows(rows(train_split) if train_split else None, rows(test_split), carve_train, carve_validation)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(items) for split, items in parts.items()})
