"""The import graph of ``sweeps/`` is one-way (DESIGN.md, "Inside sweeps/"): no module imports,
directly or through others, a module that imports it. Imports inside functions count. Read from
the source with ``ast``, so nothing is imported to check it."""

from __future__ import annotations

import ast
import functools
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "sweeps"
# Third-party modules the pure analysis module may import (besides the standard library).
ANALYSIS_ALLOWED = {"numpy", "pandas"}


def modules(package: str = PACKAGE) -> dict[str, str]:
    """``{module name: path}`` of every module of ``package`` (one level, as sweeps/ is)."""
    folder = os.path.join(REPO, package)
    return {
        name[: -len(".py")]: os.path.join(folder, name)
        for name in sorted(os.listdir(folder))
        if name.endswith(".py") and name != "__init__.py"
    }


def imported_names(path: str, package: str = PACKAGE) -> tuple[set[str], set[str]]:
    """(modules of ``package`` that the file imports, top-level names of the other imports),
    anywhere in the file: at the top, inside functions, under ``if __name__``."""
    tree = ast.parse(open(path).read(), filename=path)
    ours, others = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    ours.add(parts[1])
                elif parts[0] != package:
                    others.add(parts[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and node.module and node.module.split(".")[0]
                                   == package):  # fmt: skip
                rest = (node.module or "").split(".")
                if node.level == 0:
                    rest = rest[1:]
                if rest and rest[0]:
                    ours.add(rest[0])  # from .analysis import x / from sweeps.analysis import x
                else:
                    ours.update(a.name for a in node.names)  # from . import analysis
            elif node.level == 0 and node.module:
                others.add(node.module.split(".")[0])
            else:
                raise AssertionError(f"{path}: import from a parent package ({ast.dump(node)})")
    return ours, others


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """``{module: modules of sweeps it imports}``; a module importing itself (``python -m``
    entry points re-import their own module by name) is not an edge."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        ours, _ = imported_names(path)
        graph[name] = {m for m in ours if m in mods and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_find_cycle_reports_the_circle():
    # the circle sweeps/ had before this layout: cli -> pareto -> runner -> cli
    graph = {"cli": {"pareto"}, "pareto": {"runner", "report"}, "report": set(),
             "runner": {"cli"}}  # fmt: skip
    assert find_cycle(graph) == ["cli", "pareto", "runner", "cli"]
    graph["runner"] = set()
    assert find_cycle(graph) is None


def test_imported_names_count_every_form(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\nfrom .tracking import x\nimport sweeps.report\n"
        "def f():\n    from sweeps.runner import y\n    from . import cli\n    import torch\n"
        "if __name__ == '__main__':\n    from sweeps.pareto import main\n"
    )
    assert imported_names(str(source)) == (
        {"tracking", "report", "runner", "cli", "pareto"},
        {"os", "torch"},
    )


def test_sweeps_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"analysis", "catalog", "pareto", "report", "runner", "scheduler", "search"} <= set(
        graph
    )
    cycle = find_cycle(graph)
    assert cycle is None, "import circle in sweeps/: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("catalog", set()),  # the metric catalog: the bottom layer
        ("analysis", {"catalog"}),  # pure: the one place that ranks
        ("report", {"analysis", "catalog"}),
        ("scheduler", {"analysis", "catalog"}),
        ("search", set()),
    ],
)
def test_lower_layers_import_only_below(module, allowed):
    assert import_graph()[module] <= allowed


@pytest.mark.parametrize(
    "module, forbidden",
    [
        # the command line reads MLflow and ranks, it never runs a sweep
        ("pareto", {"runner", "cli", "trial", "scheduler", "search"}),
        ("cli", {"pareto", "runner", "report", "trial"}),
        ("tracking", {"runner", "cli", "pareto", "report", "trial"}),
    ],
)
def test_upper_layers_stay_out(module, forbidden):
    assert not import_graph()[module] & forbidden


def test_analysis_is_pure():
    _, others = imported_names(modules()["analysis"])
    import sys

    stdlib = set(sys.stdlib_module_names)
    assert {m for m in others if m not in stdlib} <= ANALYSIS_ALLOWED
    assert not others & {"mlflow", "ray", "matplotlib", "torch", "optuna"}


def test_catalog_is_standard_library_only():
    # sweeps.analysis (pure) and every trial read it: no torch, Ray, MLflow, Optuna, not even numpy
    ours, others = imported_names(modules()["catalog"])
    import sys

    assert ours == set()
    assert others <= set(sys.stdlib_module_names) | {"__future__"}
