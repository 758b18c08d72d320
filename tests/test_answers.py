"""Answer extraction follows the paper's order; equivalence is mathematical (math-verify), checked on a
table of answer forms the paper's benchmarks use; the step-wise marker is not fooled by loops."""

from __future__ import annotations

import threading
import time

import pytest

from unlock.tasks import answers
from unlock.tasks.answers import (
    CHECKER,
    boxed_answer,
    check,
    extract_answer,
    is_equivalent,
    reasons_in_steps,
)
from unlock.tasks.utils import process_generation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 3 + 4 = 7. The final answer is 7.", "7"),
        ("The final answer is $1,234.", "$1,234"),
        ("so we get \\boxed{\\frac{1}{2}} in the end, i.e. 0.5 apples 3", "\\frac{1}{2}"),  # boxed beats last number
        ("I got 12, then 15 apples", "15"),  # last number as the fallback
        ("The final answer is \\boxed{42}.", "42"),
        ("The final answer is $4.5 \\times 10^{33}$.", "$4.5 \\times 10^{33}$"),
        ("Hence the answer is \\boxed 2.", "2"),  # brace-less, as two MATH train solutions write it
        ("The final answer is $-\\frac{1}{3}$.", "$-\\frac{1}{3}$"),
        ("The final answer is -1. / 3.", "-1. / 3"),  # a./b's dot is not the full stop
        ("The final answer is 3. Then 4 more", "3"),
        ("so x = -1./3 in the end", "-1./3"),  # a./b as the last number, whole
        ("the answer is 3./", "3"),
        ("no numbers here", None),
    ],
)
def test_extraction_order_phrase_then_boxed_then_last_number(text, expected):
    assert extract_answer(text) == expected


