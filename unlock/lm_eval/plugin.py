"""Make the plain `lm_eval` CLI know `--model unlock`, without importing `unlock` at start-up.

lm-eval has no plugin discovery for model classes, so `python -m unlock.lm_eval.plugin` (run by
`make install`) writes two files into site-packages: ``_unlock_lm_eval_hook.py``, a verbatim copy of
the standard-library-only :mod:`unlock.lm_eval._hook`, and a one-line ``.pth`` file that imports that
copy and installs its import hook. The hook waits until lm-eval itself imports ``lm_eval.models`` and
then registers ``unlock`` as a lazy placeholder; the class is imported only when a user asks for it,
from the ``unlock`` the interpreter finds then. Nothing of the package is imported at start-up, so a
second checkout (git worktree, a colleague's copy) sharing the venv runs its own code.

Rerunning it overwrites both files, including an old-style ``.pth`` that imported ``unlock`` itself.
"""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path

from unlock.lm_eval import _hook as _lm_eval_hook

PTH_NAME = "unlock_lm_eval_plugin.pth"
HOOK_MODULE = "_unlock_lm_eval_hook"
HOOK_SOURCE = Path(_lm_eval_hook.__file__)
PTH_LINE = f"import {HOOK_MODULE}; {HOOK_MODULE}.install()\n"


def install_hook() -> None:
    """Install the import hook in this interpreter (what the ``.pth`` file does at start-up)."""
    _lm_eval_hook.install()


def install_pth(site_packages: str | Path | None = None) -> Path:
    """Write the hook module and its ``.pth`` into ``site_packages`` (default: this interpreter's
    purelib); returns the ``.pth`` path. The module is written first, so the ``.pth`` never names a
    missing module."""
    site = Path(site_packages or sysconfig.get_paths()["purelib"])
    module = site / f"{HOOK_MODULE}.py"
    module.write_text(HOOK_SOURCE.read_text())
    Path(importlib.util.cache_from_source(str(module))).unlink(missing_ok=True)  # no stale bytecode
    target = site / PTH_NAME
    target.write_text(PTH_LINE)
    return target


if __name__ == "__main__":
    print(f"wrote {install_pth()}: `lm_eval --model unlock` is available in this environment")
