"""The package layout: no import circle, and every import points down the layers
(``stdiff/`` entry points > ``flows/`` > ``pipelines/jobs`` > ``pipelines/engine`` >
``pipelines/tasks`` > ``pipelines/metrics`` > ``diffusion/``, ``datasets/``). Imports inside
functions count; imports under ``if TYPE_CHECKING:`` (annotations only) do not."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("diffusion", "datasets", "pipelines", "flows", "stdiff")
LAYERS = (  # lowest first; a module may import its own layer or a lower one
    ("stdiff.diffusion", "stdiff.datasets"),
    ("stdiff.pipelines.metrics",),
    ("stdiff.pipelines.tasks",),
    ("stdiff.pipelines.engine",),
    ("stdiff.pipelines.jobs",),
    ("stdiff.flows",),
    ("stdiff",),
)


def _modules() -> dict[str, Path]:
    mods = {}
    for top in PACKAGES:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts if top == "stdiff" else ("stdiff", *parts))
            mods[name.removesuffix(".__init__")] = path
    return mods


def _runtime_imports(tree: ast.Module) -> set[str]:
    skip = set()
    for node in ast.walk(tree):  # annotation-only imports
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stdiff"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("stdiff")}
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {
        m: {d for d in _runtime_imports(ast.parse(p.read_text())) if d in mods and d != m}
        for m, p in mods.items()
    }


def _layer(module: str) -> int:
    best = (-1, len(LAYERS) - 1)
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best[0]:
                best = (len(p), i)
    return best[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    graph = _graph()
    assert len(graph) > 80  # the walk found the packages
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_every_import_points_down() -> None:
    up = [
        f"{m} -> {d}"
        for m, deps in _graph().items()
        for d in deps
        if _layer(d) > _layer(m) and not d.startswith(m + ".")  # a package's own __init__
    ]
    assert up == []
    assert _layer("stdiff.pipelines.tasks.images") < _layer("stdiff.pipelines.engine.runner")
    assert _layer("stdiff.cli") > _layer("stdiff.flows.jobs")
