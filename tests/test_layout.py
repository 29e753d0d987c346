"""The layout's floors, read from the source: every import at any depth (inside functions too)
of every module. ``shards/base`` imports nothing of the project; nothing under ``shards/``
imports torch or DALI; each floor imports only the floors below it (shards <- pipelines <-
models <- train <- bench <- cli.py); only ``cli.py`` imports ``bench``; ``train/`` has no import
cycle. Imports under ``if TYPE_CHECKING:`` never run and are left out (annotations only)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.support.raw_datasets import REPO

FLOORS = ("shards", "pipelines", "models", "train", "bench", "cli")  # each above the ones before
HEAVY = ("torch", "nvidia")  # what shards/ never imports (torch, DALI)


def list_modules(root: Path) -> dict[str, Path]:
    """Every module of the floors under ``root``: dotted name -> file."""
    found = {"cli": root / "cli.py"} if (root / "cli.py").is_file() else {}
    for floor in FLOORS[:-1]:
        for path in sorted((root / floor).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def read_imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported dotted name, line, whether it is a name from a module) for every import in the
    module, at any depth; ``from a import b`` gives ``a`` and ``a.b`` (b may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno, False) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            found.append((base, node.lineno, False))
            found.extend((f"{base}.{a.name}", node.lineno, True) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _floor(dotted: str) -> str:
    return dotted.split(".")[0]


def _within(dotted: str, prefix: str) -> bool:
    return dotted == prefix or dotted.startswith(prefix + ".")


def _resolve(dotted: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name is (or lies in), else None."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def floor_rules(name: str, dotted: str) -> list[str]:
    """The floors module ``name`` breaks by importing ``dotted``, each as its rule."""
    here, target = _floor(name), _floor(dotted)
    broken = []
    if _within(name, "shards.base") and target in FLOORS and not _within(dotted, "shards.base"):
        broken.append("shards/base imports nothing of the project")
    if here == "shards" and target in HEAVY:
        broken.append("shards/ imports no torch or DALI")
    if target == "bench" and here not in ("bench", "cli"):
        broken.append("only cli.py imports bench")
    elif target in FLOORS and FLOORS.index(target) > FLOORS.index(here):
        broken.append("a floor imports only the floors below it")
    return broken


def find_violations(root: Path) -> list[str]:
    """Every import under ``root`` that breaks a floor, one line each: where and what."""
    modules = list_modules(root)
    problems: list[str] = []
    train: dict[str, set[str]] = {m: set() for m in modules if _floor(m) == "train"}
    for name, path in modules.items():
        for dotted, line, member in read_imports(name, path):
            if not member:
                where = f"{path.relative_to(root)}:{line}: {name} imports {dotted}"
                problems += [f"{where} ({rule})" for rule in floor_rules(name, dotted)]
            module = _resolve(dotted, modules)
            if name in train and module in train and module != name:
                train[name].add(module)
    problems += [f"import cycle in train/: {' <-> '.join(c)}" for c in find_cycles(train)]
    return sorted(set(problems))


def test_the_project_keeps_its_floors():
    assert find_violations(REPO) == []
    modules = list_modules(REPO)
    assert {"cli", "shards.base.errors", "bench.harness", "train.loop"} <= set(modules)


def _package(root: Path, files: dict[str, str]) -> Path:
    """A tiny project under ``root``: each floor a package, plus ``files`` (path -> source)."""
    for floor in FLOORS[:-1]:
        (root / floor).mkdir(parents=True, exist_ok=True)
        (root / floor / "__init__.py").write_text("")
    (root / "shards" / "base").mkdir(exist_ok=True)
    (root / "shards" / "base" / "__init__.py").write_text("")
    (root / "cli.py").write_text("from bench import commands\n")
    for rel, source in files.items():
        (root / rel).write_text(source)
    return root


PLANTED = {
    "base imports the project": (
        {"shards/base/options.py": "def f():\n    from shards.views import x\n"},
        "shards/base/options.py:2: shards.base.options imports shards.views (shards/base",
    ),
    "shards imports torch": (
        {"shards/views.py": "def f():\n    if True:\n        import torch\n"},
        "shards/views.py:3: shards.views imports torch (shards/ imports no torch or DALI)",
    ),
    "shards imports DALI": (
        {"shards/views.py": "from nvidia.dali import fn\n"},
        "shards/views.py:1: shards.views imports nvidia.dali (shards/ imports no torch",
    ),
    "train imports bench": (
        {"train/loop.py": "class A:\n    def f(self):\n        from bench.harness import t\n"},
        "train/loop.py:3: train.loop imports bench.harness (only cli.py imports bench)",
    ),
    "a floor imports one above": (
        {"pipelines/loader.py": "def f():\n    import models.heads\n"},
        "pipelines/loader.py:2: pipelines.loader imports models.heads (a floor imports only",
    ),
    "a cycle in train through a function": (
        {
            "train/loop.py": "from train.sweep import g\n",
            "train/sweep.py": "def g():\n    from train import loop\n",
        },
        "import cycle in train/: train.loop <-> train.sweep",
    ),
    "a cycle through a relative import": (
        {"train/plan.py": "from .settings import s\n", "train/settings.py": "import train.plan\n"},
        "import cycle in train/: train.plan <-> train.settings",
    ),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_a_planted_violation_is_found(tmp_path, case):
    files, expected = PLANTED[case]
    problems = find_violations(_package(tmp_path, files))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_what_never_runs_or_stays_below_passes(tmp_path):
    """Annotations-only imports under TYPE_CHECKING, downward imports and bench imported by
    cli.py and by bench itself break nothing."""
    files = {
        "train/settings.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from train.plan import RunPlan\n",
        "train/plan.py": "from train.settings import s\nfrom shards.base import errors\n",
        "bench/train.py": "import torch\nfrom train.plan import p\nfrom bench import harness\n",
        "shards/base/options.py": "from shards.base.errors import WsmlError\n",
    }
    assert find_violations(_package(tmp_path, files)) == []


def _plant(root: Path, package: str, modules: dict[str, str]) -> None:
    """A package ``package`` under ``root`` that discovers its modules as the registries do."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(
        "from shards.base.registry import import_modules\n\n"
        "FOUND = []\nMODULES = import_modules(__name__, __path__)\n"
    )
    for name, source in modules.items():
        (root / package / f"{name}.py").write_text(source)


