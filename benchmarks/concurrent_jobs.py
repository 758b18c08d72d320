"""Forward passes of concurrent jobs on one cache, against one job alone: what sharing work saves.

    python -m benchmarks.concurrent_jobs                          # 3 jobs of one config (experiment=tiny)
    python -m benchmarks.concurrent_jobs --alphas 0.05,0.1,0.2    # a concurrent 3-point alpha sweep
    python -m benchmarks.concurrent_jobs --root ../other-checkout # the same jobs on another checkout's code

Each job is a `launch.py` process with its own run directory and a fresh shared UNLOCK_CACHE, started
together as SLURM array tasks start; the reference is one job alone on an empty cache. Prints the
forward passes per stage and the ratio (concurrent total / one job).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("capture", "extract", "align", "vectors", "lens", "eval")


def launch_all(root: Path, job_args: list[list[str]], tmp: Path) -> list[dict]:
    """Start every job at once on one cache under ``tmp``; their results.json records."""
    env = {**os.environ, "UNLOCK_CACHE": str(tmp / "cache"), "WANDB_MODE": "offline", "PYTHONPATH": str(root)}
    jobs = [
        subprocess.Popen(
            [sys.executable, str(root / "launch.py"), *args, f"hydra.run.dir={tmp / f'job{i}'}"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, args in enumerate(job_args)
    ]
    for job in jobs:
        _, err = job.communicate()
        if job.returncode:
            raise SystemExit(f"a job failed ({job.returncode}):\n{err[-3000:]}")
    return [json.loads((tmp / f"job{i}" / "results.json").read_text()) for i in range(len(job_args))]


def passes(records: list[dict]) -> dict[str, int]:
    return {stage: sum(r["stages"].get(stage, {}).get("forward_passes", 0) for r in records) for stage in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose launch.py runs")
    parser.add_argument("--jobs", type=int, default=3, help="concurrent jobs of one config (without --alphas)")
    parser.add_argument("--alphas", default=None, help="comma-separated alpha values: one job each")
    parser.add_argument(
        "overrides", nargs="*", default=["experiment=tiny", "eval.limit=4", "eval.max_new_tokens=8", "progress=false"]
    )
    args = parser.parse_args()
    sweep = [[*args.overrides, f"alpha.value={a}"] for a in args.alphas.split(",")] if args.alphas else None
    jobs = sweep or [args.overrides] * args.jobs
    with tempfile.TemporaryDirectory() as tmp:
        alone = [
            launch_all(args.root, [job], Path(tmp) / f"alone{i}")[0]
            for i, job in enumerate(jobs[:1] if not sweep else jobs)
        ]
        together = launch_all(args.root, jobs, Path(tmp) / "together")
    one, many = passes(alone[:1]), passes(together)
    print(
        f"{len(jobs)} concurrent jobs on one cache ({'alpha ' + args.alphas if sweep else 'one config'}), {args.root}"
    )
    print(f"{'stage':<10}{'one job':>10}{'jobs alone':>12}{'concurrent':>12}")
    separate = passes(alone) if sweep else {s: one[s] * len(jobs) for s in STAGES}
    for stage in STAGES:
        print(f"{stage:<10}{one[stage]:>10}{separate[stage]:>12}{many[stage]:>12}")
    total_one, total_many = sum(one.values()), sum(many.values())
    print(f"{'total':<10}{total_one:>10}{sum(separate.values()):>12}{total_many:>12}")
    print(
        f"concurrent / one job: {total_many / total_one:.2f}x; concurrent / jobs alone on separate caches: "
        f"{total_many / sum(separate.values()):.2f}x"
    )


if __name__ == "__main__":
    main()
