"""Answer extraction and equivalence as the paper scores them.

The model is asked to end with "The final answer is ...". The answer is read from that phrase, else
from a LaTeX \\boxed{...}, else the last number in the text (the paper's order). It is compared with
the reference by mathematical equivalence through HuggingFace's math-verify (sympy and a LaTeX
parser), as the research code compared with a sympy grader: 3, 3.0, 6/2 and "$3" are equal;
\\dfrac{\\pi}{3} and \\frac{\\pi}{3}; 2\\sqrt{3} and \\sqrt{12}; x=3 and 3; sets in any order; but
not 2 and 2^{1009}, nor open and closed intervals. Nothing is taken out of a reference answer but the
whole of it. A number with a trailing dot over another, as Python writes a float fraction (-1./3 in
Qwen2.5-Math's Minerva file), is that fraction on either side.

A parse or comparison that runs past the timeout scores as not equal and is reported
(``Check.timed_out``; the per-sample ``checker_timeout`` metric).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from itertools import product

from math_verify import parse, verify
from math_verify.errors import TimeoutException

CHECKER = f"math-verify {version('math-verify')}"
TIMEOUT_SECONDS = 3  # per parse and per comparison, as the research code's grader; main thread only

# The phrase ends at a full stop, but not at the dot of "-1. / 3" (see _DOT_FRACTION).
_FINAL_ANSWER = re.compile(r"final answer is[:\s]*(.+?)(?:\.\s(?!\s*/\s*\d)|\.$|\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\.?\s*/\s*\d+)?|-?\.\d+")
# a./b: a number with a trailing dot over a number, a Python float fraction (-1./3, -3. / 2) in
# Qwen2.5-Math's Minerva file; the parser would read -1./3 as -1. Needs a digit on both sides, so
# "3." alone, 2.5/3 and a sentence's full stop are left alone.
_DOT_FRACTION = re.compile(r"(?<=\d)\.\s*/\s*(?=\d)")
_STEP_MARKER = re.compile(r"(?i)^(?:step\s*\d+|\d+[.)]\s|first\b|then\b|next\b|so\b|now\b|finally\b)")
_ARITHMETIC = re.compile(r"\d\s*[-+*/x×÷]\s*\d")
_E_NOTATION = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
# A plain number followed by words ("8 stickers", "15 years old"): word-problem answers with a unit.
_NUMBER_WITH_WORDS = re.compile(r"\s*(-?\$?\s*[\d,]*\.?\d+)\s+[A-Za-z]{2,}(?:[\s.,'-]+[A-Za-z]+)*\s*")
_IMAGINARY = re.compile(r"(?<![A-Za-z\\])i(?![A-Za-z])")
_BARE_FRAC = re.compile(r"\\([dt]?frac)\s*(\d|\{[^{}]*\})\s*(\d|\{[^{}]*\})")


def boxed_answer(text: str) -> str | None:
    """The content of the last \\boxed{...} (nested braces kept) or of a brace-less \\boxed 2; None if
    there is none."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = start + len("\\boxed")
    if text[i : i + 1] != "{":
        bare = re.match(r"\s+([^\s$]+)", text[i:])  # \boxed 2, as two MATH train solutions write it
        return bare.group(1).rstrip(".,;") if bare else None
    depth, i = 1, i + 1
    begin = i
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[begin : i - 1] if depth == 0 else None


def extract_answer(text: str) -> str | None:
    """The final-answer phrase, else a boxed answer, else the last number; None if there is none."""
    phrase = _FINAL_ANSWER.findall(text)
    if phrase:
        candidate = phrase[-1].strip()
        boxed = boxed_answer(candidate)
        return (boxed if boxed is not None else candidate).strip().rstrip(".")
    boxed = boxed_answer(text)
    if boxed is not None:
        return boxed.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def normalise(answer: str) -> str:
    """What the LaTeX parser is given: no math-mode dollars or currency signs, e-notation as
    \\times 10^{...} (in LaTeX 4.5e33 reads as 4.5 * e * 33), \\frac12 with its braces, and a lone i
    as the imaginary unit (the parser reads I as one; i would be a variable, so i^2 != -1), and a./b
    as a/b (-1./3 is -1/3, not -1)."""
    text = answer.strip().replace("\\$", "").replace("$", "").strip().rstrip(".")
    text = _DOT_FRACTION.sub("/", text)
    text = _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times 10^{{{m.group(2)}}}", text)
    text = _IMAGINARY.sub("(I)", text)  # bracketed: the parser drops a superscript right after I
    return _BARE_FRAC.sub(lambda m: f"\\{m.group(1)}{{{m.group(2).strip('{}')}}}{{{m.group(3).strip('{}')}}}", text)


