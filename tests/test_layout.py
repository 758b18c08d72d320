"""The package's shape: no import cycles (top-level or function-local imports alike), no function
longer than 60 lines in unlock/, and the import paths users' notebooks rely on."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
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
                return stack[stack.index(nxt) :] + [nxt]
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
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long


@pytest.mark.parametrize(
    "module",
    [
        "unlock.method.capture",
        "unlock.method.extract",
        "unlock.method.align",
        "unlock.method.steer",
        "unlock.store.artifacts",
        "unlock.models.tiny",
        "unlock.tasks.answers",
        "unlock.method.pipeline",
    ],
)
def test_notebook_import_paths_stay(module):
    assert importlib.import_module(module)


def test_no_function_local_imports_of_unlock_modules():
    """Imports of the package's own modules sit at the top of each module (nothing left to dodge a
    cycle); function-local imports are kept only for heavy optional libraries (wandb, matplotlib,
    lm_eval, datasets), so that `logger=none` and a dry run never pay for them."""
    local = [
        f"{name}.{func.name}: {node.module if isinstance(node, ast.ImportFrom) else node.names[0].name}"
        for name, tree in _modules().items()
        for func in ast.walk(tree)
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(func)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and ((node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name).startswith("unlock")
    ]
    assert local == ["unlock.run.evaluate.lm: unlock.lm_eval.hf_model"]  # it imports lm_eval (seconds)


def _imported(tree: ast.Module) -> set[str]:
    """Every module a file imports, top-level or function-local."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_method_modules_import_no_config_framework_and_nothing_around_them():
    """capture, extract, align, steer, pipeline and blocks take tensors, models and settings objects:
    no omegaconf or hydra, and of this package only each other."""
    for name, tree in _modules().items():
        if not name.startswith("unlock.method"):
            continue
        imported = _imported(tree)
        assert not {m for m in imported if m.split(".")[0] in ("omegaconf", "hydra")}, name
        assert {m for m in imported if m.startswith("unlock")} <= {
            m for m in _modules() if m.startswith("unlock.method")
        }, name


# Where the composed Hydra config may be read: the module that turns it into RunSettings, and the entry
# points Hydra calls with it (make analyze's `__main__`, the multirun's callback; launch.py is outside
# the package). Everything else takes settings objects.
CONFIG_READERS = {"unlock.run.config", "unlock.analysis.__main__"}
CONFIG_ENTRY_FUNCTIONS = {("unlock.run.track", "on_multirun_end")}  # Hydra's callback: hands it to run.config
HYDRA_BASES = {"hydra.experimental.callback"}  # the callback's base class (no config is read through it)


def config_reader_violations(modules: dict[str, ast.Module]) -> list[str]:
    """omegaconf or hydra imports, and parameters that take a config (``cfg``, ``*_cfg``, ``config`` or an
    annotation naming DictConfig or RunConfig), outside the allowed readers."""
    found = []
    for name, tree in modules.items():
        if name in CONFIG_READERS:
            continue
        framework = {m for m in _imported(tree) if m.split(".")[0] in ("omegaconf", "hydra")} - HYDRA_BASES
        found += [f"{name} imports {m}" for m in sorted(framework)]
        for func in ast.walk(tree):
            if (
                not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
                or (name, func.name) in CONFIG_ENTRY_FUNCTIONS
            ):
                continue
            for arg in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]:
                annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                if (
                    arg.arg in ("cfg", "config")
                    or arg.arg.endswith("_cfg")
                    or re.search(r"DictConfig|RunConfig", annotation)
                ):
                    found.append(f"{name}.{func.name}({arg.arg}: {annotation or '?'})")
    return found


def test_only_run_config_and_the_entry_points_read_the_composed_config():
    """run_settings (unlock.run.config) reads the composed config once; below the entry points no module
    imports omegaconf or hydra and no function takes the config."""
    assert config_reader_violations(_modules()) == []


