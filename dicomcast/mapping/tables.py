"""Lookup tables of a mapping folder: `tables/NAME.csv`, read once at start-up."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from dicomcast.errors import MappingFileError


def load_tables(folder: Path) -> dict[str, dict[str, Any]]:
    """`tables/NAME.csv`: first column the key; one more column gives a value, several a row."""
    tables: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return tables
    for path in sorted(folder.glob("*.csv")):
        try:
            with path.open(encoding="utf-8", newline="") as handle:
                rows = list(csv.reader(line for line in handle if not line.startswith("#")))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise MappingFileError(f"{path.name}: cannot read table: {exc}") from None
        if not rows or len(rows[0]) < 2:
            raise MappingFileError(f"{path.name}:1: a table needs a header with >= 2 columns")
        header = [h.strip() for h in rows[0]]
        table: dict[str, Any] = {}
        for number, row in enumerate(rows[1:], start=2):
            if not row or not row[0].strip():
                continue
            if len(row) != len(header):
                raise MappingFileError(
                    f"{path.name}:{number}: {len(row)} columns, the header has {len(header)}"
                )
            key = row[0].strip()
            cells = {h: c.strip() for h, c in zip(header[1:], row[1:], strict=True) if c.strip()}
            table[key] = next(iter(cells.values()), None) if len(header) == 2 else cells
        tables[path.stem] = table
    return tables
