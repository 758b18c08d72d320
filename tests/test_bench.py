"""`make bench` machinery: paired timing ratios, argument checks, and one short run that writes its CSV."""

from __future__ import annotations

import csv
import random
import time

import pytest

from benchmarks import bench


def test_paired_ratios_measure_a_known_ratio():
    # b sleeps 10 ms, a 20 ms: every ratio near 2, whatever the machine's load
    ratios = bench.paired_ratios(lambda: time.sleep(0.02), lambda: time.sleep(0.01), repeats=5, min_time=0.05)
    assert len(ratios) == 5
    assert 1.6 < sorted(ratios)[2] < 2.5


def test_paired_ratios_wait_for_queued_work_at_both_ends_of_a_block():
    """A GPU in miniature: a call queues 10 ms of work on a worker and returns; one side also waits
    for the queue inside its call (a host read of a device tensor), as a steered pass did. Both do the
    same work, so the ratio is 1 when ``sync`` drains the queue around each block; without it the
    waiting side is charged with the other side's backlog."""
    from concurrent.futures import ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=1) as device:
        queued = []

        def launch():
            queued.append(device.submit(time.sleep, 0.01))

        def drain():
            wait(queued)
            queued.clear()

        def reads_on_host():
            launch()
            drain()

        synced = bench.paired_ratios(reads_on_host, launch, repeats=6, min_time=1e-9, sync=drain)
        assert 0.8 < sorted(synced)[3] < 1.25
        unsynced = bench.paired_ratios(reads_on_host, launch, repeats=6, min_time=1e-9)
        drain()
        assert sorted(unsynced)[3] > 1.5  # the control: the bias the sync removes


def test_paired_ratios_repeat_short_calls_to_reach_min_time():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1

    def b():
        calls["b"] += 1

    bench.paired_ratios(a, b, repeats=5, warmup=1, min_time=0.01)
    # warm-up 1 + calibration 1 + 5 blocks of many calls each: far more than one call per repeat
    assert calls["a"] == calls["b"] > 5 * 100


def test_paired_ratios_go_on_until_the_budget_is_spent_within_bounds():
    start = time.perf_counter()
    ratios = bench.paired_ratios(lambda: None, lambda: None, repeats=5, min_time=0.002, budget=0.3)
    assert time.perf_counter() - start >= 0.3
    assert len(ratios) > 5  # far more pairs than the minimum fit into the budget
    capped = bench.paired_ratios(lambda: None, lambda: None, repeats=5, min_time=0.002, budget=30, max_pairs=8)
    assert len(capped) == 8
    assert len(bench.paired_ratios(lambda: None, lambda: None, repeats=6, min_time=0.002, budget=0)) == 6


def test_median_interval_uses_the_binomial_order_statistics():
    values = list(range(1, 101))
    random.Random(0).shuffle(values)
    assert bench.median_interval(values) == (40, 61)  # the textbook ranks for n = 100
    assert bench.median_interval(list(range(1, 12))) == (2, 10)  # n = 11: 98.8% coverage, the next is 93.5%
    assert bench.median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0)  # n = 5: no 95% interval, whole range


def test_median_interval_covers_the_true_median_about_95_percent_of_the_time():
    rng = random.Random(1)
    trials, n, covered = 4000, 25, 0
    for _ in range(trials):
        low, high = bench.median_interval([rng.lognormvariate(0.0, 0.3) for _ in range(n)])
        covered += low <= 1.0 <= high  # the median of lognormal(0, s) is exp(0) = 1
    # n = 25: exact coverage 95.7% (ranks 8 and 18); one rank narrower gives 89.2%, one wider 98.5%
    assert 0.94 <= covered / trials <= 0.975


def test_row_verdicts():
    assert bench.row("m", "x", [0.9, 1.0, 1.2], 1.03)["meets"] is True
    assert bench.row("m", "x", [1.0, 1.1, 1.2], 1.03)["meets"] is False
    info = bench.row("m", "x", [1.0], None)
    assert info["meets"] is None and info["resolved"] is None and "info" in bench.render([info])


def test_verdict_says_when_the_interval_straddles_the_target():
    tight = bench.row("m", "tight", [1.10 + i * 0.001 for i in range(21)], 1.03)
    wide = bench.row("m", "wide", [0.90 + i * 0.015 for i in range(21)], 1.03)  # median 1.05, interval 0.98-1.12
    assert (tight["meets"], tight["resolved"]) == (False, True)
    assert (wide["meets"], wide["resolved"]) == (False, False)
    assert wide["ci_low"] < 1.03 < wide["ci_high"]
    lines = bench.render([tight, wide]).splitlines()
    assert " MISS " in lines[2] and " MISS? " in lines[3]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "3"], "--repeats 3 is out of range"),
        (["--models", "tiny,llama70b"], "unknown model(s) ['llama70b']"),
        (["--min-time", "0"], "--min-time 0.0 is out of range"),
        (["--budget", "-1"], "--budget -1.0 is out of range"),
        (["--skip", "steer_generate"], "unknown measure(s) to skip ['steer_generate']; allowed: model_load, steer,"),
    ],
)
def test_bad_arguments_are_named(argv, message):
    with pytest.raises(SystemExit) as err:
        bench.main(argv)
    assert message in str(err.value)


