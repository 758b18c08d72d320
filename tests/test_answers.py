"""Answer extraction and equivalence follow the paper's rules; the step-wise marker is not fooled by loops."""

from __future__ import annotations

import pytest

from unlock.tasks.answers import extract_answer, is_equivalent, reasons_in_steps, to_number
from unlock.tasks.utils import process_generation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 3 + 4 = 7. The final answer is 7.", "7"),
        ("The final answer is $1,234.", "1,234"),
        ("so we get \\boxed{\\frac{1}{2}} in the end, i.e. 0.5 apples 3", "\\frac{1}{2}"),  # boxed beats last number
        ("I got 12, then 15 apples", "15"),  # last number as the fallback
        ("The final answer is \\boxed{42}.", "42"),
        ("no numbers here", None),
    ],
)
def test_extraction_order_phrase_then_boxed_then_last_number(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("predicted", "reference", "equal"),
    [("6/2", "3", True), ("3.0", "3", True), ("$1,234", "1234", True), ("\\frac{3}{4}", "0.75", True),
     ("12 apples", "12", True), ("-7", "7", False), ("x + 1", "x+1", True), (None, "3", False), ("13", "3", False)],
)
def test_mathematical_equivalence(predicted, reference, equal):
    assert is_equivalent(predicted, reference) is equal


def test_to_number_rejects_words():
    assert to_number("seven") is None


@pytest.mark.parametrize(
    ("text", "stepwise"),
    [
        ("First, Ava has 35 apples.\nThen she gives 10 away, so 35 - 10 = 25.\nThe final answer is 25.", True),
        ("1. Emma has 38 marbles.\n2. Ben gives Emma 29 more marbles.\n", True),
        ("Answer:\nAnswer:\nAnswer:\nAnswer:", False),
        ("10\nAnswer:\n10\nAnswer:\n10", False),
        ("1.\n2.\n3.\n4.", False),
        ("The final answer is 25.", False),
        ("Ava has 35 apples and gives away 10 of them.\nAva has 35 apples and gives away 10 of them.", False),
    ],
)
def test_reasons_in_steps(text, stepwise):
    assert reasons_in_steps(text) is stepwise


def test_process_generation_scores_one_sample():
    metrics = process_generation({"answer": "25"}, ["First, 35 - 10 = 25.\nSo Ava has 25 left.\nThe final answer is 25."])
    assert metrics == {"acc": 1.0, "gen_words": 16.0, "stepwise": 1.0, "has_final_phrase": 1.0}
