"""No import cycle between gptforge's packages: imports point down (STYLE.md section 1).

Every ``import`` / ``from ... import`` in ``src/gptforge`` is read with ``ast`` (those inside
functions too: a lazy import is still a dependency, and the model <-> finetune and
model <-> quantize cycles of the old loader were lazy ones). A package is the first name
under ``gptforge`` (``model``, ``train``, ``io`` ...); the test fails naming each cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gptforge"


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0] if len(rel.parts) > 1 else rel.parts[0]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = path.relative_to(SRC).with_suffix("").parts
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = list(here[: len(here) - node.level])
                names = [".".join(["gptforge", *base, *(node.module.split(".") if node.module else [])])]
            else:
                mod = node.module or ""
                # `from gptforge import quantize` names a package through the alias
                names = [f"{mod}.{a.name}" for a in node.names] if mod == "gptforge" else [mod]
        for name in names:
            parts = name.split(".")
            if parts[0] == "gptforge" and len(parts) > 1:
                out.add(parts[1])
    return out


def package_graph() -> dict[str, set[str]]:
    """package -> the packages it imports (itself and the top-level ``gptforge`` excluded)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        pkg = _package_of(path)
        if pkg in ("__init__", "__main__"):
            continue  # the public API re-exports everything; nothing imports it back
        deps = {d for d in _imported_packages(path) if d != pkg}
        graph.setdefault(pkg, set()).update(deps)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _edges_in(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    return [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]


def test_finder_sees_a_cycle() -> None:
    """The checker itself: a planted cycle is found, a chain is not."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_model_imports_no_workflow_package() -> None:
    graph = package_graph()
    assert not graph["model"] & {"finetune", "quantize", "train", "cli", "serve"}, graph["model"]


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between gptforge packages: " + " | ".join(
        ", ".join(_edges_in(graph, c)) for c in cycles
    )
