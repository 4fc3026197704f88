"""Package layout: no import cycles (function-level imports included), and the layering
core <- hub/registry <- CLI: the hub and the converters never reach the tokenizer, the core never
reaches train/ or cli/. Read from the source with ``ast``, so imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import imagetok

ROOT = Path(imagetok.__file__).parent


def module_names() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> imagetok modules it imports anywhere in its source (top level, functions, TYPE_CHECKING)."""
    mods = module_names()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in mods else base_name for a in node.names]
            for t in targets:
                while t and t not in mods:  # "imagetok.models.quantizer.nearest_code" -> its module
                    t = t.rpartition(".")[0]
                if t.startswith("imagetok") and t != m:
                    graph[m].add(t)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for t in graph[stack.pop()]:
            if t not in seen:
                seen.add(t)
                stack.append(t)
    return seen


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_imports():
    g = import_graph()
    assert "imagetok.convert" in g["imagetok.hub"]  # imported inside _convert_into only
    assert "imagetok.models" in g["imagetok.serialization"]  # imported inside load_folder only


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert cycles == [], f"import cycles inside imagetok (function-level imports count): {cycles}"


def test_layering():
    g = import_graph()
    for transport in ("imagetok.hub", "imagetok.registry", "imagetok.serialization", "imagetok.convert"):
        assert "imagetok.tokenizer" not in reachable(g, transport), f"{transport} must not import the tokenizer"
    core = reachable(g, "imagetok.tokenizer") | {"imagetok.tokenizer"}
    assert not {m for m in core if m.startswith(("imagetok.train", "imagetok.cli"))}
