"""Answer extraction and equivalence as the paper scores them.

The model is asked to end with "The final answer is ...". The answer is read from that phrase, else
from a LaTeX \\boxed{...}, else the last number in the text; it is compared by mathematical
equivalence (3, 3.0, 6/2 and "$3" are equal), not by string match.
"""

from __future__ import annotations

import re
from fractions import Fraction

_FINAL_ANSWER = re.compile(r"final answer is[:\s]*\$?\s*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_STEP_MARKER = re.compile(r"(?i)^(?:step\s*\d+|\d+[.)]\s|first\b|then\b|next\b|so\b|now\b|finally\b)")
_ARITHMETIC = re.compile(r"\d\s*[-+*/x×÷]\s*\d")


def boxed_answer(text: str) -> str | None:
    """The content of the last \\boxed{...} (nested braces kept), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
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


def to_number(text: str) -> Fraction | None:
    """Parse '1,234', '$3.50', '-7', '6/2', '\\frac{3}{4}' into an exact Fraction."""
    cleaned = text.strip().replace("$", "").replace(",", "").replace("\\!", "").replace(" ", "")
    cleaned = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"(\1)/(\2)", cleaned)
    cleaned = cleaned.replace("(", "").replace(")", "").rstrip(".")
    cleaned = re.sub(r"(?:\\%|%)$", "", cleaned)
    match = re.fullmatch(r"(-?\d*\.?\d+)(?:/(-?\d*\.?\d+))?", cleaned)
    if not match:
        # A number followed by units or words ("12 apples"): take the leading number.
        lead = re.match(r"(-?\d+(?:\.\d+)?(?:/\d+)?)\b", cleaned) or re.match(r"(-?\d+(?:\.\d+)?)", text.replace(",", "").strip())
        if not lead:
            return None
        return to_number(lead.group(1))
    try:
        value = Fraction(match.group(1))
        if match.group(2) is not None:
            value /= Fraction(match.group(2))
    except (ValueError, ZeroDivisionError):
        return None
    return value


def is_equivalent(predicted: str | None, reference: str) -> bool:
    """Mathematical equivalence for numbers, normalised string equality otherwise."""
    if predicted is None:
        return False
    a, b = to_number(predicted), to_number(reference)
    if a is not None and b is not None:
        return a == b
    normalise = lambda s: re.sub(r"[\s$.]", "", s).lower()  # noqa: E731
    return normalise(predicted) == normalise(reference)


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
