"""The layout of ``ragtune.quant``: no import cycle, no private names shared, the C source shipped.

Imports are read from the source with ``ast``, function-level (lazy) ones included: a lazy
import that closes a cycle still ties the two modules together.
"""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

import ragtune.quant
from ragtune.quant.kernels import native

PACKAGE = Path(ragtune.quant.__file__).parent
ROOT = PACKAGE.parent.parent  # the directory that holds ragtune/


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(module: str) -> list[tuple[str, str]]:
    """``(imported module, imported name)`` for every import statement in ``module``; the
    name is empty for ``import x`` and for ``from package import submodule``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, "") if submodule in MODULES else (base, alias.name))
    return found


GRAPH = {m: sorted({target for target, _ in _imports(m) if target in MODULES and target != m}) for m in MODULES}


def _cycle() -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in GRAPH[module]:
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(MODULES):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_import_graph_is_read_with_lazy_imports() -> None:
    # guards the other tests: dispatch imports the Triton kernel only inside a function
    assert "ragtune.quant.kernels.nf4_triton" in GRAPH["ragtune.quant.dispatch"]
    assert GRAPH["ragtune.quant.nf4"] == []  # the format imports no other quant module


def test_no_quant_module_imports_one_that_imports_it_back() -> None:
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle or [])


def test_kernels_import_the_format_and_never_the_reverse() -> None:
    kernels = [m for m in MODULES if m.startswith("ragtune.quant.kernels.")]
    assert kernels
    for module in kernels:
        assert set(GRAPH[module]) <= {"ragtune.quant.nf4"}, module


def test_no_private_name_is_imported_from_another_module() -> None:
    private = [
        f"{module} imports {name} from {source}"
        for module in MODULES
        for source, name in _imports(module)
        if source.startswith("ragtune") and name.startswith("_")
    ]
    assert private == []


def test_the_c_source_is_package_data_next_to_its_loader() -> None:
    source = resources.files("ragtune.quant.kernels").joinpath(native.SOURCE)
    assert source.is_file()
    assert Path(native.__file__).with_name(native.SOURCE).is_file()
    assert "void nf4_decode(" in source.read_text()
