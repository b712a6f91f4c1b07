"""The import layers: pure modules load no I/O library, and no modules import each other in a circle.

Pure modules (wire formats, health, catalogs, the protocol) are what tests and tools use on their
own; pulling trio, h11 or httpx in with them costs start-up time and hides the layering.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

import combined_models

PACKAGE = "combined_models"
PACKAGE_DIR = Path(combined_models.__file__).parent
IO_LIBRARIES = ("trio", "h11", "httpx", "httpcore", "anyio")

# --- pure modules load no I/O library ------------------------------------------------------------


def dialect_modules() -> list[str]:
    """The dialects package and every module in it, found on disk so a new dialect is covered too."""
    package = f"{PACKAGE}.daemon.dialects"
    found = pkgutil.iter_modules([str(PACKAGE_DIR / "daemon" / "dialects")], prefix=f"{package}.")
    return [package, *sorted(info.name for info in found)]


PURE_MODULES = [
    *dialect_modules(),
    f"{PACKAGE}.daemon.health",
    f"{PACKAGE}.daemon.continuation",
    f"{PACKAGE}.daemon.errors",
    f"{PACKAGE}.catalog",
    f"{PACKAGE}.protocol",
    f"{PACKAGE}.chat",
    f"{PACKAGE}.capabilities",
    f"{PACKAGE}.limits",
    f"{PACKAGE}.config",
    f"{PACKAGE}.shared_facts",
    f"{PACKAGE}.metadata",
    f"{PACKAGE}.client.render",
    f"{PACKAGE}.daemon.engine",
    f"{PACKAGE}.daemon.affinity",
    f"{PACKAGE}.daemon.facade",
    f"{PACKAGE}.daemon.reload",
    f"{PACKAGE}.service",
]

# Run in a fresh interpreter: imports the module named in argv[1], then prints each I/O library of
# argv[2:] that got loaded, with the chain of modules whose import pulled it in.
PROBE = """
import importlib, sys

module, libraries = sys.argv[1], set(sys.argv[2:])
chains = {}

class Witness:
    # First on the meta path: it notes who asks for a library, finds nothing, and the import goes on.
    def find_spec(self, name, path=None, target=None):
        if name in libraries and name not in chains:
            chain, frame = [], sys._getframe()
            while frame is not None:
                if frame.f_code.co_name == "<module>" and frame.f_globals["__name__"] != "__main__":
                    chain.append(frame.f_globals["__name__"])
                frame = frame.f_back
            chains[name] = " -> ".join([*reversed(chain), name])
        return None

sys.meta_path.insert(0, Witness())
importlib.import_module(module)
for name in sorted(libraries & set(sys.modules)):
    print(chains.get(name, name))
"""


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_loads_no_io_library(module: str) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, module, *IO_LIBRARIES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    loaded = probe.stdout.strip()
    assert not loaded, f"importing {module} loads I/O libraries:\n{loaded}"


# --- no import cycles ------------------------------------------------------------------------------

# importer -> {imported module: line of the first import statement}
ImportGraph = dict[str, dict[str, int]]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ancestors(module: str) -> list[str]:
    """The packages whose `__init__` runs before `module`: "a.b.c" -> ["a", "a.b"]."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported.

    Not those in function bodies (the deliberate lazy imports, run when called) nor under
    `if TYPE_CHECKING:` (never run); class bodies and try/if blocks do run at import.
    """
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def imported_modules(
    node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]
) -> set[str]:
    """The modules of this package that `node` executes when `importer` runs it."""
    if isinstance(node, ast.Import):
        named = {alias.name for alias in node.names}
    else:
        if node.level:
            base = importer if is_package else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        submodules = {f"{source}.{alias.name}" for alias in node.names} & known
        # `from pkg import sub` only runs pkg.sub; any other name is read from pkg's own namespace.
        reads_source = len(submodules) < len(node.names)
        named = submodules | ({source} if reads_source else set())
    # Importing a.b.c runs a/__init__ and a/b/__init__ too, except those the importer already sits in
    # (they started before it did).
    inside = {*ancestors(importer), importer}
    ran = set(named)
    for module in named:
        ran.update(pkg for pkg in ancestors(module) if pkg not in inside)
    return (ran & known) - {importer}


def import_graph() -> ImportGraph:
    sources = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    known = set(sources)
    graph: ImportGraph = {}
    for importer, path in sorted(sources.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = graph.setdefault(importer, {})
        for node in import_time_imports(tree):
            for imported in imported_modules(node, importer, path.name == "__init__.py", known):
                edges.setdefault(imported, node.lineno)
    return graph


def strongly_connected(graph: ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm: every group of modules that reach each other, singletons included."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = lowlink[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.get(module, {}):
            if imported not in index:
                visit(imported)
                lowlink[module] = min(lowlink[module], lowlink[imported])
            elif imported in on_stack:
                lowlink[module] = min(lowlink[module], index[imported])
        if lowlink[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return components


def shortest_cycle(graph: ImportGraph, component: list[str]) -> str:
    """One cycle through the component's first module, each step with the line that imports."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for imported in sorted(graph[module]):
            if imported not in members:
                continue
            if imported == start:
                path = [module]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                path.reverse()
                steps = [f"{a} (line {graph[a][b]})" for a, b in zip(path, [*path[1:], start], strict=True)]
                return " -> ".join([*steps, start])
            if imported not in came_from:
                came_from[imported] = module
                queue.append(imported)
    raise AssertionError(f"no cycle through {start}")  # cannot happen in a component of two or more


def test_the_graph_sees_import_time_imports_only() -> None:
    graph = import_graph()
    sigv4 = graph[f"{PACKAGE}.daemon.dialects.sigv4"]
    assert f"{PACKAGE}.daemon.dialects.urls" in sigv4
    # The dialects package runs before any of its modules, so they do not depend on it.
    assert f"{PACKAGE}.daemon.dialects" not in sigv4
    # `cmctl demo` imports the demo inside the command's function: lazily, so no edge.
    assert f"{PACKAGE}.demo" not in graph[f"{PACKAGE}.client.cli"]
    assert f"{PACKAGE}.client.render" in graph[f"{PACKAGE}.demo"]
    assert f"{PACKAGE}.client" in graph[f"{PACKAGE}.demo"]  # its `__init__` runs first


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [shortest_cycle(graph, c) for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, "modules that import each other in a circle:\n" + "\n".join(cycles)
