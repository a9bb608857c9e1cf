"""The import graph follows the data's path: no cycles, no arrow from a lower layer to a higher one.

Read from the source with `ast` (imports inside functions count too), so a lazy import
cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "ragtune"
MAX_MODULE_LINES = 450

# Lower first. A module may import its own layer and the layers below it, never above.
LAYERS: list[set[str]] = [
    {"ragtune", "ragtune.types", "ragtune.config"},
    {"ragtune.embed", "ragtune.store", "ragtune.quant", "ragtune.models"},
    {"ragtune.ingest", "ragtune.retrieve"},
    {"ragtune.generate"},
    {"ragtune.pipeline", "ragtune.system"},
    {"ragtune.eval", "ragtune.finetune", "ragtune.tune"},
    {"ragtune.api"},
    {"ragtune.cli"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "ragtune" or m.startswith("ragtune.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # "from ragtune.x import y" names a module when y is one, else the package ragtune.x
        graph[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return graph


def _layer(module: str) -> int:
    for depth, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer if top != "ragtune"):
            return depth
    assert module == "ragtune", f"{module} is in no layer: add it to LAYERS"
    return 0


def test_no_upward_imports():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_store_imports_no_ingestion_generation_or_service_code():
    graph = _graph()
    offending = {
        module: sorted(t for t in targets if t.startswith(("ragtune.ingest", "ragtune.generate", "ragtune.api")))
        for module, targets in graph.items()
        if module.startswith("ragtune.store")
    }
    assert not any(offending.values()), offending


def test_types_import_nothing_of_ragtune():
    assert _graph()["ragtune.types"] == set()


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_modules_stay_small():
    long = {
        _module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long
