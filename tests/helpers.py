"""Compose configs and run launch.py the way a user does, with caches and logs under a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from unlock.run.config import register_configs, run_settings
from unlock.run.settings import RunSettings

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def compose_run(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def settings_for(overrides: list[str]) -> RunSettings:
    """A run's settings, as launch.py builds them from the composed config."""
    return run_settings(compose_run(overrides))


def launch(args: list[str], tmp: Path, extra_env: dict[str, str] | None = None, check: bool = True):
    env = {
        **os.environ,
        "UNLOCK_CACHE": str(tmp / "cache"),
        "UNLOCK_LOGS": str(tmp / "logs"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **(extra_env or {}),
    }
    env.pop("WANDB_API_KEY", None)
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"launch.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def results(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())
