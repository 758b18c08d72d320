"""`python -m unlock.lm_eval.plugin` makes lm-eval know `--model unlock` without importing `unlock` at
interpreter start-up, so a second checkout (git worktree, a colleague's copy) that shares the venv
runs its own code and config defaults, not those of the checkout the venv was installed from."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from unlock.lm_eval.plugin import (
    HOOK_MODULE,
    HOOK_SOURCE,
    PTH_LINE,
    PTH_NAME,
    install_pth,
)

REPO = Path(__file__).resolve().parent.parent
PURELIB = Path(sysconfig.get_paths()["purelib"])
OLD_PTH_LINE = "import unlock.lm_eval.plugin as _unlock_plugin; _unlock_plugin.install_hook()\n"

# Run with `python -S`: the interpreter start-up that site.py does, with the venv's own packages and
# .pth files, except that the plugin's files come from SITE (what install_pth wrote), not from the
# venv's current state. The script's directory joins sys.path only after start-up, as in a real one.
START_UP_THEN_CHECK = """
import json, site, sys
purelib, site_dir = sys.argv[1:3]
script_dir = sys.path.pop(0)
sys.path.append(purelib)
site.addsitedir(site_dir)
sys.path.insert(0, script_dir)
report = {"at_start_up": sorted(m for m in sys.modules if m.split(".")[0] == "unlock"),
          "hook_loaded": %(hook)r in sys.modules}
import unlock
report["unlock_file"] = unlock.__file__
report["marker"] = getattr(unlock, "CHECKOUT", None)
import lm_eval.models
from lm_eval.api.registry import get_model
model = get_model("unlock")
report["model"] = model.__module__ + ":" + model.__qualname__
report["model_file"] = sys.modules[model.__module__].__file__
print(json.dumps(report))
""" % {"hook": HOOK_MODULE}  # noqa: UP031 (the script is full of braces)


def _second_checkout(tmp_path: Path) -> Path:
    """A copy of the package and the entry point, marked so that its code is told apart."""
    copy = tmp_path / "checkout"
    shutil.copytree(REPO / "unlock", copy / "unlock", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "launch.py", copy / "launch.py")
    init = copy / "unlock" / "__init__.py"
    init.write_text(init.read_text() + '\nCHECKOUT = "second"\n')
    return copy


def _site_dir(tmp_path: Path) -> Path:
    """The venv's other .pth files (the editable install's finder among them), an old-style plugin
    .pth, then what install_pth writes over it."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    for pth in PURELIB.glob("*.pth"):
        if pth.name != PTH_NAME:
            shutil.copy2(pth, site_dir / pth.name)
    (site_dir / PTH_NAME).write_text(OLD_PTH_LINE)
    assert install_pth(site_dir) == site_dir / PTH_NAME
    return site_dir


def test_installed_hook_imports_nothing_at_start_up_and_a_second_checkout_runs_its_own_code(tmp_path):
    site_dir = _site_dir(tmp_path)
    pth = (site_dir / PTH_NAME).read_text()
    assert "unlock." not in pth and "import unlock" not in pth, pth  # the old-style line is gone
    assert (site_dir / f"{HOOK_MODULE}.py").read_text() == HOOK_SOURCE.read_text()
    copy = _second_checkout(tmp_path)
    done = subprocess.run(
        [sys.executable, "-S", "-c", START_UP_THEN_CHECK, str(PURELIB), str(site_dir)],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["hook_loaded"] is True
    assert report["at_start_up"] == []
    assert Path(report["unlock_file"]).resolve() == (copy / "unlock" / "__init__.py").resolve()
    assert report["marker"] == "second"
    assert report["model"] == "unlock.lm_eval.hf_model:UnlockLM"
    assert Path(report["model_file"]).resolve() == (copy / "unlock" / "lm_eval" / "hf_model.py").resolve()


def test_the_hook_is_standard_library_only():
    """It runs at every start-up from a copy in site-packages; lm_eval is imported only once lm-eval
    itself has imported lm_eval.models."""
    tree = ast.parse(HOOK_SOURCE.read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == {"lm_eval"}


def test_this_environment_imports_nothing_of_unlock_at_start_up(tmp_path):
    """The venv the tests run in: its installed hook is the current one (else run `make install` or
    `python -m unlock.lm_eval.plugin`), and a second checkout there imports its own package."""
    installed = PURELIB / PTH_NAME
    if not installed.exists():
        pytest.skip(f"no lm-eval hook installed in {PURELIB}")
    fix = "run `python -m unlock.lm_eval.plugin` (make install) to replace it"
    assert installed.read_text() == PTH_LINE, f"{installed} is stale: {fix}"
    hook = PURELIB / f"{HOOK_MODULE}.py"
    assert hook.exists() and hook.read_text() == HOOK_SOURCE.read_text(), f"{hook} is stale: {fix}"
    copy = _second_checkout(tmp_path)
    code = (
        "import json, sys; at_start_up = 'unlock' in sys.modules; import unlock; "
        "print(json.dumps([at_start_up, unlock.__file__]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    at_start_up, unlock_file = json.loads(done.stdout.strip().splitlines()[-1])
    assert at_start_up is False
    assert Path(unlock_file).resolve() == (copy / "unlock" / "__init__.py").resolve()
