"""The GPU proof kit: `make gpu-check` (python -m benchmarks.gpu_check) on any machine with a CUDA GPU.

No hub, no network: every input is built on the spot. In order, each step a row of one table:

  harness_bf16        launch.py end to end (HF engine, bf16) on random-weight checkpoints of a paper pair's
                      shapes (Qwen2.5-1.5B -> Qwen2.5-7B, the project's offline tokenizer): exit code, the
                      verdict line, seconds per stage
  steer_*, capture    the steering and capture costs at the 7B shape (benchmarks.bench's measures, timed
                      A/B pairs: last token, every position, every position of one layer; a layer capture)
  cuda_graph_steer    the graph-safe steering op (unlock.method.steer_op) captured in a CUDA graph and
                      replayed while its buffers' contents change: each replay equals the eager op
  bank_graph          the compiled vLLM engine's steering as its decoder layers run it
                      (unlock.lm_eval.vllm_graph.SteeringBank.steer), compiled by torch.compile (Inductor, as
                      vLLM compiles the model) and captured in a CUDA graph, run while the bank's buffers
                      change: outputs, steered-row counts and doses equal the eager bank's (on the CPU with
                      --small: compiled, no graph)
  static_cache_steer  generate() with a static cache, whose decoding steps transformers compiles on a GPU
                      (CUDA graphs) once the unsteered condition has run: steering every position must
                      still steer every decoding step, equal to the same generation with a dynamic cache;
                      the control (compiling forced back on under Steering) must show the stale graph
  steer_kernels       where the every-position cost is: one layer's update by each implementation (the
                      hooks' eager ops, the same without a float32 copy of the bf16 stream, torch.compile'd,
                      the graph-safe op) beside the 7B-shape forward pass (benchmarks.steer_kernels,
                      CUDA events); each implementation checked against the hooks' update before it is timed
  bench_tiny          `python -m benchmarks.bench --models tiny` on CUDA (the bench's own rows)

Prints the table and writes it to logs/gpu_check/gpu_check_<time>.md. Without CUDA it exits at once,
non-zero, saying so. ``--small`` shrinks every shape (and allows the CPU) to try the script itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from csv import DictReader
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
# (name, hidden, layers, heads, kv heads, intermediate): Qwen2.5-1.5B and -7B, and a small stand-in pair.
SHAPES = {
    "paper": [("qwen25-1.5b", 1536, 28, 12, 2, 8960), ("qwen25-7b", 3584, 28, 28, 4, 18944)],
    "small": [("small-source", 64, 4, 4, 2, 128), ("small-target", 96, 3, 4, 2, 192)],
}


def build_checkpoint(directory: Path, shape: tuple, device: str) -> Path:
    """A random-weight Qwen2 checkpoint of ``shape`` in bf16 with the project's offline tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from unlock.models.tiny import tiny_tokenizer

    name, hidden, layers, heads, kv, inter = shape
    tokenizer = tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    path = directory / name
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return path


def harness_row(source: Path, target: Path, device: str, out: Path) -> dict[str, Any]:
    """launch.py as a user runs it, on the two checkpoints (HF engine, bf16, 32 items, every condition)."""
    args = [
        sys.executable,
        str(ROOT / "launch.py"),
        "source_model=hf",
        f"source_model.path={source}",
        f"source_model.device={device}",
        "target_model=hf",
        f"target_model.path={target}",
        f"target_model.device={device}",
        "eval=local",
        "eval.engine=hf",
        "eval.limit=32",
        "eval.max_new_tokens=48",
        "eval.batch_size=32",
        "progress=false",
    ]
    env = {**os.environ, "UNLOCK_CACHE": str(out / "cache"), "UNLOCK_LOGS": str(out / "logs")}
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    lines = proc.stdout.splitlines()
    verdict = next((line for line in lines if line.startswith("verdict:")), proc.stderr[-300:])
    stages = next((line for line in lines if line.startswith("stages:")), "")
    return {
        "check": "harness_bf16",
        "result": "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})",
        "value": f"{seconds:.0f} s",
        "note": f"{source.name} -> {target.name}: {verdict[:160]}; {stages[:300]}",
    }


