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


def _runtime_imports(tree: ast.Module) -> list[str]:
    """`dicomcast.X` names imported outside `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name.startswith("dicomcast.")]


def test_every_top_level_module_has_a_layer() -> None:
    assert {_top(p) for p in _modules()} <= set(LAYERS)


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for path in _modules():
        own = _top(path)
        for name in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            other = name.split(".")[1]
            if other != own and LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert wrong == []


def test_sources_mapping_and_fhir_know_nothing_of_state_or_the_worker() -> None:
    for package in ("sources", "mapping", "fhir"):
        for path in (PACKAGE / package).rglob("*.py"):
            for name in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
                assert name.split(".")[1] not in {"state", "sync", "worker", "app"}, (path, name)


def test_no_module_is_much_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
