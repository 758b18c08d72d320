"""Every `make <target>` the README names has a recipe in the Makefile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# `make x` at the start of a code line or inline code (prose like "to make sure" does not count).
README_TARGETS = sorted(set(re.findall(r"(?:^|`)make ([a-z][a-z-]*)", (REPO / "README.md").read_text(), re.M)))


def _dry_run(target: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`make -n` prints the commands and runs none; a venv path that does not exist makes the install
    step print too, so a target whose only rule is its prerequisites still shows commands."""
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        [
            "make",
            "-n",
            "--no-print-directory",
            "-C",
            str(REPO),
            target,
            f"VENV={tmp_path / 'venv'}",
            f"LATEST_VENV={tmp_path / 'venv-latest'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readme_names_targets():
    assert {"run", "test", "test-fast", "install"} <= set(README_TARGETS)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize("target", README_TARGETS)
def test_every_make_target_the_readme_names_has_a_recipe(target, tmp_path):
    done = _dry_run(target, tmp_path)
    assert done.returncode == 0, done.stderr
    # A name only listed in .PHONY exits 0 too, with "Nothing to be done": it must print commands.
    assert "Nothing to be done" not in done.stdout + done.stderr, f"`make {target}` has no recipe"
    assert done.stdout.strip(), f"`make {target}` prints no commands"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_test_fast_runs_lint_and_the_type_check_then_the_fast_tests_only(tmp_path):
    commands = _dry_run("test-fast", tmp_path).stdout.strip().splitlines()
    python = f"{tmp_path / 'venv'}/bin/python"
    assert commands[-4:] == [
        f"{python} -m ruff check .",
        f"{python} -m ruff format --check .",
        f"{python} -m mypy -p unlock -p hydra_plugins",
        f'{python} -m pytest -m "not slow and not slurm and not vllm"',
    ]
    test = [line.strip() for line in _dry_run("test", tmp_path).stdout.splitlines()]
    pytest_at = next(i for i, line in enumerate(test) if line.startswith(f"{python} -m pytest"))
    lint = [test.index(command) for command in commands[-4:-1]]
    assert lint == sorted(lint) and lint[-1] < pytest_at, "make test lints (ruff, then mypy) first"
