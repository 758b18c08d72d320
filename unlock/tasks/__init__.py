"""Local lm-eval tasks shipped with the harness; pass TASKS_DIR to TaskManager(include_path=...)."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