@dataclass(frozen=True)
class Check:
    equivalent: bool
    parsed: bool  # the prediction became mathematics (else only the normalised texts were compared)
    timed_out: bool = False  # a parse or comparison ran out of time and the verdict is "not equal"


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which only the main thread may set; elsewhere it must run
    # without one rather than fail.
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


# Timeouts are seen through math-verify's documented ``raise_on_error=True`` and its exception
# (math_verify.errors.TimeoutException), never its log line: by default parse() and verify() log
# "Timeout during ..." and return [] / False, a timeout indistinguishable from a wrong answer. With
# raise_on_error every other error raises too; those are caught and given math-verify's default
# result ([] for a parse, False for a comparison), so only timeouts behave differently.
# tests/test_answers.py guards this against a real SIGALRM timeout.


@lru_cache(maxsize=65536)
def _parse(answer: str) -> tuple:
    """math-verify's parse of the normalised answer; a timeout raises TimeoutException and is not
    cached (it may be load), so another comparison with the same answer parses it again."""
    try:
        return tuple(parse(f"${normalise(answer)}$", parsing_timeout=_timeout(), raise_on_error=True))
    except Exception:  # TimeoutException is a BaseException and passes
        return ()


def _parsed(answer: str) -> tuple | None:
    """The parse, or None if it timed out."""
    try:
        return _parse(answer)
    except TimeoutException:
        return None


def _verify(gold: tuple, pred: tuple) -> tuple[bool, bool]:
    """(equal, timed_out): math-verify's verify(gold, pred), any pair of the two parses equal, pair by
    pair in its order so that a timeout is seen and the other pairs are still compared."""
    timed_out = False
    for g, t in product(gold, pred):
        try:
            if verify(g, t, timeout_seconds=_timeout(), raise_on_error=True):
                return True, timed_out
        except TimeoutException:
            timed_out = True
        except Exception:  # math-verify's default: an error is "not equal"
            pass
    return False, timed_out


@lru_cache(maxsize=65536)
def check(predicted: str | None, reference: str) -> Check:
    """Whether ``predicted`` equals ``reference`` mathematically. ``parsed`` says whether the
    prediction became mathematics; unparsable answers are not equivalent (unless the normalised texts
    are identical) and say so, never raise. A parse or comparison that times out is not equivalent
    (again unless the texts are identical) and sets ``timed_out``. A predicted number followed by
    plain words ("8 stickers") is that number; a reference is always taken whole."""
    if predicted is None or not str(reference).strip():
        return Check(False, parsed=predicted is None)
    unit = _NUMBER_WITH_WORDS.fullmatch(str(predicted))
    if unit:
        predicted = unit.group(1)
    gold, pred = _parsed(str(reference)), _parsed(str(predicted))
    parsed = bool(pred) and not isinstance(pred[0], str)
    if gold is None or pred is None or not (gold and pred):
        same = normalise(str(predicted)) == normalise(str(reference))
        return Check(same, parsed=parsed, timed_out=(gold is None or pred is None) and not same)
    equal, timed_out = _verify(gold, pred)
    return Check(equal, parsed=parsed, timed_out=timed_out and not equal)


def is_equivalent(predicted: str | None, reference: str) -> bool:
    """Mathematical equivalence of an extracted answer and a reference answer."""
    return check(predicted, reference).equivalent


def reasons_in_steps(text: str) -> bool:
    """Whether a generation works through intermediate steps before its answer (a CoT marker).

    Needs at least two distinct lines of three or more words before the final-answer phrase, and a
    step marker (Step 1, "1. ", First/Then/So...) or an arithmetic expression among them. Echo
    loops ("Answer:\nAnswer:...") and bare numbers or enumerations do not count.
    """
    before = re.split(r"(?i)final answer is", text)[0]
    lines = list(dict.fromkeys(line.strip() for line in before.splitlines()))
    content = [line for line in lines if len(line.split()) >= 3]
    return len(content) >= 2 and any(_STEP_MARKER.match(line) or _ARITHMETIC.search(line) for line in content)
