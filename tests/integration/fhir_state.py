"""Read a FHIR server's whole state in a form two servers can be compared in: server ids,
versions and timestamps dropped, references replaced by the identifier they point at."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from dicomcast.sandbox.servers import FhirServer


def all_resources(fhir: FhirServer, kind: str) -> list[dict[str, Any]]:
    with fhir.client() as http:
        bundle = http.get(f"{kind}?_count=1000").json()
    return [e["resource"] for e in bundle.get("entry", [])]


def first_identifier(resource: dict[str, Any]) -> str:
    ident = resource["identifier"][0]
    return f"{ident['system']}|{ident['value']}"


def comparable_state(fhir: FhirServer) -> dict[str, list[str]]:
    """Every Patient, ImagingStudy, Endpoint and Observation, normalized and sorted."""
    by_ref: dict[str, str] = {}
    resources: dict[str, list[dict[str, Any]]] = {}
    for kind in ("Endpoint", "Patient", "ImagingStudy", "Observation"):
        resources[kind] = all_resources(fhir, kind)
        for resource in resources[kind]:
            by_ref[f"{kind}/{resource['id']}"] = first_identifier(resource)

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (by_ref.get(v, v) if k == "reference" else scrub(v))
                for k, v in value.items()
                if k not in ("id", "meta", "text")
            }
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return {
        kind: sorted(json.dumps(scrub(r), sort_keys=True) for r in found)
        for kind, found in resources.items()
    }


def duplicates(fhir: FhirServer) -> dict[str, int]:
    """Identifiers held by more than one resource (must always be empty)."""
    found: dict[str, int] = {}
    for kind in ("Endpoint", "Patient", "ImagingStudy", "Observation"):
        counts = Counter(first_identifier(r) for r in all_resources(fhir, kind))
        found.update({f"{kind} {k}": n for k, n in counts.items() if n > 1})
    return found


def versions(fhir: FhirServer) -> dict[str, str]:
    """`Type/id` -> versionId of what dicomcast writes: equal before and after = no write."""
    return {
        f"{kind}/{r['id']}": r["meta"]["versionId"]
        for kind in ("Endpoint", "Patient", "ImagingStudy", "Observation")
        for r in all_resources(fhir, kind)
    }