def cost_rows(target: Path, device: str, budget: float) -> list[dict[str, Any]]:
    """The bench's steering and capture measures on the Target's shape (timed A/B pairs)."""
    from benchmarks.bench import Timing, bench_capture, bench_steering
    from unlock.models.loading import load_model

    loaded = load_model(
        {"name": target.name, "kind": "hf", "path": str(target), "dtype": "bfloat16", "device": device}, ""
    )
    timing = Timing(5, 0.05, budget, device)
    rows = [*bench_steering(target.name, loaded, timing, 32), bench_capture(target.name, loaded, timing)]
    del loaded
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return [
        {
            "check": r["measure"],
            "result": "info" if r["meets"] is None else ("ok" if r["meets"] else "MISS"),
            "value": f"{r['median']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            "note": f"target {r['target']}; {r['note']}; {r['repeats']} pairs",
        }
        for r in rows
    ]


def cuda_graph_row(width: int, rows: int = 64) -> dict[str, Any]:
    """The steering op in a captured CUDA graph, replayed while its buffers change, against the eager op."""
    from unlock.method.steer import steering_shift
    from unlock.method.steer_op import RULE_CODES, steer_rows

    device = torch.device("cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    static_in = torch.zeros(rows, width, dtype=torch.bfloat16, device=device)
    shifts = torch.zeros(4, width, device=device)
    rules = torch.zeros(4, dtype=torch.long, device=device)
    slots = torch.full((rows,), -1, dtype=torch.long, device=device)

    def step() -> torch.Tensor:
        out = static_in.clone()
        steer_rows(out, shifts, slots, rules)
        return out

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up on a side stream, as CUDA graph capture requires
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    checked = 0
    for trial in range(20):
        static_in.copy_(torch.randn(rows, width, generator=gen).to(device, torch.bfloat16))
        for s in range(4):
            rule = "norm_preserving" if (trial + s) % 2 else "add"
            shifts[s] = steering_shift(torch.randn(width, generator=gen), 0.1 * (s + 1), rule).to(device)
            rules[s] = RULE_CODES[rule]
        slots.copy_(torch.randint(-1, 4, (rows,), generator=gen).to(device))
        graph.replay()
        eager = static_in.clone()
        steer_rows(eager, shifts, slots, rules)
        if not torch.equal(static_out, eager):
            return {"check": "cuda_graph_steer", "result": "FAILED", "value": f"replay {trial}", "note": "differs"}
        checked += 1
    return {
        "check": "cuda_graph_steer",
        "result": "ok",
        "value": f"{checked} replays",
        "note": f"{rows} x {width} bf16 rows; slots, shifts and rules rewritten before every replay; equal to eager",
    }


def bank_graph_row(
    device: str, width: int, rows: int = 64, trials: int = 20, prepare: Callable[[Callable], Callable] | None = None
) -> dict[str, Any]:
    """SteeringBank.steer compiled (and on CUDA captured in a graph), run while the bank's buffers change,
    against the eager bank: the graph must read the buffers at run time, not bake them in. ``prepare``
    replaces the compile-and-capture step (the tests give it a stale graph, which must be caught)."""
    from unlock.lm_eval.vllm_graph import SteeringBank

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    bank = SteeringBank(3, width, rows, sets=4, meters=8).to(dev)
    hidden = torch.zeros(rows, width, dtype=torch.bfloat16, device=dev)
    residual = torch.zeros_like(hidden)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        return bank.steer(1, (hidden.clone(), residual.clone()))

    if prepare is not None:
        run = prepare(step)
    else:
        run = torch.compile(step, fullgraph=True, dynamic=False)
        run = _captured(run) if dev.type == "cuda" else run
    for trial in range(trials):
        _rewrite_bank(bank, hidden, residual, gen, trial)
        got = [t.clone() for t in run()] + [bank.count.clone(), bank.dose.clone()]
        bank.count.zero_()
        bank.dose.zero_()
        want = [*step(), bank.count.clone(), bank.dose.clone()]
        bank.count.zero_()
        bank.dose.zero_()
        if not torch.equal(got[2], want[2]) or int(want[2][1].sum()) == 0:
            return {"check": "bank_graph", "result": "FAILED", "value": f"run {trial}", "note": "steered-row counts"}
        # per row, relative: Inductor keeps the summed stream in float32 where eager rounds it to bf16 first
        for name, a, b, tol in (
            ("hidden", got[0], want[0], 2e-2),
            ("residual", got[1], want[1], 0.0),
            ("dose", got[3], want[3], 2e-2),
        ):
            a, b = a.double(), b.double()
            if not bool(((a - b).norm(dim=-1) <= tol * b.norm(dim=-1)).all()):
                return {"check": "bank_graph", "result": "FAILED", "value": f"run {trial}", "note": f"{name} differs"}
    how = "compiled and captured in a CUDA graph" if dev.type == "cuda" else "compiled (no CUDA graph on the CPU)"
    return {
        "check": "bank_graph",
        "result": "ok",
        "value": f"{trials} runs",
        "note": f"{rows} x {width} bf16 rows, {how}; slots, meters, shifts, active layers and rules rewritten "
        "before every run; counts and residuals equal the eager bank's, steered rows and doses within bf16 "
        "rounding (per row, relative 2e-2)",
    }


def _rewrite_bank(bank: Any, hidden: torch.Tensor, residual: torch.Tensor, gen: torch.Generator, trial: int) -> None:
    """New contents for every buffer the compiled steering reads, in place (their addresses stay)."""
    from unlock.method.steer import steering_shift
    from unlock.method.steer_op import RULE_CODES

    rows, width = hidden.shape
    dev = hidden.device
    hidden.copy_(torch.randn(rows, width, generator=gen).to(dev, hidden.dtype))
    residual.copy_(torch.randn(rows, width, generator=gen).to(dev, residual.dtype))
    for s in range(bank.sets):
        rule = "norm_preserving" if (trial + s) % 2 else "add"
        bank.shifts[1, s] = steering_shift(torch.randn(width, generator=gen), 0.1 * (s + 1), rule).to(dev)
        bank.rules[s] = RULE_CODES[rule]
        bank.active[1, s] = bool((trial + s) % 3)  # some sets do not steer this layer
    bank.slots[:rows] = torch.randint(-1, bank.sets, (rows,), generator=gen).to(dev)
    bank.meter[:rows] = torch.randint(0, bank.meters, (rows,), generator=gen).to(dev)
    bank.count.zero_()
    bank.dose.zero_()


def _captured(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` captured in a CUDA graph (after a warm-up on a side stream); calling the result replays it
    and returns the graph's static outputs."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = fn()

    def replay() -> Any:
        graph.replay()
        return static

    return replay


def static_cache_row(device: str, steps: int = 8) -> dict[str, Any]:
    """Steering under transformers' compiled decoding steps (see the module's docstring)."""
    from transformers import CompileConfig

    from unlock.method.blocks import hidden_size, num_layers
    from unlock.method.steer import Steering, SteeringSettings
    from unlock.models.tiny import tiny_model, tiny_tokenizer

    model = tiny_model("llama", hidden_size=64, num_layers=4, seed=3).to(device)
    tokenizer = tiny_tokenizer()
    batch = tokenizer(["Question: What is 3 plus 4?\nAnswer:", "Hi"], return_tensors="pt", padding=True).to(device)
    gen = torch.Generator().manual_seed(0)
    vectors = {j: torch.randn(hidden_size(model), generator=gen) for j in range(num_layers(model))}
    static: dict[str, Any] = {"cache_implementation": "static"}
    if device != "cuda":  # --small: transformers compiles on accelerators only; its testing flag forces it
        config = CompileConfig(backend="eager", mode=None)
        config._compile_all_devices = True
        static["compile_config"] = config

    def logits(**extra: Any) -> torch.Tensor:
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                **extra,
            )
        return torch.stack(out.logits, dim=1).float()

    logits(**static)  # the unsteered condition first: transformers compiles the decoding steps
    with Steering(model, vectors, SteeringSettings(1.0, positions="all")):
        steered, reference = logits(**static), logits()  # the reference: a dynamic cache, never compiled
        stale = logits(**static, disable_compile=False)
    error = float((steered - reference).abs().max())
    stale_shown = not torch.allclose(stale[:, 1:], reference[:, 1:], atol=1e-3)
    return {
        "check": "static_cache_steer",
        "result": "ok" if error <= 1e-3 else "FAILED",
        "value": f"max |diff| {error:.1e}",
        "note": f"{steps} steps, every position steered, against a dynamic cache; control: the compiled graph "
        + ("skips the steering (shown)" if stale_shown else "was not used here (not shown)"),
    }


def kernels_rows(device: str, small: bool) -> list[dict[str, Any]]:
    """benchmarks.steer_kernels at the 7B shape: one row per steered shape, every implementation's ratio."""
    from benchmarks.steer_kernels import measure

    width, layers, intermediate = (96, 3, 192) if small else (3584, 28, 18944)
    results = measure(width, layers, intermediate, device)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    rows = []
    for shape in dict.fromkeys(r["shape"] for r in results):
        at = [r for r in results if r["shape"] == shape]
        rows.append(
            {
                "check": "steer_kernels",
                "result": "ok",
                "value": shape,
                "note": f"forward {at[0]['forward_ms']:.1f} ms; {layers} updates, (forward + updates) / forward: "
                + ", ".join(f"{r['impl']} {r['ratio']:.3f}" for r in at),
            }
        )
    return rows


def bench_row(device: str, out: Path, budget: float) -> dict[str, Any]:
    """`make bench`'s harness bench (tiny models) on this device."""
    csv = out / "bench_tiny.csv"
    args = [sys.executable, "-m", "benchmarks.bench", "--models", "tiny", "--device", device, "--repeats", "5"]
    args += ["--budget", str(budget), "--skip", "sweep_reuse", "--out", str(csv)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {
            "check": "bench_tiny",
            "result": f"FAILED (exit {proc.returncode})",
            "value": "",
            "note": proc.stderr[-300:],
        }
    with csv.open() as f:
        rows = list(DictReader(f))
    return {
        "check": "bench_tiny",
        "result": "ok",
        "value": f"{len(rows)} rows",
        "note": "; ".join(f"{r['measure']} {float(r['median']):.3f}" for r in rows),
    }


def render(rows: list[dict[str, Any]], host: str) -> str:
    lines = [f"# make gpu-check ({host})", "", "| check | result | value | note |", "|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['result']} | {r['value']} | {r['note']} |" for r in rows]
    return "\n".join(lines) + "\n"


def timed(rows: list[dict[str, Any]], label: str, step: Callable[[], Any]) -> None:
    """Run one step; a failure becomes its row, so the table always comes out."""
    start = time.perf_counter()
    print(f"[gpu-check] {label} ...", flush=True)
    try:
        result = step()
        rows.extend(result if isinstance(result, list) else [result])
    except Exception as error:  # noqa: BLE001 - the table reports every step, failed or not
        rows.append({"check": label, "result": "FAILED", "value": "", "note": f"{type(error).__name__}: {error}"})
    print(f"[gpu-check] {label}: {time.perf_counter() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="small shapes, CPU allowed: to try the script itself")
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per timed measure")
    parser.add_argument("--out", type=Path, help="the table's file (default: logs/gpu_check/gpu_check_<time>.md)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.small:
        print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU node", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    host = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (--small)"
    host += f", torch {torch.__version__}"
    out = args.out or ROOT / "logs" / "gpu_check" / f"gpu_check_{time.strftime('%Y-%m-%d_%H-%M-%S')}.md"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source, target = (build_checkpoint(work, s, device) for s in SHAPES["small" if args.small else "paper"])
        timed(rows, "harness_bf16", lambda: harness_row(source, target, device, work))
        timed(rows, "costs", lambda: cost_rows(target, device, args.budget))
    if device == "cuda":
        timed(rows, "cuda_graph_steer", lambda: cuda_graph_row(3584 if not args.small else 96))
    timed(rows, "bank_graph", lambda: bank_graph_row(device, 3584 if not args.small else 96))
    timed(rows, "static_cache_steer", lambda: static_cache_row(device))
    timed(rows, "steer_kernels", lambda: kernels_rows(device, args.small))
    timed(rows, "bench_tiny", lambda: bench_row(device, out.parent, args.budget))
    text = render(rows, host)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text + f"written to {out}")
    return 0 if all(not str(r["result"]).startswith("FAILED") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
