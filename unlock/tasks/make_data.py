"""Make the shipped local task data (fixed seed): arithmetic word problems, a multiple-choice set, and
the planted control's additions (reserved problems its models never trained on: unlock.models.planted).

Run `python -m unlock.tasks.make_data` to regenerate; the output is deterministic. Splits are drawn
from one pool of distinct questions and never overlap: train (extraction and alignment prompts),
validation (choosing N, rank, alpha) and test (reporting).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from unlock.models.planted import task_items

DATA_DIR = Path(__file__).parent / "data"
SEED = 20260406
SPLIT_SIZES = {"train": 200, "validation": 80, "test": 120}

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jun", "Kofi", "Lena"]
_ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "shells", "cookies", "coins", "cards", "stamps"]


def _word_problem(rng: random.Random) -> tuple[str, int, str]:
    """(question, answer, worked solution); the solution draws nothing from ``rng``, so adding it left
    every question and answer of the shipped files as it was."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.choice(["add", "sub", "mul", "two_step", "share"])
    a, b = rng.randint(2, 40), rng.randint(2, 30)
    if kind == "add":
        return (f"{name} has {a} {item}. {other} gives {name} {b} more {item}. How many {item} does {name} have now?",
                a + b, f"{name} starts with {a} {item} and gets {b} more: {a} + {b} = {a + b}.")
    if kind == "sub":
        a = a + b
        return (f"{name} has {a} {item} and gives {b} of them to {other}. How many {item} does {name} have left?",
                a - b, f"{name} starts with {a} {item} and gives away {b}: {a} - {b} = {a - b}.")
    if kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        return (f"{name} buys {a} boxes with {b} {item} in each box. How many {item} does {name} buy?", a * b,
                f"{a} boxes with {b} {item} in each box: {a} x {b} = {a * b}.")
    if kind == "share":
        b = rng.randint(2, 6)
        a = b * rng.randint(2, 12)
        return (f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
                a // b, f"{a} {item} shared equally among {b} friends: {a} / {b} = {a // b}.")
    c = rng.randint(1, min(a + b, 20))
    return (
        f"{name} has {a} {item}, buys {b} more, and then gives {c} to {other}. "
        f"How many {item} does {name} have now?",
        a + b - c,
        f"{name} has {a} + {b} = {a + b} {item}, then gives away {c}: {a + b} - {c} = {a + b - c}.",
    )


def _distinct(rng: random.Random, make, total: int) -> list:
    seen: set[str] = set()
    rows = []
    while len(rows) < total:
        row = make(rng)
        if row[0] not in seen:
            seen.add(row[0])
            rows.append(row)
    return rows


def _split(rows: list) -> dict[str, list]:
    out, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        out[split] = rows[start : start + size]
        start += size
    return out


def _mc_question(rng: random.Random) -> tuple[str, list[str], int]:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    op = rng.choice(["+", "-"])
    answer = a + b if op == "+" else a - b
    distractors = rng.sample([d for d in range(answer - 9, answer + 10) if d != answer], 3)
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return f"What is {a} {op} {b}?", [str(c) for c in choices], choices.index(answer)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    total = sum(SPLIT_SIZES.values())
    problems = _split(_distinct(rng, _word_problem, total))
    for split, rows in problems.items():
        write_jsonl(
            DATA_DIR / f"arith_{split}.jsonl",
            [{"id": f"arith-{split}-{i}", "question": q, "answer": str(a), "solution": s}
             for i, (q, a, s) in enumerate(rows)],
        )
    mc = _split(_distinct(rng, _mc_question, total))
    for split, rows in mc.items():
        write_jsonl(
            DATA_DIR / f"mc_{split}.jsonl",
            [{"id": f"mc-{split}-{i}", "question": q, "choices": c, "label": l} for i, (q, c, l) in enumerate(rows)],
        )
    planted = _split(task_items(total, SEED))
    for split, rows in planted.items():
        write_jsonl(
            DATA_DIR / f"planted_{split}.jsonl",
            [
                {"id": f"planted-{split}-{i}", "question": f"{r['verb']} {r['a']} and {r['b']}", "answer": r["answer"]}
                for i, r in enumerate(rows)
            ],
        )
    print(f"wrote {sorted(p.name for p in DATA_DIR.glob('*.jsonl'))} to {DATA_DIR}")


if __name__ == "__main__":
    main()
