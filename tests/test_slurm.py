"""Sweeps through submitit against the real local SLURM of scripts/local_slurm.sh (`make test` starts it).

Set UNLOCK_SKIP_SLURM=1 to skip on a machine where SLURM cannot be started (no root); CI never does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, launch, results

if os.environ.get("UNLOCK_SKIP_SLURM") == "1":
    pytest.skip("UNLOCK_SKIP_SLURM=1", allow_module_level=True)

pytestmark = pytest.mark.slurm
TINY = ["experiment=tiny", "hydra/launcher=slurm_local", "eval.limit=2", "eval.max_new_tokens=4"]


@pytest.fixture(scope="module", autouse=True)
def slurm_is_up():
    if shutil.which("sinfo") is None:
        pytest.fail(
            "SLURM is not installed: run `scripts/local_slurm.sh up` (make test does) or set UNLOCK_SKIP_SLURM=1"
        )
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if state.returncode != 0 or not state.stdout.strip():
        pytest.fail(f"SLURM is not running ({state.stderr.strip()}): run `scripts/local_slurm.sh up`")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def test_sweep_on_slurm_with_one_failing_point(tmp_path):
    """Four good points and one invalid one: the good ones finish, the aggregate marks the bad one."""
    proc = launch(["-m", *TINY, "rank.value=2,4", "alpha.value=0.1,0.5"], tmp_path)
    (sweep_dir,) = list((tmp_path / "logs" / "multiruns").iterdir())
    jobs = _job_dirs(sweep_dir)
    assert len(jobs) == 4 and all(results(job)["status"] == "ok" for job in jobs)
    assert list(sweep_dir.glob(".submitit/*")), "jobs went through submitit"
    assert (sweep_dir / "aggregate.csv").is_file() and "sweep: 4 jobs" in proc.stdout

    failing = launch(["-m", *TINY, "layer=list", "layer.indices=[1],[42],[5]"], tmp_path / "bad", check=False)
    assert failing.returncode != 0, "a sweep with a failed point exits non-zero after aggregating"
    (sweep_dir,) = list((tmp_path / "bad" / "logs" / "multiruns").iterdir())
    statuses = {int(job.name): results(job)["status"] for job in _job_dirs(sweep_dir)}
    assert statuses == {0: "ok", 1: "failed", 2: "ok"}
    csv = (sweep_dir / "aggregate.csv").read_text()
    assert "failed" in csv and "Target layer 42 is out of range" in csv
    assert "1 of 3 sweep points failed" in failing.stderr + failing.stdout


def test_cancelled_job_resumes_from_cache_when_resubmitted(tmp_path):
    """scancel during evaluation; the resubmitted job reuses capture, extract and align."""
    args = [
        "-m",
        "experiment=tiny",
        "hydra/launcher=slurm_local",
        "eval.limit=40",
        "eval.max_new_tokens=128",
        "eval.conditions=[unsteered,unlock]",
        "alpha.value=0.3",
    ]
    env = {**os.environ, "UNLOCK_CACHE": str(tmp_path / "cache"), "UNLOCK_LOGS": str(tmp_path / "logs")}
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while not list((tmp_path / "cache" / "align").glob("*.safetensors")):
        assert time.time() < deadline and first.poll() is None, "the job never reached the align stage"
        time.sleep(0.5)
    job_ids = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-u", os.environ.get("USER", "root")], capture_output=True, text=True
    ).stdout.split()
    assert job_ids, "the job should still be running (evaluating) when cancelled"
    subprocess.run(["scancel", *job_ids], check=True)
    first.communicate(timeout=300)
    (sweep_dir,) = list((tmp_path / "logs" / "multiruns").iterdir())
    assert not (sweep_dir / "0" / "results.json").is_file() or results(sweep_dir / "0")["status"] != "ok"

    launch(args[:-1] + ["alpha.value=0.3"], tmp_path)  # resubmit the same point
    second_dir = max((tmp_path / "logs" / "multiruns").iterdir())
    record = results(second_dir / "0")
    assert record["status"] == "ok"
    for stage in ("capture", "extract", "align"):
        assert record["stages"][stage]["misses"] == 0 and record["stages"][stage]["hits"] > 0, record["stages"]
    assert record["stages"]["capture"]["forward_passes"] == 0
