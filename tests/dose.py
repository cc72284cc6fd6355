"""What dose tests read out of an Observation: its components by code."""

from __future__ import annotations

from typing import Any

UCUM = "http://unitsofmeasure.org"


def components(observation: dict[str, Any]) -> dict[str, Any]:
    """component code -> its value (Quantity, CodeableConcept or integer)."""
    return {
        c["code"]["coding"][0]["code"]: c.get("valueQuantity")
        or c.get("valueCodeableConcept")
        or c.get("valueInteger")
        for c in observation["component"]
    }


def quantity(value: float, unit: str) -> dict[str, Any]:
    """A Quantity as dicomcast writes it: the UCUM code as unit and code."""
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}
