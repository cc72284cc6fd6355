"""`docs/architecture.md`'s module map names every module of the package, and names none
that does not exist: a newcomer reads the map before the code, so a stale map misleads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dicomcast"
DOC = ROOT / "docs" / "architecture.md"


def _module_map() -> str:
    """The rows of the module map's table."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## Module map")
    end = text.index("\n## ", start + 1)
    return "\n".join(line for line in text[start:end].splitlines() if line.startswith("|"))


def _named() -> set[str]:
    """Every `x.py` or `folder/x.py` in backticks in the module map."""
    return set(re.findall(r"`([\w/]+\.py)`", _module_map()))


def _modules() -> list[Path]:
    return [
        p
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts and p.name not in ("__init__.py", "__main__.py")
    ]


def test_every_module_is_on_the_map() -> None:
    named = _named()
    missing = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if not any(str(p.relative_to(PACKAGE)).endswith(name) for name in named)
    ]
    assert missing == []


def test_the_map_names_no_module_that_does_not_exist() -> None:
    files = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")]
    ghosts = sorted(
        name for name in _named() if not any(f == name or f.endswith("/" + name) for f in files)
    )
    assert ghosts == []
