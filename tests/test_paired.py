"""The run's comparisons and the rule that decides them: recounted against the statistics library and
simulated. With no effect anywhere, the verdict and the Holm family together fire in at most 5% of runs
(and a sweep's best of 72 points is significant in at most 5% of sweeps); a planted gain fires the
verdict, a planted harm is called one."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from unlock.analysis import paired as paired_module
from unlock.analysis.generations import longest_repeat_share
from unlock.analysis.paired import (
    DESIGN,
    Design,
    PowerSettings,
    analyse,
    compare,
    comparisons,
    family_size,
    item_metrics,
    item_outcomes,
    main,
    sweep_verdict,
    verdict_line,
    words,
)
from unlock.analysis.stats import (
    holm,
    items_needed,
    mcnemar_exact,
    mcnemar_one_sided,
    newcombe_interval,
    power_at,
    sign_flip_test,
    t_interval,
)


def _items(correct: str) -> dict[int, bool]:
    return {i: c == "1" for i, c in enumerate(correct)}


def test_compare_counts_wins_and_losses_on_the_shared_items():
    condition, baseline = _items("1101100110"), _items("1000101110")
    del baseline[9]  # an item the baseline was not scored on is left out
    result = compare(condition, baseline, 0.1, PowerSettings())
    assert (result["n"], result["wins"], result["losses"]) == (9, 2, 1)
    assert result["diff"] == pytest.approx(1 / 9)
    assert result["diff_ci95"] == pytest.approx(list(newcombe_interval(4, 2, 1, 2)))
    assert result["p_mcnemar"] == 1.0 and result["discordance"] == pytest.approx(3 / 9)
    assert result["underpowered"] and result["items_needed"] > 9
    assert compare(condition, {}, 0.1, PowerSettings()) == {"n": 0}
    one_sided = compare(condition, baseline, 0.1, PowerSettings(), 0.05, 1)
    assert one_sided["power"] == power_at(9, 0.1, 3 / 9, 0.05, 1)
    assert one_sided["items_needed"] == items_needed(0.1, 3 / 9, 0.8, 0.05, 1)


def test_comparisons_pair_every_condition_with_its_baselines_and_the_papers_gain():
    outcomes = {
        name: {"task": _items(bits)}
        for name, bits in (
            ("unsteered", "0000011111"),
            ("unlock", "1111011111"),
            ("random", "0000111111"),
            ("prompting", "1111111111"),
        )
    }
    paired = comparisons(outcomes, {("unlock", "task", "unsteered"): 0.467}, PowerSettings(effect=0.1))
    assert {c: {b for b in paired[c]["task"]} for c in paired} == {
        "unlock": {"unsteered", "random"},
        "random": {"unsteered"},
        "prompting": {"unsteered"},
    }
    vs = paired["unlock"]["task"]["unsteered"]
    assert (vs["wins"], vs["losses"], vs["effect"], vs["effect_from"]) == (4, 0, 0.467, "paper")
    assert paired["unlock"]["task"]["random"]["effect_from"] == "default"
    assert paired["unlock"]["task"]["random"]["effect"] == 0.1


def test_the_design_says_what_is_compared_with_what():
    assert DESIGN.baselines("unsteered") == [] and DESIGN.baselines("reference") == ["unsteered"]
    assert DESIGN.baselines("unlock") == ["unsteered", "random", "reversed"]
    assert DESIGN.baselines("random") == ["unsteered"] and DESIGN.baselines("reversed") == ["unsteered", "random"]
    assert DESIGN.baselines("native") == ["unsteered", "random"] and DESIGN.baselines("prompting") == ["unsteered"]
    assert Design(control="native").baselines("random") == ["unsteered", "native"]
    five = ["unsteered", "unlock", "prompting", "native", "random"]
    assert family_size(DESIGN, five, ["t"], "t") == 6 * 5 - 2, "six pairs x five metrics, less the verdict's two"
    assert family_size(DESIGN, five, ["t", "u"], "t") == 12 * 5 - 2
    assert family_size(DESIGN, ["unsteered", "unlock"], ["t"], "t") == 5, "no random: no verdict"
    six = [*five, "reversed"]  # three more pairs (unlock vs reversed, reversed vs unsteered and random)
    assert family_size(DESIGN, six, ["t"], "t") == 9 * 5 - 3, "the verdict's three: unsteered, random, reversed"
    assert DESIGN.verdict_baselines(five) == ("unsteered", "random") and len(DESIGN.verdict_baselines()) == 3


def test_item_outcomes_refuse_a_metric_that_is_not_correctness():
    rows = [{"doc_id": 3, "acc": 1}, {"doc_id": 5, "acc": 0.0}, {"doc_id": None, "acc": True}]
    assert item_outcomes(rows) == {3: True, 5: False, 2: True}
    assert item_outcomes([{"doc_id": 0, "acc": 0.5}]) is None
    assert item_outcomes([{"doc_id": 0}]) is None


def test_item_metrics_skip_what_the_rows_do_not_report():
    generated = [
        {"doc_id": 0, "acc": 1, "gen_words": 4.0, "stepwise": 1.0, "response": "a b a b"},
        {"doc_id": 1, "acc": 0, "gen_words": 2.0, "stepwise": 0.0, "response": "x y"},
    ]
    out = item_metrics(generated)
    assert set(out) == {"gen_words", "stepwise", "repetition"}, "no gen_tokens in these rows: skipped"
    assert out["repetition"] == {0: longest_repeat_share("a b a b"), 1: 0.0}
    scored = [{"doc_id": 0, "acc": 1, "response": '[["-1.2", "True"]]'}]  # a loglikelihood task's row
    assert item_metrics(scored) == {}


@pytest.mark.parametrize(("field", "value"), [("effect", 0.0), ("effect", 1.5), ("power", 1.0), ("discordance", 0.0)])
def test_power_settings_name_the_bad_value(field, value):
    with pytest.raises(ValueError, match=rf"stats\.{field} {value} is out of range"):
        PowerSettings(**{field: value})


def _rows(bits: str, tokens: list[int] | None = None, stepwise: str | None = None, texts=None) -> list[dict]:
    rows = []
    for i, bit in enumerate(bits):
        row = {"doc_id": i, "acc": int(bit)}
        if tokens is not None:
            row["gen_tokens"] = tokens[i]
            row["gen_words"] = float(tokens[i] // 2)
        if stepwise is not None:
            row["stepwise"] = float(stepwise[i])
        if texts is not None:
            row["response"] = texts[i]
        rows.append(row)
    return rows


def _run() -> dict:
    """Twenty items: UNLOCK right on 14 more than the unsteered Target and 12 more than random."""
    rng = np.random.default_rng(3)
    base = rng.integers(20, 200, 20)
    texts = ["one two three one two three", "a b c d", "x x x x", "p q"] * 5

    def tokens(shift: int) -> list[int]:
        return [int(t) + shift + int(e) for t, e in zip(base, rng.integers(-3, 4, 20), strict=True)]

    return {
        "unsteered": {"t": _rows("00000000000000000011", tokens(0), "0" * 10 + "1" * 10, texts)},
        "unlock": {"t": _rows("11111111111111000011", tokens(40), "1" * 20, texts[::-1])},
        "random": {"t": _rows("00110000000000000011", tokens(0), "0" * 10 + "1" * 10, texts)},
        "prompting": {"t": _rows("00000000000000000000", tokens(-1), "0" * 10 + "1" * 10, texts)},
    }


def test_the_verdict_is_the_intersection_of_two_one_sided_exact_tests():
    result = analyse(_run(), {("unlock", "t", "unsteered"): 0.3}, PowerSettings(), DESIGN, "t")
    verdict = result["verdict"]
    assert (verdict["transferred"], verdict["metric"], verdict["task"], verdict["level"]) == (True, "acc", "t", 0.05)
    vs, vr = verdict["tests"]["unsteered"], verdict["tests"]["random"]
    assert (vs["n"], vs["wins"], vs["losses"]) == (20, 14, 0) and (vr["wins"], vr["losses"]) == (12, 0)
    assert vs["p_one_sided"] == mcnemar_one_sided(14, 0) and vr["p_one_sided"] == mcnemar_one_sided(12, 0)
    assert verdict["p"] == max(vs["p_one_sided"], vr["p_one_sided"]) == 0.5**12
    assert (vs["effect"], vs["effect_from"], vr["effect_from"]) == (0.3, "paper", "default")
    assert vs["power"] == power_at(20, 0.3, 14 / 20, 0.05, 1), "the power of the test that decides"
    assert vr["items_needed"] == items_needed(0.1, 12 / 20, 0.8, 0.05, 1)
    # every test must reject: the joint power is the product, and it needs more items than either alone
    assert verdict["power"] == pytest.approx(vs["power"] * vr["power"])
    assert verdict["underpowered"] == (verdict["power"] < 0.8)
    n = verdict["items_needed"]
    assert n >= max(vs["items_needed"], vr["items_needed"])

    def joint(items):
        return power_at(items, 0.3, 14 / 20, 0.05, 1) * power_at(items, 0.1, 12 / 20, 0.05, 1)

    assert joint(n) >= 0.8 > joint(n - 1)
    decided = result["paired"]["unlock"]["t"]["unsteered"]
    assert (decided["decided_by"], decided["p_adjusted"], decided["significant"]) == ("verdict", 0.5**12, True)
    assert decided["p_one_sided"] == 0.5**14, "its own test is recorded; the flag and p are the verdict's"
    assert decided["direction"] == "gain" and decided["p_mcnemar"] == mcnemar_exact(14, 0)
    assert verdict_line(verdict) == (
        "verdict: UNLOCK transferred (beats unsteered p = 6.1e-05, random p = 0.00024, one-sided exact "
        "McNemar, 5% level)"
    )


def test_every_other_comparison_is_one_holm_family():
    run = _run()
    result = analyse(run, {}, PowerSettings(), DESIGN, "t")
    family = []  # recounted: (condition, baseline, metric, p), the verdict's two left out
    for c, b in (("unlock", "unsteered"), ("unlock", "random"), ("random", "unsteered"), ("prompting", "unsteered")):
        x, y = run[c]["t"], run[b]["t"]
        if (c, b) not in (("unlock", "unsteered"), ("unlock", "random")):
            wins = sum(p["acc"] and not q["acc"] for p, q in zip(x, y, strict=True))
            losses = sum(q["acc"] and not p["acc"] for p, q in zip(x, y, strict=True))
            family.append((c, b, "acc", mcnemar_exact(wins, losses)))
        for metric in ("gen_tokens", "gen_words"):
            family.append((c, b, metric, sign_flip_test([p[metric] - q[metric] for p, q in zip(x, y, strict=True)]).p))
        wins = sum(p["stepwise"] > q["stepwise"] for p, q in zip(x, y, strict=True))
        losses = sum(p["stepwise"] < q["stepwise"] for p, q in zip(x, y, strict=True))
        family.append((c, b, "stepwise", mcnemar_exact(wins, losses)))
        shares = [
            longest_repeat_share(p["response"]) - longest_repeat_share(q["response"]) for p, q in zip(x, y, strict=True)
        ]
        family.append((c, b, "repetition", sign_flip_test(shares, 1e-3).p))
    adjusted = holm([p for *_, p in family])
    assert result["family"]["tests"] == len(family) == 18
    for (c, b, metric, p), p_adj in zip(family, adjusted, strict=True):
        got = result["paired"][c]["t"][b] if metric == "acc" else result["behaviour"][c]["t"][b][metric]
        assert (got.get("p", got.get("p_mcnemar")), got["p_adjusted"]) == pytest.approx((p, p_adj), rel=1e-12)
        assert got["significant"] == (p_adj <= 0.05)
    tokens = result["behaviour"]["unlock"]["t"]["unsteered"]["gen_tokens"]
    d = [p["gen_tokens"] - q["gen_tokens"] for p, q in zip(run["unlock"]["t"], run["unsteered"]["t"], strict=True)]
    assert tokens["diff"] == pytest.approx(np.mean(d)) and tokens["diff_ci95"] == pytest.approx(list(t_interval(d)))
    assert (tokens["significant"], tokens["direction"], tokens["unit"]) == (True, "increase", 1.0)
    assert words(tokens) == f"significant increase (p_adj = {tokens['p_adjusted']:.2g})"
    step = result["behaviour"]["unlock"]["t"]["unsteered"]["stepwise"]
    assert step["diff_ci95"] == pytest.approx(list(newcombe_interval(10, 10, 0, 0)))
    holm_member = result["paired"]["random"]["t"]["unsteered"]
    assert holm_member["decided_by"] == "holm" and holm_member["direction"] is None
    assert holm_member["power"] == power_at(20, 0.1, 2 / 20, 0.05 / 18, 2), "Bonferroni level: Holm's lower bound"
    assert holm_member["items_needed"] == items_needed(0.1, 2 / 20, 0.8, 0.05 / 18, 2)


def test_a_run_without_the_control_has_no_verdict_and_tests_everything_in_the_family():
    run = {c: v for c, v in _run().items() if c != "random"}
    result = analyse(run, {}, PowerSettings(), DESIGN, "t")
    assert result["verdict"]["transferred"] is None and "random" in result["verdict"]["reason"]
    assert verdict_line(result["verdict"]).startswith("verdict: undecided (no per-item accuracy of random on t")
    assert result["paired"]["unlock"]["t"]["unsteered"]["decided_by"] == "holm"
    assert analyse(_run(), {}, PowerSettings(), DESIGN, None)["verdict"]["transferred"] is None


def test_words_say_what_decided():
    base = {"n": 64, "diff": 0.06, "diff_ci95": [0.01, 0.11], "p_mcnemar": 0.062, "decided_by": "holm"}
    assert words({**base, "p_adjusted": 0.41, "significant": False}) == (
        "not significant: interval excludes 0, McNemar p = 0.062"
    )
    base["diff_ci95"] = [-0.01, 0.11]
    assert words({**base, "p_adjusted": 0.41, "significant": False}) == "not significant (p_adj = 0.41)"
    harm = {**base, "diff": -0.2, "p_adjusted": 0.01, "significant": True, "direction": "harm"}
    assert words(harm) == "significant harm (p_adj = 0.01)"
    assert words({"n": 0}) == "no shared items"
    verdict = {**base, "decided_by": "verdict", "p_adjusted": 0.003, "significant": True, "direction": "gain"}
    assert words(verdict) == "significant gain (verdict p = 0.003)"
    no = {**verdict, "p_adjusted": 0.2, "p_one_sided": 0.03, "significant": False, "direction": None}
    assert words(no) == "not significant: the verdict failed (verdict p = 0.2; this test's one-sided p = 0.03)"


def test_sweep_verdict_adjusts_the_selected_point_across_the_sweep():
    out = sweep_verdict([0.01, 0.2, None, 0.004], 3)
    assert out == {"points": 4, "p": 0.004, "p_adjusted": 0.016, "significant": True}
    assert sweep_verdict([0.01, 0.2, None, 0.004], 0)["p_adjusted"] == pytest.approx(0.03)
    assert sweep_verdict([0.02] * 72, 5)["significant"] is False
    with pytest.raises(ValueError, match="out of range"):
        sweep_verdict([0.1], 1)


def _write_samples(directory, run: dict) -> None:
    (directory / "samples").mkdir(parents=True)
    for condition, per_task in run.items():
        for task, rows in per_task.items():
            text = "".join(json.dumps(row) + "\n" for row in rows)
            (directory / "samples" / f"{condition}__{task}.jsonl").write_text(text)


def test_the_cli_writes_what_analyse_gives(tmp_path, capsys):
    run = _run()
    _write_samples(tmp_path / "a", run)
    assert main([str(tmp_path / "a")]) == 0
    written = json.loads((tmp_path / "a" / "paired.json").read_text())
    assert written == json.loads(json.dumps(analyse(run, {}, PowerSettings(), DESIGN, "t")))
    out = capsys.readouterr().out
    assert "verdict: UNLOCK transferred" in out and "unlock vs unsteered on t, gen_tokens: significant increase" in out


def test_the_cli_takes_settings_gains_and_primary_task_from_results_json(tmp_path):
    run = _run()
    run["unlock"]["u"] = run["unlock"]["t"]
    _write_samples(tmp_path, run)
    config = {
        "stats": {"effect": 0.2, "power": 0.9, "discordance": 0.3},
        "paper": {"setup": "qwen15_cot_14b_to_7b"},
        "benchmark": {"name": "math"},
        "capability": {"locked_task": "t"},
        "eval": {"tasks": ["t", "u"]},
    }
    (tmp_path / "results.json").write_text(json.dumps({"status": "ok", "config": config}))
    assert main([str(tmp_path)]) == 0
    written = json.loads((tmp_path / "paired.json").read_text())
    vs = written["verdict"]["tests"]["unsteered"]
    assert written["verdict"]["task"] == "t" and (vs["effect"], vs["effect_from"]) == (pytest.approx(0.121), "paper")
    assert written["verdict"]["tests"]["random"]["effect"] == 0.2
    assert vs["items_needed"] == items_needed(0.121, 14 / 20, 0.9, 0.05, 1)
    (tmp_path / "results.json").unlink()
    assert main([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "paired.json").read_text())["verdict"]["transferred"] is None, "two tasks"
    assert main([str(tmp_path), "--task", "t"]) == 0
    assert json.loads((tmp_path / "paired.json").read_text())["verdict"]["transferred"] is True
    assert main([str(tmp_path / "nothing")]) == 1


# Simulated runs. A text's repetition comes from a pool of templates repeated 1-4 times, so the
# simulation measures real longest_repeat_share values (cached: the pool is small).
TEMPLATES = [f"step {i} so the answer is {i * 7} because {i} times seven" for i in range(30)]
CONDITIONS = ("unsteered", "unlock", "prompting", "native", "random")


def _simulate(rng, n=64, conditions=CONDITIONS, gain=0.0, harm=0.0):
    """One run: a shared per-item difficulty (each condition's correctness an independent Bernoulli of the
    item's probability, the probabilities' spread drawn per run so that discordance covers 0.05-0.3);
    behaviour: an item effect plus noise, the same for every condition. ``gain``: unlock is right on
    that share of the items it would get wrong; ``harm``: native is wrong on that share of the rest."""
    mean, spread = rng.uniform(0.3, 0.7), np.exp(rng.uniform(np.log(0.1), np.log(2.0)))
    p = rng.beta(mean * spread, (1 - mean) * spread, n)
    length, steps, loops = rng.integers(20, 400, n), rng.uniform(0, 1, n), rng.beta(0.5, 2, n)
    template = rng.integers(0, len(TEMPLATES), n)
    rows = {}
    for condition in conditions:
        probability = p + gain * (1 - p) if condition == "unlock" else p * (1 - harm) if condition == "native" else p
        correct = rng.random(n) < probability
        tokens = np.maximum(1, length + rng.integers(-20, 21, n))
        repeats = np.where(rng.random(n) < loops, rng.integers(2, 5, n), 1)
        stepwise = rng.random(n) < steps
        rows[condition] = {
            "t": [
                {
                    "doc_id": i,
                    "acc": int(correct[i]),
                    "gen_tokens": int(tokens[i]),
                    "gen_words": float(int(0.75 * tokens[i]) + int(rng.integers(-3, 4))),
                    "stepwise": float(stepwise[i]),
                    "response": " ".join([TEMPLATES[template[i]]] * int(repeats[i])),
                }
                for i in range(n)
            ]
        }
    return rows, float(np.mean(2 * p * (1 - p)))


def _fired(result: dict) -> bool:
    """Whether the run claims anything: the verdict, or any comparison flagged significant (the verdict's
    two entries carry the verdict's flag; every other one is the Holm family's)."""
    flags = [result["verdict"]["transferred"] is True]
    flags += [
        r.get("significant", False) for per in result["paired"].values() for v in per.values() for r in v.values()
    ]
    flags += [
        r["significant"]
        for per in result["behaviour"].values()
        for versus in per.values()
        for metrics in versus.values()
        for r in metrics.values()
    ]
    return any(flags)


@pytest.fixture
def cached_repetition(monkeypatch):
    monkeypatch.setattr(paired_module, "longest_repeat_share", functools.lru_cache(maxsize=None)(longest_repeat_share))


def test_with_no_effect_anything_fires_in_at_most_5_percent_of_runs(cached_repetition):
    """The verdict and the Holm family (28 comparisons here), each at 5%, together: every flag a run
    shows. (Were either of the verdict's one-sided tests a claim on its own, the share would be 6.1%: the
    verdict's entries carry the verdict's flag.)"""
    rng = np.random.default_rng(20240601)
    fired = 0
    discordance = []
    for _ in range(1000):
        rows, expected = _simulate(rng)
        discordance.append(expected)
        result = analyse(rows, {}, PowerSettings(), DESIGN, "t")
        fired += _fired(result)
    share = fired / 1000
    print(f"null runs: the verdict or any comparison significant in {share:.1%} of 1000 runs")
    assert min(discordance) <= 0.05 and max(discordance) >= 0.3, "discordance covers 0.05-0.3"
    assert share <= 0.05, f"false-positive share {share:.3f} of 1000 null runs (5 conditions x 64 items)"


def test_a_sweeps_best_point_is_significant_in_at_most_5_percent_of_null_sweeps():
    """72 validation points (paper_select): one unsteered evaluation, unlock drawn anew at each point with
    no effect; the point with the largest gain is selected and judged after Holm across the 72."""
    rng = np.random.default_rng(7)
    significant = 0
    for _ in range(1000):
        mean, spread = rng.uniform(0.3, 0.7), np.exp(rng.uniform(np.log(0.1), np.log(2.0)))
        p = rng.beta(mean * spread, (1 - mean) * spread, 64)
        unsteered = rng.random(64) < p
        unlock = rng.random((72, 64)) < p
        wins, losses = (unlock & ~unsteered).sum(axis=1), (unsteered & ~unlock).sum(axis=1)
        points = [mcnemar_one_sided(int(w), int(l)) for w, l in zip(wins, losses, strict=True)]
        significant += sweep_verdict(points, int(np.argmax(wins - losses)))["significant"]
    share = significant / 1000
    print(f"null sweeps: the selected point significant in {share:.1%} of 1000 sweeps of 72 points")
    assert share <= 0.05, f"false-positive share {share:.3f} of 1000 null sweeps of 72 points"


def test_a_planted_gain_fires_the_verdict_and_a_planted_harm_is_called_harm(cached_repetition):
    """UNLOCK right on 40% of the items the others get wrong (about +0.2 accuracy on 64 items: the verdict's
    one-sided tests have about 80% power there); native wrong on 80% of the items the others get right (a
    push that breaks the model: about -0.4, found by the two-sided test at 0.05 / 28)."""
    rng = np.random.default_rng(11)
    transferred = harmed = 0
    gains = []
    for _ in range(200):
        rows, _ = _simulate(rng, gain=0.4, harm=0.8)
        result = analyse(rows, {}, PowerSettings(), DESIGN, "t")
        transferred += result["verdict"]["transferred"] is True
        gains.append(result["verdict"]["tests"]["unsteered"]["diff"])
        harmed += result["paired"]["native"]["t"]["unsteered"]["direction"] == "harm"
    print(
        f"planted gain (mean observed {np.mean(gains):+.2f}): verdict in {transferred / 200:.0%} of 200 runs; "
        f"planted harm: called harm in {harmed / 200:.0%}"
    )
    assert transferred / 200 >= 0.7, f"the verdict fired in {transferred / 200:.2f} of runs with a planted gain"
    assert harmed / 200 >= 0.9, f"harm called in {harmed / 200:.2f} of runs with a planted harm"