def test_discovery_imports_every_module_of_the_package(tmp_path, monkeypatch):
    registers = "from {0} import FOUND\nFOUND.append(__name__)\n"
    _plant(tmp_path, "wsml_found", {m: registers.format("wsml_found") for m in ("b", "a", "c")})
    monkeypatch.syspath_prepend(str(tmp_path))
    import wsml_found

    assert wsml_found.MODULES == ["a", "b", "c"]
    assert wsml_found.FOUND == ["wsml_found.a", "wsml_found.b", "wsml_found.c"]


@pytest.mark.parametrize(
    ("source", "why"),
    [("import wsml_no_such_module\n", "ModuleNotFoundError"), ("x = 1 +\n", "SyntaxError"),
     ("raise RuntimeError('half-written')\n", "RuntimeError: half-written")],
    ids=["misspelt import", "syntax error", "failing registration"],
)  # fmt: skip
def test_a_broken_module_stops_discovery_naming_itself(tmp_path, monkeypatch, source, why):
    """A misspelt import, a syntax error or a failing registration: the package fails to
    import, naming the broken module (never skipped silently)."""
    package = f"wsml_broken_{why[:3].lower()}"
    _plant(tmp_path, package, {"good": "", "broken": source})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=rf"^{package}\.broken failed to import: {why}"):
        importlib.import_module(package)


def test_the_registries_hold_every_module_of_their_packages():
    """Every file of train/methods and shards/converters is imported by its package."""
    import sys

    import shards.converters
    import train.methods

    for package in (shards.converters, train.methods):
        files = sorted(p.stem for p in Path(package.__path__[0]).glob("[!_]*.py"))
        assert files and all(f"{package.__name__}.{f}" in sys.modules for f in files)
