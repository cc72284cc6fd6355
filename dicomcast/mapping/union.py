"""One ImagingStudy from the parts several DICOM sources hold of the same study.

Each source's part is what the mappings made of its copy, as if it were the only source.
The union is a pure function of the parts, so every source syncing the study writes the
same resource, whatever order they sync in:
- study-level elements come from the part of the highest-priority source (the first in the
  configuration) that holds the study; `subject` from the source syncing now;
- series are the union by SeriesInstanceUID, instances the union by SOPInstanceUID; a
  series held by several sources takes its elements from the highest-priority one;
- with more than one Endpoint, each series lists the Endpoints it can be retrieved from,
  and the study lists them all; counts and modalities are recomputed from the union.

Removing a source's part and taking the union of the rest is how a deletion in one source
removes only what that source contributed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Part:
    """One source's mapped ImagingStudy and the Endpoint reference it was mapped with."""

    study: dict[str, Any]
    endpoint: str | None


def _uid(item: Any) -> str | None:
    return item.get("uid") if isinstance(item, dict) else None


def _ordered_union(lists: Sequence[Sequence[Any]], key: Any) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for items in lists:
        for item in items:
            k = key(item)
            if k not in seen:
                seen.add(k)
                out.append(item)
    return out


def _coding_key(coding: Any) -> Any:
    if isinstance(coding, dict):
        return coding.get("system"), coding.get("code")
    return repr(coding)


def union(parts: Sequence[Part], subject: Any = None) -> dict[str, Any]:
    """The ImagingStudy holding every part; `parts` in priority order, at least one."""
    if not parts:
        raise ValueError("a union needs at least one part")
    study = dict(parts[0].study)
    if subject is not None:
        study["subject"] = subject
    if len(parts) == 1:
        return study
    endpoints = _ordered_union([[p.endpoint] for p in parts if p.endpoint], key=str)
    series: dict[str, dict[str, Any]] = {}
    instances: dict[str, dict[str, dict[str, Any]]] = {}
    holders: dict[str, list[str]] = {}
    for part in parts:
        for item in part.study.get("series") or []:
            uid = _uid(item)
            if uid is None:
                continue
            if uid not in series:
                series[uid] = dict(item)
                instances[uid] = {}
                holders[uid] = []
            for instance in item.get("instance") or []:
                instances[uid].setdefault(_uid(instance) or repr(instance), instance)
            if part.endpoint and part.endpoint not in holders[uid]:
                holders[uid].append(part.endpoint)
    merged = []
    for uid, item in series.items():
        if instances[uid]:
            item["instance"] = list(instances[uid].values())
            if "numberOfInstances" in item:
                item["numberOfInstances"] = len(item["instance"])
        if len(endpoints) > 1 and "endpoint" in study and holders[uid]:
            item["endpoint"] = [{"reference": ref} for ref in holders[uid]]
        merged.append(item)
    study["series"] = merged
    if "numberOfSeries" in study:
        study["numberOfSeries"] = len(merged)
    if "numberOfInstances" in study:
        study["numberOfInstances"] = sum(len(s.get("instance") or []) for s in merged)
    if "endpoint" in study:
        study["endpoint"] = [{"reference": ref} for ref in endpoints]
    modalities = [p.study.get("modality") or [] for p in parts]
    if any(modalities):
        study["modality"] = _ordered_union(modalities, key=_coding_key)
    return study
