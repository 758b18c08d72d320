"""The package's shape: no import cycles (top-level or function-local imports alike), no function
longer than 60 lines in unlock/, and the import paths users' notebooks rely on."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "unlock"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """module -> the unlock modules it imports anywhere in its body (``from unlock import x`` counts
    as importing ``unlock.x`` when that is a module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name and t != "unlock"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_unlock():
    assert find_cycle(import_graph()) is None


def test_no_function_in_unlock_is_longer_than_60_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in _modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long


@pytest.mark.parametrize("module", ["unlock.capture", "unlock.extract", "unlock.align", "unlock.steer",
                                    "unlock.artifacts", "unlock.tiny", "unlock.tasks.answers", "unlock.pipeline"])
def test_notebook_import_paths_stay(module):
    assert importlib.import_module(module)


def test_no_function_local_imports_of_unlock_modules():
    """Imports of the package's own modules sit at the top of each module (nothing left to dodge a
    cycle); function-local imports are kept only for heavy optional libraries (wandb, matplotlib,
    lm_eval, datasets), so that `logger=none` and a dry run never pay for them."""
    local = [f"{name}.{func.name}: {node.module if isinstance(node, ast.ImportFrom) else node.names[0].name}"
             for name, tree in _modules().items() for func in ast.walk(tree)
             if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(func) if isinstance(node, (ast.Import, ast.ImportFrom))
             and ((node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name).startswith("unlock")]
    assert local == ["unlock.evaluate.engine: unlock.evaluate_vllm",  # it imports vLLM (tens of seconds)
                     "unlock.evaluate.lm: unlock.lm_eval_model"]  # it imports lm_eval (seconds)
