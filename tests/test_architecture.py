"""The architecture, checked from the code: imports follow the flow, and no module imports itself in a circle.

The layers are the contracts in ``pyproject.toml`` (``[tool.importlinter]``), read from there so they have one
source; grimp builds the import graph of our packages (function-local imports included). Each check is also shown
to fail on a graph with one import against the flow planted in it, so a check that cannot fail would be noticed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _linter_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]


def _layers(entries: list[str]) -> list[grimp.Layer]:
    """import-linter's layer strings ("a | b": independent siblings) as grimp layers."""
    return [grimp.Layer(*[name.strip() for name in entry.split("|")], independent=True) for entry in entries]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*_linter_config()["root_packages"])


def illegal_imports(graph: grimp.ImportGraph) -> list[str]:
    """Every import that breaks a layers contract, as 'importer -> imported (contract)'."""
    found = []
    for contract in _linter_config()["contracts"]:
        containers = set(contract.get("containers", [])) or None
        for dependency in graph.find_illegal_dependencies_for_layers(_layers(contract["layers"]), containers):
            for route in dependency.routes:
                found.append(f"{route.heads} -> {route.tails} ({contract['name']})")
    return sorted(found)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def test_no_import_runs_against_the_flow(graph: grimp.ImportGraph) -> None:
    assert illegal_imports(graph) == []


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert import_cycles(graph) == []


def test_the_checks_catch_a_planted_back_arrow_and_cycle(graph: grimp.ImportGraph) -> None:
    graph.add_import(importer="fingerprint.types", imported="worker.dispatch")  # the library importing the worker
    graph.add_import(importer="fingerprint.imaging.slicing", imported="fingerprint.identity.store")  # a stage back
    try:
        illegal = illegal_imports(graph)
        assert any("fingerprint.types" in line and "worker.dispatch" in line for line in illegal)
        assert any("fingerprint.imaging.slicing" in line and "fingerprint.identity.store" in line for line in illegal)
        # worker.dispatch reaches fingerprint.types (through the archive), so the planted arrow closes a circle
        assert any({"fingerprint.types", "worker.dispatch"} <= set(group) for group in import_cycles(graph))
    finally:
        graph.remove_import(importer="fingerprint.types", imported="worker.dispatch")
        graph.remove_import(importer="fingerprint.imaging.slicing", imported="fingerprint.identity.store")


def test_the_orthanc_link_is_not_named_orthanc() -> None:
    """Our Orthanc integration must not be importable as ``orthanc``: that name is the module Orthanc's Python plugin
    provides to the plugin script (checked inside a real Orthanc in test_orthanc)."""
    import dbp_orthanc

    assert dbp_orthanc.__name__ == "dbp_orthanc"
    assert "orthanc" not in _linter_config()["root_packages"]
    assert not (PYPROJECT.parent / "orthanc" / "__init__.py").exists()