def test_the_config_reader_check_finds_a_reader():
    planted = ast.parse(
        "from omegaconf import DictConfig\n"
        "def plan(cfg): ...\n"
        "def load(model_cfg): ...\n"
        "def typed(x: DictConfig): ...\n"
        "def fine(settings, hf_config): ...\n"
    )
    assert config_reader_violations({"unlock.run.plan": planted}) == [
        "unlock.run.plan imports omegaconf",
        "unlock.run.plan.plan(cfg: ?)",
        "unlock.run.plan.load(model_cfg: ?)",
        "unlock.run.plan.typed(x: DictConfig)",
    ]


# Layers, lowest first: a module imports only from its own layer or lower ones. tasks is data (the
# planted corpus is generated from the planted models' recipe); lm_eval and analysis are side by side
# and do not import each other; entry points (`__main__` modules) may import anything.
LAYERS = {"method": 0, "store": 1, "models": 2, "tasks": 3, "lm_eval": 4, "analysis": 4, "run": 5}


def test_layers_only_point_down():
    arrows = set()
    for name, tree in _modules().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[-1] == "__main__" or parts[1] not in LAYERS:
            continue
        for imported in _imported(tree):
            other = imported.split(".")
            if imported.startswith("unlock.") and len(other) > 2 and other[1] in LAYERS and other[1] != parts[1]:
                if LAYERS[other[1]] >= LAYERS[parts[1]]:
                    arrows.add(f"{name} -> {imported}")
    assert not arrows, "imports that point up or sideways:\n" + "\n".join(sorted(arrows))
    assert set(LAYERS) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}, (
        "every folder has a layer"
    )


def test_each_concern_has_its_folder():
    """Besides the notebook import paths (one-line aliases of the moved modules), unlock/ holds only
    folders named after what they hold."""
    import unlock

    top = sorted(f"unlock.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert top == sorted(unlock.ALIASES), "every top-level module is a permanent alias listed in unlock.ALIASES"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert folders == ["analysis", "lm_eval", "method", "models", "run", "store", "tasks"]


@pytest.mark.parametrize("alias", sorted(__import__("unlock").ALIASES))
def test_each_permanent_import_path_is_the_module_it_names(alias):
    """In a fresh interpreter, importing the short path first gives the very module object of the long
    one (private names included), and importing it again afterwards does too."""
    target = __import__("unlock").ALIASES[alias]
    code = (
        f"import importlib, sys; a = importlib.import_module({alias!r}); b = importlib.import_module({target!r}); "
        f"assert a is b is sys.modules[{alias!r}], (a, b); "
        f"assert importlib.import_module({alias!r}) is b; print(b.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == target


def test_statistics_live_in_one_home_below_the_run_layer():
    """The Wilson interval, the paired tests, power and the adjustment are in unlock.analysis.stats; the
    comparisons and the decision rule (unlock.analysis.paired) import nothing of the run layer, and the
    run's design of comparisons is the one the samples-only CLI uses."""
    modules = _modules()
    for name in ("unlock.analysis.stats", "unlock.analysis.paired", "unlock.analysis.paper"):
        assert not {m for m in _imported(modules[name]) if m.startswith("unlock.run")}, name
    defined = {
        node.name
        for name, tree in modules.items()
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.name in ("wilson_interval", "holm", "mcnemar_exact")
        and name != "unlock.analysis.stats"
    }
    assert not defined, f"a second copy of {defined}"
    from unlock.analysis.paired import DESIGN as CLI_DESIGN
    from unlock.run.conditions import DESIGN

    assert DESIGN == CLI_DESIGN


def test_the_type_checker_reads_the_packages_types():
    """`make lint`'s mypy, with the project's settings, refuses a call that breaks a typed surface (a
    SteeringSettings given text for alpha, a Steering given a bare alpha), and accepts the right one."""
    program = (
        "from unlock.method.steer import Steering, SteeringSettings\n"
        "ok = SteeringSettings(0.1, 'add', 'all')\n"
        "bad = SteeringSettings(alpha='0.1')\n"
        "def steer(model, vectors) -> Steering:\n"
        "    return Steering(model, vectors, 0.1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(PACKAGE.parent / "pyproject.toml"), "-c", program],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert done.returncode == 1 and len(errors) == 2, done.stdout + done.stderr
    assert ":3: error:" in errors[0] and '"alpha"' in errors[0] and ":5: error:" in errors[1], errors
