"""The import rules of STYLE.md and DESIGN.md, read from the source with `ast` (nothing is imported): no
package's modules import each other in a circle, `domain` imports nothing of ours but itself, and nothing
imports `service`, the composition root. Every import counts — `import x`, `from x import y`, relative
ones, and those inside functions, where a circle is most easily hidden."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED_FOR_CIRCLES = ("domain", "schemas", "handlers", "storage", "fhir_read", "integrations")
COMPOSITION_ROOT = "service"

Graph = Mapping[str, frozenset[str]]


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_packages(root: Path) -> list[str]:
    """Top-level packages of the repository (the application's, and bench and tests too)."""
    return sorted(p.parent.name for p in root.glob("*/__init__.py") if not p.parent.name.startswith("."))


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, frozenset[str]]:
    """Each module of `packages` → the modules of `packages` it imports anywhere in its source."""
    paths = {module_name(root, p): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    return {name: frozenset(_imported(name, path, set(paths))) for name, path in paths.items()}


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    names: list[str] = []
    # ast.walk reaches every node: function bodies, `if TYPE_CHECKING:` blocks, try/except fallbacks.
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute_base(node, module, is_package=path.name == "__init__.py")
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, the module mod.
            names += (
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            )
    found = {_owning_module(name, known) for name in names}
    return {name for name in found if name is not None and name != module}


def _absolute_base(node: ast.ImportFrom, module: str, *, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - node.level + 1]
    return ".".join([*anchor, node.module] if node.module else anchor)


def _owning_module(name: str, known: set[str]) -> str | None:
    """The longest known module `name` falls in (`a.b.c` is in `a.b` when c is a name, not a module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def circles(graph: Graph) -> list[list[str]]:
    """Groups of modules that each reach every other of the group through imports, sorted."""
    reach = {module: _reachable(graph, module) for module in graph}
    found: list[list[str]] = []
    placed: set[str] = set()
    for module in sorted(graph):
        if module in reach[module] and module not in placed:
            group = sorted(other for other in reach[module] if module in reach[other])
            placed.update(group)
            found.append(group)
    return found


def _reachable(graph: Graph, start: str) -> set[str]:
    """Modules reached from `start` by one import or more (`start` itself only through a circle)."""
    seen: set[str] = set()
    pending = list(graph.get(start, ()))
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(graph.get(module, ()))
    return seen


def _within(graph: Graph, package: str) -> dict[str, frozenset[str]]:
    inside = {m for m in graph if m.split(".")[0] == package}
    return {m: frozenset(t for t in graph[m] if t in inside) for m in inside}


def _edges_into(graph: Graph, importers: Iterable[str], targets: Iterable[str]) -> list[str]:
    wanted, sources = set(targets), set(importers)
    return sorted(
        f"{m} → {t}"
        for m, imported in graph.items()
        if m.split(".")[0] in sources
        for t in imported
        if t.split(".")[0] in wanted
    )


@pytest.fixture(scope="module")
def graph() -> dict[str, frozenset[str]]:
    return import_graph(ROOT, our_packages(ROOT))


@pytest.mark.parametrize("package", CHECKED_FOR_CIRCLES)
def test_no_modules_of_a_package_import_each_other_in_a_circle(graph: Graph, package: str) -> None:
    # given every import of the package's modules, when we follow those that stay inside the package
    found = circles(_within(graph, package))
    # then none of them leads back to where it started
    assert found == [], f"{package} has import circles: {found}"


def test_domain_imports_nothing_of_ours_but_domain(graph: Graph) -> None:
    others = [p for p in our_packages(ROOT) if p != "domain"]
    imports = _edges_into(graph, ["domain"], others)
    assert imports == [], f"domain must stand alone; it imports {imports}"


def test_nothing_imports_the_composition_root(graph: Graph) -> None:
    # bench/ and tests/ start the service, as its operators do; the application's packages never reach up.
    imports = _edges_into(graph, CHECKED_FOR_CIRCLES, [COMPOSITION_ROOT])
    assert imports == [], f"only service wires service; these import it: {imports}"


def test_a_circle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    # given a package whose routes import history at the top and history imports routes inside a function,
    # the way a circle is usually dodged
    package = tmp_path / "reads"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "routes.py").write_text("from reads.history import add_history\nVERIFIER = 1\n")
    (package / "history.py").write_text("def add_history():\n    from . import routes\n    return routes\n")
    (package / "cursor.py").write_text("from reads.routes import VERIFIER\n")
    # when its graph is read
    graph = import_graph(tmp_path, ["reads"])
    # then the two are one circle, and the module that only imports a name from routes is outside it
    assert graph["reads.cursor"] == {"reads.routes"}
    assert circles(graph) == [["reads.history", "reads.routes"]]
