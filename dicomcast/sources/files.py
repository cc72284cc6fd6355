"""Read studies from local DICOM files or DICOM JSON, for `dicomcast map` and tests.

Unreadable inputs are reported, never raised: one bad file must not hide the good ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomcast.studyview import DicomJson, StudyView, build_study_views


def dataset_to_json(ds: Dataset) -> tuple[dict[str, Any], list[str]]:
    """A pydicom Dataset as DICOM JSON, bulk data left out; invalid elements are dropped."""
    ds.pop(0x7FE00010, None)  # pixel data: never needed for metadata

    def no_bulk(element: Any) -> str:
        return ""

    try:
        return ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=no_bulk), []
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad values
        data = ds.to_json_dict(
            bulk_data_threshold=4096, bulk_data_element_handler=no_bulk, suppress_invalid_tags=True
        )
        return data, [f"invalid elements dropped while reading: {exc}"]


def _expand(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def read_instances(paths: Iterable[Path]) -> tuple[list[DicomJson], list[str]]:
    """DICOM JSON of every instance found; problems as `path: reason` lines."""
    found: list[DicomJson] = []
    problems: list[str] = []
    for path in _expand(paths):
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(f"{path}: not readable DICOM JSON: {exc}")
                continue
            items = data if isinstance(data, list) else [data]
            good = [item for item in items if isinstance(item, dict)]
            if len(good) != len(items):
                problems.append(f"{path}: {len(items) - len(good)} entries are not JSON objects")
            found.extend(good)
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError) as exc:
            problems.append(f"{path}: not a DICOM file: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - malformed files raise arbitrary errors
            problems.append(f"{path}: unreadable DICOM: {type(exc).__name__}: {exc}")
            continue
        try:
            data, notes = dataset_to_json(ds)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path}: cannot convert to DICOM JSON: {type(exc).__name__}: {exc}")
            continue
        problems.extend(f"{path}: {note}" for note in notes)
        found.append(data)
    return found, problems


def read_studies(paths: Iterable[Path]) -> tuple[list[StudyView], list[str]]:
    instances, problems = read_instances(paths)
    studies, orphans = build_study_views(instances)
    return studies, problems + orphans
