"""Sweep selection by a configurable objective, on rows like the aggregate's."""

from __future__ import annotations

import pytest

from tests.helpers import compose_run
from unlock.track import OBJECTIVES, select_best


def _row(job, acc, stepwise, beat, cos, split="validation", condition="unlock"):
    return {"job": job, "status": "ok", "split": split, "condition": condition, "acc": acc, "stepwise": stepwise,
            "gen_words": 10.0, "layers_beating_null": beat, "fidelity": cos, "alpha": float(job)}


ROWS = [_row("1", 0.125, 0.0, 0, 0.1), _row("2", 0.0, 0.5, 3, 0.2), _row("3", 0.0, 0.1, 9, 0.3),
        _row("4", 1.0, 1.0, 18, 0.9, split="test"), _row("5", 1.0, 1.0, 18, 0.9, condition="random")]


@pytest.mark.parametrize(("objective", "job"), [("acc", "1"), ("stepwise", "2"), ("fidelity", "3")])
def test_each_objective_picks_its_own_validation_point(objective, job):
    chosen = select_best(ROWS, objective)
    assert chosen["job"] == job and chosen["objective"] == objective
    assert all(key in chosen for key in OBJECTIVES[objective])


def test_ties_go_to_the_next_key():
    rows = [_row("1", 0.0, 0.2, 5, 0.1), _row("2", 0.0, 0.2, 5, 0.4)]
    assert select_best(rows, "fidelity")["job"] == "2"


def test_unknown_objective_and_schema_choice():
    with pytest.raises(ValueError, match="selection objective 'luck' is not allowed; allowed: acc, stepwise, fidelity"):
        select_best(ROWS, "luck")
    assert compose_run(["selection.objective=fidelity"]).selection.objective == "fidelity"
    assert select_best([], "acc") is None
