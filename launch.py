"""UNLOCK harness entry point: compose a run with Hydra, execute its cached stages, record everything.

python launch.py                          # the main job (packaged real models, conf/config.yaml)
python launch.py experiment=tiny          # seconds-long smoke run on random tiny models
python launch.py -m rank.value=1,4,16     # a sweep; aggregate CSV + plots land in the sweep dir
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from unlock.run.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from unlock.analysis.generations import write as write_generations
    from unlock.run.config import composed, run_settings
    from unlock.run.harness import run
    from unlock.run.record import failure_record
    from unlock.run.summary import plot_fidelity, print_summary
    from unlock.run.wandb_log import log_run

    hydra_cfg = HydraConfig.get()
    output_dir = hydra_cfg.runtime.output_dir
    try:
        settings = run_settings(cfg)  # the config is read here, once; below, only the settings
        record = run(settings, output_dir)
    except Exception as error:
        record_or_exit(output_dir, failure_record(composed(cfg, resolve=False), error))
        print(f"[unlock] run failed: {type(error).__name__}: {error}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # The other points of the sweep go on; the aggregate lists this one as failed and the
            # sweep exits non-zero once every point has run.
            return None
        raise
    if record["status"] == "dry_run":
        return None
    path = record_or_exit(output_dir, record)  # on disk before any W&B call, so nothing is lost
    print_summary(record, path)
    plot_fidelity(record, output_dir)
    write_generations(output_dir)
    log_run(settings.logger, record, output_dir)
    unlock_acc = record["conditions"].get("unlock", {}).get(settings.evaluation.tasks[0], {}).get("acc")
    return unlock_acc


def record_or_exit(output_dir: str, record: dict) -> str:
    """Write results.json; a run whose record cannot be written (disk full, another run's results
    there) stops at once with exit code 3, naming the path, rather than carrying on without one."""
    from unlock.run.record import RecordExists, write_record

    try:
        return str(write_record(output_dir, record))
    except (OSError, RecordExists) as error:
        print(
            f"[unlock] cannot write the run's record to {output_dir}/results.json: {type(error).__name__}: {error}",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(3)  # not SystemExit: nothing (threads, W&B, Hydra's log handlers) may hold the exit


if __name__ == "__main__":
    main()
