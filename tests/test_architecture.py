"""The package's layers (deepres.LAYERS): every module-level import of a deepres module goes to the
same package or a lower layer, no file imports another inside a function, and the module import graph has no
cycle. `import deepres` and `deepres --help` import no torch."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepres import LAYERS

SRC = Path(__file__).resolve().parents[1] / "src"

# A package may import its own modules and any package of a lower layer; "cli" is the top-level files.
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "deepres").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or (SRC / "deepres" / f"{parts[1]}.py").is_file():
        return "cli"  # a top-level file: deepres/__init__.py, __main__.py, cli.py
    return parts[1]


def _resolve(name: str) -> str | None:
    """The deepres module an imported name lives in (a package's __init__ for names it exports)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path):
    """(imported deepres module, line, at module level) for every import statement in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "deepres":
                target = _resolve(name)
                if target and target != module:
                    yield target, node.lineno, id(node) in top_level


def test_every_package_has_a_layer():
    assert {_package(m) for m in MODULES} <= set(RANK), "a new package needs its place in LAYERS"


def test_imports_go_down_the_layers_only():
    wrong = []
    for module, path in MODULES.items():
        own = _package(module)
        for target, line, _ in _imports(module, path):
            other = _package(target)
            if other != own and RANK[other] >= RANK[own]:
                wrong.append(f"{path.name}:{line}: {module} ({own}, layer {RANK[own]}) imports {target} "
                             f"({other}, layer {RANK[other]})")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(wrong)


def test_no_function_level_imports_of_deepres_modules():
    # deepres.cli imports the chosen subcommand's module through importlib, which this does not count
    inner = [f"{path.relative_to(SRC)}:{line}: {target}" for module, path in MODULES.items()
             for target, line, top in _imports(module, path) if not top]
    assert not inner, "imports inside functions (move them to the top of the file):\n" + "\n".join(inner)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in _imports(m, p) if not (p.name == "__init__.py" and t.startswith(m + "."))}
             for m, p in MODULES.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def with_module(name: str, source: str, tmp_path, monkeypatch) -> None:
    """MODULES plus a module `name` (deepres.<package>.<x>) holding `source`, for a test of a rule."""
    path = tmp_path / f"{name.rpartition('.')[2]}.py"
    path.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {**MODULES, name: path})


def test_the_layer_test_catches_an_upward_import(tmp_path, monkeypatch):
    # a core module importing the training loop must be reported
    with_module("deepres.core.bad", "from deepres.train.loop import fit\n", tmp_path, monkeypatch)
    with pytest.raises(AssertionError, match="deepres.core.bad \\(core, layer 0\\) imports deepres.train.loop"):
        test_imports_go_down_the_layers_only()


def test_import_deepres_and_help_load_no_torch():
    code = ("import sys, deepres, deepres.cli\n"
            "try:\n    deepres.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'matplotlib', 'onnx')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "train a model from a recipe" in done.stdout  # the help was printed
    assert done.stdout.strip().splitlines()[-1] == "[]"


# Outside tasks/, no code asks which task it is: the task row answers (deepres.tasks). These spellings are how code
# asked before the rows owned inference and evaluation.
TASK_QUESTIONS = re.compile(r"is_segmentation|\btask\s*[!=]=|\.task\s*[!=]=|is SegmentationTask|is ClassificationTask|"
                            r"isinstance\([^)]*(?:Segmentation|Classification)Task")


def test_no_code_outside_tasks_asks_which_task_it_is():
    asked = [f"{path.name}:{number}: {module}: {line.strip()}" for module, path in MODULES.items()
             if _package(module) != "tasks"
             for number, line in enumerate(path.read_text().splitlines(), 1) if TASK_QUESTIONS.search(line)]
    assert not asked, "task branches outside deepres/tasks (ask the task row instead):\n" + "\n".join(asked)


def test_the_task_rule_catches_a_branch(tmp_path, monkeypatch):
    with_module("deepres.inference.bad", "def f(p):\n    return 1 if p.is_segmentation else 2\n", tmp_path,
                monkeypatch)
    with pytest.raises(AssertionError, match="bad.py:2"):
        test_no_code_outside_tasks_asks_which_task_it_is()


def test_argparse_only_in_the_commands_package():
    """The library packages take values, not parsed command lines: argparse lives in deepres.commands (and the
    dispatcher, deepres/cli.py)."""
    found = [f"{path.relative_to(SRC)}" for module, path in MODULES.items()
             if _package(module) not in ("commands", "cli") and re.search(r"^\s*(import argparse|from argparse)",
                                                                          path.read_text(), re.M)]
    assert not found, "argparse outside deepres.commands: " + ", ".join(found)