def test_brace_less_and_nested_boxed():
    assert boxed_answer("so \\boxed 2.") == "2"
    assert boxed_answer("first \\boxed{1} then \\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"
    assert boxed_answer("\\boxed{unclosed") is None and boxed_answer("none") is None


# (predicted, reference, equivalent): every category the paper's math benchmarks need.
PAIRS = [
    # plain numbers, separators, currency, percent, units, degrees
    ("3", "3", True),
    ("3.0", "3", True),
    ("6/2", "3", True),
    ("13", "3", False),
    ("-7", "7", False),
    ("-7", "-7.0", True),
    ("1,234", "1234", True),
    ("1,234,567", "1234567", True),
    ("$1,234", "1234", True),
    ("\\$3", "3", True),
    ("50\\%", "50", True),
    ("50%", "50", True),
    ("5\\text{ cm}", "5", True),
    ("30^\\circ", "30", True),
    ("0.5", "\\frac{1}{2}", True),
    ("0.25", "0.2", False),
    # fractions in every LaTeX form
    ("\\dfrac{\\pi}{3}", "\\frac{\\pi}{3}", True),
    ("\\tfrac{3}{4}", "\\frac{3}{4}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "1/2", True),
    ("3/4", "\\frac{3}{4}", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    ("\\frac{4}{6}", "\\frac{2}{3}", True),
    # radicals, rationalised forms
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("\\sqrt{2}", "2", False),
    ("3\\sqrt{2}", "\\sqrt{18}", True),
    ("\\sqrt[3]{8}", "2", True),
    # pi
    ("2\\pi", "\\pi \\cdot 2", True),
    ("\\pi", "3", False),
    ("\\frac{\\pi}{2}", "\\frac{2\\pi}{4}", True),
    # complex numbers
    ("2+3i", "3i+2", True),
    ("1", "1-i", False),
    ("1-i", "1-i", True),
    ("2i", "i+i", True),
    ("-1", "i^2", True),
    ("(1+i)^2", "2i", True),
    ("\\frac{1}{i}", "-i", True),
    ("1+i", "1-i", False),
    # scientific notation, both forms; never the leading digit
    ("4.5\\times 10^{33}", "4.5e33", True),
    ("4.5e33", "4.5\\times10^{33}", True),
    ("4", "4.5e33", False),
    ("4.5", "4.5e33", False),
    ("6.0e-3", "0.006", True),
    ("1.2\\times10^{-5}", "1.2e-5", True),
    # a leading number is never taken out of a reference answer
    ("2", "2^{1009}", False),
    ("-1", "-1-\\sqrt{3}", False),
    ("3", "3x+1", False),
    ("2^{1009}", "2^{1009}", True),
    # ordered tuples vs unordered sets; intervals, open vs closed
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("(1,2)", "(1, 2)", True),
    ("(1,2)", "(2,1)", False),
    ("[1,2)", "(1,2)", False),
    ("[0,1]", "[0, 1]", True),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(-\\infty, 3]", "(-\\infty, 3)", False),
    # equations and expressions
    ("x=3", "3", True),
    ("x = 3", "x=3", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("x^2-1", "(x-1)(x+1)", True),
    ("x^2+1", "x^2-1", False),
    ("x + 1", "x+1", True),
    # a word-problem answer with its unit (the prediction's number; never a reference's leading one)
    ("8 stickers", "8", True),
    ("15 years old", "15", True),
    ("5 shells", "5", True),
    ("18 dollars", "18", True),
    ("$1,200 dollars", "1200", True),
    ("8 stickers", "9", False),
    ("2 x", "2", False),
    # a./b, a Python float fraction (Qwen2.5-Math's Minerva items 38 and 49), on either side
    ("-\\frac{1}{3}", "-1./3", True),
    ("-1", "-1./3", False),
    ("-1.5", "-3./2", True),
    ("-3", "-3./2", False),
    ("-1./3", "-\\frac{1}{3}", True),
    ("1/3", "1. / 3", True),
    ("3.", "3", True),
    ("2.5/3", "0.8333333", True),
    # no answer, unparsable text
    (None, "3", False),
    ("", "3", False),
    ("banana split", "3", False),
]


@pytest.mark.parametrize(("predicted", "reference", "equal"), PAIRS, ids=[f"{p}~{r}" for p, r, _ in PAIRS])
def test_mathematical_equivalence(predicted, reference, equal):
    assert is_equivalent(predicted, reference) is equal


def test_the_table_is_large_and_balanced():
    assert len(PAIRS) >= 60
    assert 25 <= sum(equal for *_, equal in PAIRS) <= len(PAIRS) - 20


def test_unparsable_is_counted_not_raised():
    result = check("\\frac{", "\\frac{1}{2}")
    assert not result.equivalent and not result.parsed
    assert check("\\frac{1}{2}", "0.5").parsed


def test_checker_works_off_the_main_thread():
    """math-verify's timeout uses SIGALRM, which only the main thread may set."""
    found: list[bool] = []
    worker = threading.Thread(target=lambda: found.append(is_equivalent("\\dfrac{1}{4}", "0.25")))
    worker.start()
    worker.join()
    assert found == [True]


def test_checker_is_named_with_its_version():
    assert CHECKER.startswith("math-verify ") and CHECKER.split()[1][0].isdigit()


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
    metrics = process_generation(
        {"answer": "25"}, ["First, 35 - 10 = 25.\nSo Ava has 25 left.\nThe final answer is 25."]
    )
    assert metrics == {
        "acc": 1.0,
        "gen_words": 16.0,
        "stepwise": 1.0,
        "has_final_phrase": 1.0,
        "unparsable": 0.0,
        "checker_timeout": 0.0,
    }
    assert process_generation({"answer": "25"}, ["The final answer is \\frac{."])["unparsable"] == 1.0


@pytest.mark.parametrize(
    ("response", "acc"),
    [
        ("So x = -1/3.\nThe final answer is $-\\frac{1}{3}$.", 1.0),
        ("So x = -1.\nThe final answer is $-1$.", 0.0),
        ("So x = -1/3.\nThe final answer is -1./3.", 1.0),
    ],
)
def test_dot_fraction_reference_through_extraction(response, acc):
    """Minerva (Qwen2.5-Math) items 38 and 49 hold -1./3 and -3./2: the fraction, not -1 and -3."""
    metrics = process_generation({"answer": "-1./3"}, [response])
    assert metrics["acc"] == acc and metrics["unparsable"] == 0.0 and metrics["checker_timeout"] == 0.0


@pytest.fixture
def fresh_checker():
    """The checker's caches cleared before and after, so forced verdicts neither meet nor leave stale ones."""
    check.cache_clear()
    answers._parse.cache_clear()
    yield
    check.cache_clear()
    answers._parse.cache_clear()


def test_comparison_timeout_scores_zero_and_is_counted(monkeypatch, fresh_checker):
    """A real SIGALRM timeout inside math-verify's verify (its comparison made slow; sympy_expr_eq is
    math-verify's internal comparison, patched only here): not equal, counted, not unparsable. Guards
    that verify(raise_on_error=True) raises math_verify.errors.TimeoutException on a timeout."""
    import math_verify.grader

    def slow(*_args, **_kwargs):
        time.sleep(10)  # the 1 s alarm interrupts it
        return True

    monkeypatch.setattr(answers, "TIMEOUT_SECONDS", 1)
    monkeypatch.setattr(math_verify.grader, "sympy_expr_eq", slow)
    verdict = check("2\\sqrt{3}", "\\sqrt{12}")  # equal, but the comparison never finishes
    assert verdict == answers.Check(False, parsed=True, timed_out=True)
    metrics = process_generation({"answer": "\\sqrt{12}"}, ["Step 1: work.\nThe final answer is 2\\sqrt{3}."])
    assert metrics["acc"] == 0.0 and metrics["checker_timeout"] == 1.0 and metrics["unparsable"] == 0.0


def test_parse_timeout_scores_zero_and_is_counted(monkeypatch, fresh_checker):
    """A parse that times out (math-verify's alarm handler raises TimeoutException inside it) is not
    equal and counted; it is not cached, so the next try parses again."""
    import math_verify.parser
    from math_verify.errors import TimeoutException

    real = math_verify.parser.extract_target_from_pred

    def timing_out(pred, *args, **kwargs):
        if "7" in pred:
            raise TimeoutException("Operation timed out!")  # what math-verify's SIGALRM handler raises
        return real(pred, *args, **kwargs)

    monkeypatch.setattr(math_verify.parser, "extract_target_from_pred", timing_out)
    assert check("7", "\\frac{14}{2}") == answers.Check(False, parsed=False, timed_out=True)  # prediction
    assert check("\\frac{14}{2}", "7").timed_out  # reference
    assert check("7", "7") == answers.Check(True, parsed=False, timed_out=False)  # identical texts still equal
    metrics = process_generation({"answer": "14/2"}, ["The final answer is 7."])
    assert metrics["acc"] == 0.0 and metrics["checker_timeout"] == 1.0 and metrics["unparsable"] == 0.0
    monkeypatch.setattr(math_verify.parser, "extract_target_from_pred", real)
    check.cache_clear()
    assert check("7", "\\frac{14}{2}") == answers.Check(True, parsed=True, timed_out=False)


def test_other_checker_errors_are_not_equal_not_timeouts(monkeypatch, fresh_checker):
    """raise_on_error=True is only for timeouts: any other error in a comparison is "not equal", as
    math-verify's default, and is not counted as a timeout."""
    import math_verify.grader

    def broken(*_args, **_kwargs):
        raise RuntimeError("sympy failed")

    monkeypatch.setattr(math_verify.grader, "sympy_expr_eq", broken)
    assert check("2\\sqrt{3}", "\\sqrt{12}") == answers.Check(False, parsed=True, timed_out=False)
