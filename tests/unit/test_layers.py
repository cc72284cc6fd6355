"""The one-way data flow, checked on the source: a module imports only from layers below
its own (or from its own package), never upwards. Imports made only for type checking
are not counted: they create no coupling at run time."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dicomcast"

# Lower numbers are lower layers. A module may import a module of a lower layer, or one
# of its own package (`dicomcast.sync.feed` -> `dicomcast.sync.pauses`).
LAYERS = {
    "errors": 0,
    "model": 0,
    "urls": 0,
    "config": 1,
    "studyview": 1,
    "http": 2,
    "auth": 2,
    "sources": 3,
    "mapping": 3,
    "state": 3,
    "ops": 3,
    "fhir": 4,
    "sync": 5,
    "parts": 6,
    "runner": 6,
    "worker": 7,
    "app": 8,
    "cli": 9,
    "sandbox": 9,
    "__main__": 10,
    "__init__": 10,
}
MAX_LINES = 400


def _modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts]


def _top(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _name(path: Path) -> str:
    """`dicomcast.sync.feed` for `dicomcast/sync/feed.py` (a package: its folder's name)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The module an `ImportFrom` names, relative ones (`from .x import y`) resolved."""
    if node.level == 0:
        return node.module or ""
    package = _name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def _typing_only(tree: ast.Module) -> set[int]:
    """Nodes inside the body of `if TYPE_CHECKING:` (not `if not TYPE_CHECKING:`, and not
    its `else`): imports there create no coupling at run time."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for statement in node.body:
                skip.update(id(child) for child in ast.walk(statement))
    return skip


def _imports(path: Path, *, typing: bool = False) -> list[str]:
    """`dicomcast.X` names a module imports (at run time; with `typing`, for type
    checking too), each `from m import n` counted as `m` and as `m.n`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if typing else _typing_only(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            module = _absolute(path, node)
            found += [module, *(f"{module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name.startswith("dicomcast.")]


def _runtime_imports(tree_path: Path) -> list[str]:
    return _imports(tree_path)


def test_every_top_level_module_has_a_layer() -> None:
    assert {_top(p) for p in _modules()} <= set(LAYERS)


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for path in _modules():
        own = _top(path)
        for name in _runtime_imports(path):
            other = name.split(".")[1]
            if other not in LAYERS:
                continue  # a constant of the package itself (`__version__`), not a module
            if other != own and LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert wrong == []


def test_sources_mapping_and_fhir_know_nothing_of_state_or_the_worker() -> None:
    for package in ("sources", "mapping", "fhir"):
        for path in (PACKAGE / package).rglob("*.py"):
            for name in _runtime_imports(path):
                assert name.split(".")[1] not in {"state", "sync", "worker", "app"}, (path, name)


def test_no_module_is_much_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_package_imports_nothing_by_name_at_run_time() -> None:
    """`importlib` or `__import__` would hide an import from the checks above."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "importlib" or n.startswith("importlib.") for n in names) or (
                isinstance(node, ast.Name) and node.id == "__import__"
            ):
                found.append(str(path.relative_to(PACKAGE)))
    assert found == []


def test_no_two_modules_import_each_other_even_for_typing() -> None:
    """No circle in the import graph, type-only imports included: a circle means two
    modules that cannot be read, tested or replaced apart."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(path, typing=True):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    circles = []
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            circles.append(" -> ".join([*trail[trail.index(name) :], name]))
            return
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert circles == []