def test_tiny_bench_writes_every_row_to_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLOCK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.csv"
    rows = bench.main(
        [
            "--models",
            "tiny",
            "--repeats",
            "5",
            "--min-time",
            "0.01",
            "--budget",
            "0",
            "--new-tokens",
            "4",
            "--skip",
            "eval_throughput,sweep_reuse",
            "--out",
            str(out),
        ]
    )
    measures = [r["measure"] for r in rows]
    assert measures == [
        "steer_generate",
        "steer_score",
        "noise_floor_a_a",
        "steer_all_generate",
        "steer_all_score",
        "steer_all_score_dose",
        "steer_one_layer_all",
        "capture_layer",
    ]
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


def test_the_inputs_go_to_the_models_device():
    """make bench on CUDA crashed at once: the prompts were tokenised on the CPU and handed to a CUDA
    model. A model on another device (meta: no GPU needed) gets its inputs there."""
    from unlock.models.tiny import tiny_model, tiny_tokenizer

    model = tiny_model("llama", hidden_size=32, num_layers=2).to("meta")
    batch = bench.encode(tiny_tokenizer(), ["Question: 1 + 1?", "Q"], model)
    assert {t.device.type for t in batch.values()} == {"meta"}


def test_gpu_check_refuses_at_once_without_cuda():
    """make gpu-check on a machine without CUDA: a non-zero exit and why, before anything is built."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "no CUDA GPU here" in proc.stderr
    assert "[gpu-check]" not in proc.stdout, "nothing ran"


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_small_shapes(tmp_path):
    """The kit's own dry run (--small: small shapes, the CPU allowed): every row comes out, none failed."""
    from benchmarks import gpu_check

    out = tmp_path / "table.md"
    assert gpu_check.main(["--small", "--budget", "0", "--out", str(out)]) == 0
    table = out.read_text()
    for check in ("harness_bf16", "steer_generate", "steer_all_generate", "steer_one_layer_all", "capture_layer"):
        assert f"| {check} |" in table, check
    assert "| bank_graph | ok | 20 runs |" in table, "the compiled bank equals the eager one while its buffers change"
    assert "| static_cache_steer | ok |" in table and "skips the steering (shown)" in table
    assert table.count("| steer_kernels | ok |") == 4 and "eager, no float32 copy" in table
    assert "verdict:" in table and "| bench_tiny | ok |" in table


def test_the_bank_check_catches_a_graph_that_does_not_read_the_buffers():
    """bank_graph's control: a "graph" that replays its first run's outputs (buffers baked in at capture)
    fails the check, naming the run; the eager steering itself passes."""
    from benchmarks import gpu_check

    def stale(step):
        first = []

        def run():
            if not first:
                first.extend(t.clone() for t in step())
            return first

        return run

    failed = gpu_check.bank_graph_row("cpu", 32, rows=16, trials=3, prepare=stale)
    assert failed["result"] == "FAILED" and failed["value"] == "run 1", failed
    assert gpu_check.bank_graph_row("cpu", 32, rows=16, trials=3, prepare=lambda step: step)["result"] == "ok"


STEER_KERNELS_SMALL = ["--width", "64", "--layers", "2", "--intermediate", "128", "--dtype", "bfloat16"]


def test_steer_kernels_times_every_implementation_of_the_update(capsys):
    from benchmarks import steer_kernels

    steer_kernels.main(STEER_KERNELS_SMALL)
    lines = capsys.readouterr().out.splitlines()[1:]
    names = ("eager ops on a view", "eager, no float32 copy", "torch.compile", "steer_rows op")
    assert len(lines) == 4 * len(names) and all(sum(name in line for line in lines) == 4 for name in names)


def test_steer_kernels_refuses_to_time_an_implementation_that_computes_something_else(monkeypatch):
    from benchmarks import steer_kernels

    monkeypatch.setattr(steer_kernels, "_promoted", lambda hidden, shift: hidden.add_(shift.to(hidden.dtype)))
    with pytest.raises(SystemExit, match="eager, no float32 copy does not compute the hooks' update"):
        steer_kernels.main(STEER_KERNELS_SMALL)
    # In make gpu-check the refusal is a FAILED row of the table, not the end of the check.
    from benchmarks import gpu_check

    rows: list = []
    gpu_check.timed(rows, "steer_kernels", lambda: gpu_check.kernels_rows("cpu", small=True))
    assert rows[0]["result"] == "FAILED" and "does not compute the hooks' update" in rows[0]["note"]
