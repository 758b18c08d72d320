"""The paper's reported numbers (unlock/analysis/paper_numbers.yaml), for the resolved config and the report."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.yaml"


@lru_cache(maxsize=1)
def load_paper_numbers() -> dict[str, Any]:
    return yaml.safe_load(PAPER_NUMBERS.read_text())


def paper_numbers(setup: str | None, benchmark: str | None = None) -> dict[str, Any]:
    """The paper's accuracies (%) for a setup (and benchmark); {} for runs that reproduce no setup.
    Also the ``${unlock_paper:setup,benchmark}`` resolver, so a preset's config shows its targets."""
    if setup in (None, "", "None", "null"):
        return {}
    setups = load_paper_numbers()
    if setup not in setups:
        raise ValueError(f"paper.setup {setup!r} is not in {PAPER_NUMBERS.name}; allowed: {', '.join(setups)}")
    results = setups[setup]["results"]
    if benchmark is None:
        return results
    return dict(results.get(benchmark, {}))


def paper_gains(setup: str | None, benchmark: str, task: str) -> dict[tuple[str, str, str], float]:
    """The paper's accuracy differences (as fractions) between every two conditions it reports on ``task``
    (the benchmark's Locked task, which its numbers are for): {(condition, task, baseline): gain}; the
    paired comparisons look up the pairs they make."""
    numbers = paper_numbers(setup, benchmark)
    return {
        (condition, task, baseline): (numbers[condition] - numbers[baseline]) / 100
        for condition in numbers
        for baseline in numbers
        if baseline != condition
    }
