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


def test_a_missing_value_ranks_below_any_number_and_only_the_primary_task_competes():
    rows = [_row("1", 0.1, 0.0, 0, 0.1), _row("2", 0.1, 0.0, 0, 0.1)]
    rows[0]["vs_random_diff"], rows[1]["vs_random_diff"] = None, -0.05
    rows[0]["point_evidence"] = rows[1]["point_evidence"] = 2.0
    assert select_best(rows, "verdict")["job"] == "2", "a point without a random comparison is not a tie at 0"
    other_task = {**_row("3", 1.0, 1.0, 18, 0.9), "primary_task": False}
    assert select_best([*rows, other_task], "acc")["job"] != "3"
    assert select_best([*rows, other_task], "acc")["across_points"]["points"] == 2, "one row per point"


def test_unknown_objective_and_schema_choice():
    with pytest.raises(
        ValueError, match="selection objective 'luck' is not allowed; allowed: acc, stepwise, fidelity, verdict"
    ):
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


def test_validation_selection_is_judged_across_the_points_it_was_chosen_from(tmp_path, capsys):
    """Point 1 has the higher accuracy, point 2 the higher gain over the unsteered Target on its items. The
    selected point's evidence (one-sided exact McNemar: 4 wins, 2 losses) is Holm-adjusted across the
    two points, its validation interval is called optimistic, and the test command names the point."""
    import json

    from unlock.analysis.paired import sweep_verdict
    from unlock.analysis.stats import mcnemar_one_sided
    from unlock.run.track import aggregate

    records = {"1": _record(0.5, 0.5, _paired(0.0, -0.2, 0.2)), "2": _record(0.4, 0.2, _paired(0.2, -0.05, 0.4))}
    for job, record in records.items():
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(
            f"- +sweep=s\n- alpha.value=0.{job}\n- eval.split=validation\n"
        )
        (tmp_path / job / "results.json").write_text(json.dumps(record))
    summary = aggregate(tmp_path)
    chosen = summary["selected_on_validation"]
    assert chosen["job"] == "2" and chosen["vs_unsteered_diff"] == 0.2
    p = mcnemar_one_sided(4, 2)
    assert chosen["across_points"] == {**sweep_verdict([p, p], 1), "p_from": "vs unsteered"}
    assert chosen["across_points"]["p_adjusted"] == pytest.approx(min(1.0, 2 * p))
    out = capsys.readouterr().out
    assert "optimistic, the best of 2 points" in out and ": not significant" in out
    assert f"python launch.py alpha.value=0.2 eval.split=test selected_from={tmp_path}/2" in out
    header = (tmp_path / "aggregate.csv").read_text().splitlines()[0].split(",")
    assert {"vs_unsteered_diff", "vs_unsteered_p_adjusted", "vs_unsteered_significant", "point_p"} <= set(header)

    strong = {**_paired(0.2, 0.05, 0.4), "wins": 12, "losses": 0}
    records["2"]["paired"]["unlock"]["t"]["unsteered"] = strong
    (tmp_path / "2" / "results.json").write_text(json.dumps(records["2"]))
    across = aggregate(tmp_path)["selected_on_validation"]["across_points"]
    assert across["p_adjusted"] == pytest.approx(2 * 0.5**12) and across["significant"]
    assert ": significant" in capsys.readouterr().out


def test_the_verdict_objective_ranks_by_the_verdicts_evidence(tmp_path):
    """A point with a verdict (random evaluated) is ranked by its p (the larger of its two one-sided p)."""
    import json

    from unlock.run.track import aggregate

    records = {"1": _record(0.9, 0.2, _paired(0.7, 0.5, 0.8)), "2": _record(0.5, 0.2, _paired(0.3, 0.1, 0.5))}
    records["1"]["verdict"] = {"transferred": False, "p": 0.2}
    records["2"]["verdict"] = {"transferred": True, "p": 0.001}
    for job, record in records.items():
        (tmp_path / job).mkdir()
        (tmp_path / job / "results.json").write_text(json.dumps(record))
    chosen = aggregate(tmp_path, objective="verdict")["selected_on_validation"]
    assert chosen["job"] == "2" and chosen["across_points"]["p_from"] == "verdict"
    assert chosen["across_points"]["p_adjusted"] == pytest.approx(0.002)
    assert aggregate(tmp_path, objective="acc")["selected_on_validation"]["job"] == "1"


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


def test_a_local_sweep_with_a_failed_point_aggregates_and_exits_non_zero(tmp_path):
    """No module-level state carries the failure: the callback ends the multirun with exit code 1 after
    the aggregate (with the failed point named) is on disk."""
    import json

    from tests.helpers import launch

    tiny = ["experiment=tiny", "eval.limit=2", "eval.max_new_tokens=4", "eval.conditions=[unsteered,unlock]"]
    proc = launch(["-m", *tiny, "layer=list", "layer.indices=[1],[42]", "progress=false"], tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (sweep_dir,) = (tmp_path / "logs" / "multiruns").iterdir()
    summary = json.loads((sweep_dir / "aggregate.json").read_text())
    assert summary["jobs"] == 2 and [f["job"] for f in summary["failed"]] == ["1"], summary["failed"]
    assert "1 of 2 sweep points failed" in proc.stderr
