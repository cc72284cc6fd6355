"""Lookup tables of a mapping folder: `tables/NAME.csv`, read once at start-up."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any, cast

from pydicom.sr import _snomed_dict as snomed
from pydicom.sr._concepts_dict import concepts

from dicomcast.errors import MappingFileError


@functools.cache
def standard_tables() -> dict[str, dict[str, Any]]:
    """Tables every mapping folder has, from DICOM PS3.16 as pydicom ships it: `dcm` (DCM
    code -> meaning) and `srt_to_sct` (retired SNOMED RT code -> SNOMED CT identifier).
    A CSV of the same name in a folder adds rows to them (or replaces rows)."""
    dcm: dict[str, Any] = {}
    by_keyword = cast(dict[str, dict[str, tuple[str, list[int]]]], concepts.get("DCM", {}))
    for codes in by_keyword.values():
        for code, (meaning, _cids) in codes.items():
            dcm[str(code)] = str(meaning)
    srt = {str(k): str(v) for k, v in snomed.mapping.get("SRT", {}).items()}
    return {"dcm": dcm, "srt_to_sct": srt}


def load_tables(folder: Path) -> dict[str, dict[str, Any]]:
    """`tables/NAME.csv`: first column the key; one more column gives a value, several a row."""
    tables: dict[str, dict[str, Any]] = {k: dict(v) for k, v in standard_tables().items()}
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
        tables[path.stem] = {**tables.get(path.stem, {}), **table}
    return tables
