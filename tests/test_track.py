"""Sweep selection by a configurable objective, on rows like the aggregate's."""

from __future__ import annotations

import pytest

from tests.helpers import compose_run
from unlock.run.track import OBJECTIVES, select_best


def _row(job, acc, stepwise, beat, cos, split="validation", condition="unlock"):
    return {
        "job": job,
        "status": "ok",
        "split": split,
        "condition": condition,
        "acc": acc,
        "stepwise": stepwise,
        "gen_words": 10.0,
        "layers_beating_null": beat,
        "fidelity": cos,
        "alpha": float(job),
    }


ROWS = [
    _row("1", 0.125, 0.0, 0, 0.1),
    _row("2", 0.0, 0.5, 3, 0.2),
    _row("3", 0.0, 0.1, 9, 0.3),
    _row("4", 1.0, 1.0, 18, 0.9, split="test"),
    _row("5", 1.0, 1.0, 18, 0.9, condition="random"),
]


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


def _paired(diff, low, high):
    return {
        "n": 20,
        "wins": 4,
        "losses": 2,
        "diff": diff,
        "diff_ci95": [low, high],
        "p_mcnemar": 0.69,
        "items_needed": 168,
        "power": 0.2,
        "underpowered": True,
    }


def _record(acc, unsteered, paired):
    return {
        "status": "ok",
        "config": {"eval": {"split": "validation"}},
        "settings": {"alpha": acc},
        "conditions": {"unsteered": {"t": {"acc": unsteered, "n": 20}}, "unlock": {"t": {"acc": acc, "n": 20}}},
        "paired": {"unlock": {"t": {"unsteered": paired}}},
    }


def test_validation_selection_ranks_by_the_paired_gain_and_says_when_no_interval_excludes_zero(tmp_path, capsys):
    """Point 1 has the higher accuracy, point 2 the higher gain over the unsteered Target on its items."""
    import json

    from unlock.run.track import aggregate

    records = {"1": _record(0.5, 0.5, _paired(0.0, -0.2, 0.2)), "2": _record(0.4, 0.2, _paired(0.2, -0.05, 0.4))}
    for job, record in records.items():
        (tmp_path / job).mkdir()
        (tmp_path / job / "results.json").write_text(json.dumps(record))
    summary = aggregate(tmp_path)
    chosen = summary["selected_on_validation"]
    assert chosen["job"] == "2" and chosen["vs_unsteered_diff"] == 0.2 and chosen["points_excluding_zero"] == []
    assert "no sweep point's paired 95% interval against the unsteered Target excludes 0" in capsys.readouterr().out
    header = (tmp_path / "aggregate.csv").read_text().splitlines()[0].split(",")
    assert {"vs_unsteered_diff", "vs_unsteered_ci_low", "vs_unsteered_p_mcnemar", "vs_unsteered_underpowered"} <= set(
        header
    )

    records["2"]["paired"]["unlock"]["t"]["unsteered"] = _paired(0.2, 0.05, 0.4)
    (tmp_path / "2" / "results.json").write_text(json.dumps(records["2"]))
    assert aggregate(tmp_path)["selected_on_validation"]["points_excluding_zero"] == ["2"]
    assert "no sweep point's paired" not in capsys.readouterr().out


def test_any_swept_key_becomes_a_column_and_a_plot_axis(tmp_path, capsys):
    """A sweep over a key no list names (capability.seed) and over a config group choice (rank)."""
    import json

    from unlock.run.track import aggregate, override_columns

    assert override_columns(
        ["experiment=tiny", "capability.seed=3", "+eval.vllm.max_model_len=512", "layer.indices=[1,2]"]
    ) == {"experiment option": "tiny", "capability.seed": 3, "eval.vllm.max_model_len": 512, "layer.indices": "[1,2]"}
    for job, (seed, rank) in enumerate([(0, "default"), (1, "default"), (0, "ridge"), (1, "ridge")]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=tiny\n- capability.seed={seed}\n- rank={rank}\n"
        )
        (tmp_path / str(job) / "results.json").write_text(json.dumps(_record(0.1 * job, 0.0, _paired(0.1, -0.1, 0.3))))
    summary = aggregate(tmp_path)
    assert {"acc_vs_capability.seed.png", "acc_vs_rank_option.png"} <= {p.rsplit("/", 1)[-1] for p in summary["plots"]}
    header = (tmp_path / "aggregate.csv").read_text().splitlines()[0].split(",")
    assert {"capability.seed", "rank option", "experiment option"} <= set(header)
    table = capsys.readouterr().out
    assert "capability.seed" in table and "rank option" in table and "experiment option" not in table.split("sweep:")[1]
    assert (
        summary["selected_on_validation"]["capability.seed"] == 1
        and summary["selected_on_validation"]["rank option"] == "ridge"
    )
