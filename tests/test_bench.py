"""`make bench` machinery: paired timing ratios, argument checks, and one short run that writes its CSV."""

from __future__ import annotations

import csv
import time

import pytest

from unlock import bench


def test_paired_ratios_measure_a_known_ratio():
    # b sleeps 10 ms, a 20 ms: every ratio near 2, whatever the machine's load
    ratios = bench.paired_ratios(lambda: time.sleep(0.02), lambda: time.sleep(0.01), repeats=5, min_time=0.05)
    assert len(ratios) == 5
    assert 1.6 < sorted(ratios)[2] < 2.5


def test_paired_ratios_repeat_short_calls_to_reach_min_time():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1

    def b():
        calls["b"] += 1

    bench.paired_ratios(a, b, repeats=5, warmup=1, min_time=0.01)
    # warm-up 1 + calibration 1 + 5 blocks of many calls each: far more than one call per repeat
    assert calls["a"] == calls["b"] > 5 * 100


def test_row_verdicts():
    assert bench.row("m", "x", [0.9, 1.0, 1.2], 1.03)["meets"] is True
    assert bench.row("m", "x", [1.0, 1.1, 1.2], 1.03)["meets"] is False
    info = bench.row("m", "x", [1.0], None)
    assert info["meets"] is None and "info" in bench.render([info])


@pytest.mark.parametrize(
    "argv, message",
    [(["--repeats", "3"], "--repeats 3 is out of range"),
     (["--models", "tiny,llama70b"], "unknown model(s) ['llama70b']"),
     (["--min-time", "0"], "--min-time 0.0 is out of range"),
     (["--skip", "steer_generate"], "unknown measure(s) to skip ['steer_generate']; allowed: model_load, steer,")],
)
def test_bad_arguments_are_named(argv, message):
    with pytest.raises(SystemExit) as err:
        bench.main(argv)
    assert message in str(err.value)


def test_tiny_bench_writes_every_row_to_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLOCK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.csv"
    rows = bench.main(["--models", "tiny", "--repeats", "5", "--min-time", "0.01", "--budget", "0", "--new-tokens", "4",
                       "--skip", "eval_throughput,sweep_reuse", "--out", str(out)])
    measures = [r["measure"] for r in rows]
    assert measures == ["steer_generate", "steer_score", "noise_floor_a_a", "capture_layer"]
    with out.open() as f:
        written = list(csv.DictReader(f))
    assert [r["measure"] for r in written] == measures
    capture = written[-1]
    # layer 1 of 6: target 1.1 * 2 / 6; every ratio positive and ordered
    assert float(capture["target"]) == pytest.approx(1.1 * 2 / 6)
    for r in written:
        assert 0 < float(r["min"]) <= float(r["median"]) <= float(r["max"])
        assert r["machine"]


def test_skipping_everything_is_an_error_not_an_empty_csv(tmp_path):
    out = tmp_path / "bench.csv"
    with pytest.raises(SystemExit, match="nothing measured"):
        bench.main(["--models", "tiny", "--skip", ",".join(bench.SKIPPABLE), "--out", str(out)])
    assert not out.exists()
