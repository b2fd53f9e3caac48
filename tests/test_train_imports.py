"""The modules of ``crossct.train`` import one another in layers, without a cycle.

Every import counts, also the ones inside functions: a lazy import hides a cycle from Python but
not from a reader, who can no longer tell which module stands on which.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crossct.train

PACKAGE = "crossct.train"
FOLDER = Path(crossct.train.__file__).parent


def import_graph(folder: Path = FOLDER, package: str = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every ``.py`` file of ``folder``."""
    paths = {(package if p.name == "__init__.py" else f"{package}.{p.stem}"): p for p in folder.glob("*.py")}
    # Every module of the folder belongs to ``package``: relative imports start from it.
    base = package.split(".")
    graph: dict[str, set[str]] = {}
    for name, path in sorted(paths.items()):
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                start = base[: len(base) - node.level + 1] if node.level else []
                module = ".".join(start + ([node.module] if node.module else []))
                # ``from . import data`` stands for the module crossct.train.data.
                submodules = {f"{module}.{alias.name}" for alias in node.names} & paths.keys()
                targets.update(submodules or {module})
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]`` when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_find_cycle_known_answers():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_import_graph_reads_relative_and_lazy_imports(tmp_path):
    pkg = tmp_path / "train"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("import os\nfrom ..config import X\n")
    (pkg / "mid.py").write_text("from .low import thing\n")
    (pkg / "top.py").write_text("def f():\n    from . import mid\n    import crossct.train.low\n")
    assert import_graph(pkg, PACKAGE) == {
        PACKAGE: set(),
        f"{PACKAGE}.low": set(),
        f"{PACKAGE}.mid": {f"{PACKAGE}.low"},
        f"{PACKAGE}.top": {f"{PACKAGE}.mid", f"{PACKAGE}.low"},
    }


def test_train_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    assert f"{PACKAGE}.loops" in graph and f"{PACKAGE}.data" in graph
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_records_is_the_bottom_of_the_training_data():
    graph = import_graph()
    assert graph[f"{PACKAGE}.records"] == set()
    assert graph[f"{PACKAGE}.targets"] == {f"{PACKAGE}.records"}
    assert graph[f"{PACKAGE}.pack"] == {f"{PACKAGE}.records"}
    assert graph[f"{PACKAGE}.data"] == {f"{PACKAGE}.records", f"{PACKAGE}.targets"}
