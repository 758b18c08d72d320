"""hydra-submitit-launcher's SLURM launcher with two fixes a sweep needs to survive a real cluster.

1. Job state without accounting: submitit reads job states from ``sacct``, which fails where SLURM
   accounting is off (small clusters, the local test cluster). Then states are read from ``squeue
   --states=all``, which keeps ended jobs for MinJobAge, so a cancelled or failed job is seen as such
   instead of being waited on forever.
2. One dead job does not sink the sweep: the stock launcher raises on the first job that did not
   complete (cancelled, killed, out of time), so the other results are never aggregated. Here such a
   job gets a ``results.json`` saying why it died, and the sweep goes on to aggregation, which reads
   result files (never only job status) and makes launch.py exit non-zero.
A job that SLURM requeues (preemption, timeout) re-runs from the stage cache, redoing no finished stage.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from hydra.core.utils import JobReturn, JobStatus
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from unlock.store.artifacts import atomic_write_json


class AccountingFreeWatcher(SlurmInfoWatcher):
    """Reads job states with sacct where accounting is on, else with squeue."""

    _sacct_works: bool | None = None

    @classmethod
    def sacct_works(cls) -> bool:
        if cls._sacct_works is None:
            try:
                probe = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=30)
                cls._sacct_works = probe.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                cls._sacct_works = False
        return cls._sacct_works

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or self.sacct_works():
            return command
        job_ids = [command[i + 1] for i, part in enumerate(command) if part == "-j"]
        return ["squeue", "--array", "--states=all", "--format=%i|%T|%N", f"--jobs={','.join(job_ids)}"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        lines = text.splitlines()
        if lines and lines[0].startswith("JOBID|"):
            lines[0] = "JobID|State|NodeList"  # squeue's header, in sacct's names
        return super().read_info("\n".join(lines))


class _RecordingJob:
    """Wraps a submitit job: a job that did not complete yields a failure record, not an exception."""

    def __init__(self, job: Any, job_dir: Path) -> None:
        self._job, self._job_dir = job, job_dir

    def results(self) -> list[JobReturn]:
        try:
            return self._job.results()
        except Exception as error:  # cancelled, killed, out of time: record why
            reason = f"{type(error).__name__}: SLURM job {self._job.job_id} did not complete ({str(error)[:500]})"
            if not (self._job_dir / "results.json").is_file():
                atomic_write_json(self._job_dir / "results.json", {"status": "failed", "error": reason})
            ret = JobReturn()
            ret.status = JobStatus.COMPLETED  # the aggregate, not Hydra, reports this point as failed
            ret.return_value = None
            return [ret]


class UnlockSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        original_map_array = submitit.AutoExecutor.map_array

        def map_array(executor, fn, *iterables):
            jobs = original_map_array(executor, fn, *iterables)
            job_numbers = iterables[2]  # (overrides, dir key, job number, job id, singleton state)
            return [_RecordingJob(job, sweep_dir / str(num)) for job, num in zip(jobs, job_numbers, strict=False)]

        with (
            mock.patch.object(SlurmJob, "watcher", AccountingFreeWatcher(delay_s=15)),
            mock.patch.object(submitit.AutoExecutor, "map_array", map_array),
        ):
            return super().launch(job_overrides, initial_job_idx)
