"""Lookup tables of a mapping folder: `tables/NAME.csv`, read once at start-up."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

from dicomcast.errors import MappingFileError

STANDARD = Path(__file__).resolve().parent / "standard"


@functools.cache
def standard_tables() -> dict[str, dict[str, Any]]:
    """Tables every mapping folder has, from DICOM PS3.16 (`standard/*.csv`, written by
    scripts/gen-standard-tables): `dcm` (DCM code -> meaning) and `srt_to_sct` (retired
    SNOMED RT code -> SNOMED CT identifier). A folder's CSV of the same name adds rows."""
    return {path.stem: read_table(path) for path in sorted(STANDARD.glob("*.csv"))}


def load_tables(folder: Path) -> dict[str, dict[str, Any]]:
    """`tables/NAME.csv`, on top of the standard tables."""
    tables: dict[str, dict[str, Any]] = {k: dict(v) for k, v in standard_tables().items()}
    if not folder.is_dir():
        return tables
    for path in sorted(folder.glob("*.csv")):
        tables[path.stem] = {**tables.get(path.stem, {}), **read_table(path)}
    return tables


def read_table(path: Path) -> dict[str, Any]:
    """One CSV table: first column the key; one more column gives a value, several a row."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(line for line in handle if not line.startswith("#")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MappingFileError(f"{path.name}: cannot read table: {exc}") from None
    if not rows or len(rows[0]) < 2:
        raise MappingFileError(f"{path.name}:1: a table needs a header with >= 2 columns")
    header = [h.strip() for h in rows[0]]
    if len(header) == 2 and all(len(row) == 2 for row in rows):  # code -> text: most rows
        return {k.strip(): v.strip() or None for k, v in rows[1:] if k.strip()}
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
    return table
