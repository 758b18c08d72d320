"""Make the plain `lm_eval` CLI know `--model unlock`, without importing anything at start-up.

lm-eval has no plugin discovery for model classes, so `python -m unlock.lm_eval_plugin` (run by
`make install`) writes a one-line ``.pth`` file into site-packages that installs the import hook
below. The hook waits until lm-eval itself imports ``lm_eval.models`` and then registers ``unlock``
as a lazy placeholder; the class is imported only when a user asks for it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "unlock_lm_eval_plugin.pth"
MODEL_TARGET = "unlock.lm_eval_model:UnlockLM"


class _RegisterUnlockModel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "lm_eval.models":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            from lm_eval.api.registry import model_registry

            if model_registry.get("unlock", None) is None:
                model_registry.register("unlock", target=MODEL_TARGET)

        spec.loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def install_hook() -> None:
    if not any(isinstance(finder, _RegisterUnlockModel) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterUnlockModel())


def install_pth(site_packages: str | None = None) -> Path:
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text("import unlock.lm_eval_plugin as _unlock_plugin; _unlock_plugin.install_hook()\n")
    return target


if __name__ == "__main__":
    print(f"wrote {install_pth()}: `lm_eval --model unlock` is available in this environment")
