"""Transaction entries and the merges behind them: the vocabulary of every FHIR write.

Creates are conditional (`ifNoneExist` on the match key) and updates carry `If-Match`, so
two writers can never make two resources or lose each other's update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dicomcast.mapping.mapper import search_token

SERVER_OWNED = ("id", "meta")


def comparable(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A resource without what the server owns: equal ones need no write."""
    return {k: v for k, v in resource.items() if k not in SERVER_OWNED}


def replace_refs(value: Any, old: str, new: str) -> Any:
    """`value` with every Reference to `old` pointing at `new` instead."""
    if isinstance(value, dict):
        if value.get("reference") == old:
            return {**value, "reference": new}
        return {k: replace_refs(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_refs(v, old, new) for v in value]
    return value


def references(value: Any) -> set[str]:
    """Every Reference target in `value` (to find which entries wait for which)."""
    found: set[str] = set()
    if isinstance(value, dict):
        target = value.get("reference")
        if isinstance(target, str):
            found.add(target)
        for item in value.values():
            if isinstance(item, (dict, list)):
                found |= references(item)
    elif isinstance(value, list):
        for item in value:
            found |= references(item)
    return found


def merge_owned(
    current: dict[str, Any], desired: dict[str, Any], owned: frozenset[str]
) -> dict[str, Any]:
    """Owned elements come from DICOM (absent ones removed); others stay as the server has them."""
    merged = {k: v for k, v in current.items() if k not in owned}
    merged.update({k: v for k, v in desired.items() if k != "resourceType"})
    merged["resourceType"] = desired["resourceType"]
    return merged


def create_entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    """A conditional create: the server makes the resource only if its match key is unused."""
    entry: dict[str, Any] = {"fullUrl": full_url} if full_url else {}
    entry["resource"] = resource
    entry["request"] = {
        "method": "POST",
        "url": resource["resourceType"],
        "ifNoneExist": f"identifier={search_token(resource)}",
    }
    return entry


def update_entry(merged: dict[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """An update of `current` to `merged`, conditional on the version read (If-Match)."""
    resource_type = current["resourceType"]
    resource = {**merged, "id": current["id"]}
    resource.pop("meta", None)
    request = {"method": "PUT", "url": f"{resource_type}/{current['id']}"}
    version = current.get("meta", {}).get("versionId")
    if version:
        request["ifMatch"] = f'W/"{version}"'
    return {"resource": resource, "request": request}


def delete_entry(resource_type: str, resource_id: str) -> dict[str, Any]:
    return {"request": {"method": "DELETE", "url": f"{resource_type}/{resource_id}"}}


def retired(current: Mapping[str, Any], policy: str) -> dict[str, Any] | None:
    """The entry that retires a resource whose DICOM object is gone: a DELETE (`delete`),
    else an update to `entered-in-error`; None when it is marked so already."""
    if policy == "delete":
        return delete_entry(str(current["resourceType"]), str(current["id"]))
    if current.get("status") == "entered-in-error":
        return None
    return update_entry({**current, "status": "entered-in-error"}, current)


def created_id(entry: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(id, created) from a transaction-response entry's location and status."""
    response = entry.get("response", {})
    location = str(response.get("location") or "")
    parts = location.split("/_history")[0].rstrip("/").split("/")
    resource_id = parts[-1] if len(parts) >= 2 else None
    if not resource_id and isinstance(entry.get("resource"), dict):
        resource_id = entry["resource"].get("id")
    return resource_id, str(response.get("status", "")).startswith("201")


def proven(entry: Mapping[str, Any]) -> bool:
    """The server said what became of this entry (a status); an empty answer proves nothing."""
    response = entry.get("response")
    return isinstance(response, Mapping) and str(response.get("status", ""))[:3].isdigit()
