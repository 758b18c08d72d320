"""Register this project's lm-eval models when lm-eval imports ``lm_eval.models``; imports nothing else.

This file is copied verbatim into site-packages as ``_unlock_lm_eval_hook.py`` by
``python -m unlock.lm_eval.plugin`` (run by ``make install``), and a one-line ``.pth`` file there calls
:func:`install` at every interpreter start. It must therefore stay standard-library only and must never
import ``unlock``: a start-up import would pin ``sys.modules["unlock"]`` to the checkout the venv was
installed from, so a second checkout (a git worktree, a colleague's copy) sharing the venv would
silently run the first one's code and config defaults. Models are registered as lazy
``"module:Class"`` placeholders; lm-eval imports the class only when a user asks for that model,
from whichever ``unlock`` the importing interpreter finds first on its path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

# lm-eval model name -> "module:Class", imported by lm-eval only when that model is asked for.
MODELS: dict[str, str] = {
    "unlock": "unlock.lm_eval.hf_model:UnlockLM",
    "unlock_vllm": "unlock.lm_eval.vllm_model:UnlockVLLM",
}


def register(model_registry) -> None:
    """Register every model of :data:`MODELS` that the registry does not hold yet (as a placeholder)."""
    for name, target in MODELS.items():
        if name not in model_registry:  # membership only: ``get`` would import a placeholder's module
            model_registry.register(name, target=target)


class RegisterModels(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``lm_eval.models`` so that :func:`register` runs right after it executes."""

    unlock_lm_eval_hook = True  # marks this finder whichever copy of this file defined it

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

            register(model_registry)

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once, even if both this file and its copy run it)."""
    if not any(getattr(finder, "unlock_lm_eval_hook", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, RegisterModels())
    if "lm_eval.models" in sys.modules:  # imported before install() ran: register now
        from lm_eval.api.registry import model_registry

        register(model_registry)
