"""`DICOMCAST_FHIR_WRITES`: how writes go to the FHIR server, when an operator says so
instead of the server's CapabilityStatement (see `dicomcast.fhir.capabilities`)."""

from __future__ import annotations

WRITE_BUNDLES = ("transaction", "batch", "single")
WRITE_FEATURES = ("conditional-create", "if-match")


def split_writes(value: str) -> tuple[str, frozenset[str]] | None:
    """`DICOMCAST_FHIR_WRITES` as (bundle kind, features); None for `auto`."""
    words = [w.strip().lower() for w in value.split(",") if w.strip()]
    if words in ([], ["auto"]):
        return None
    kind, *features = words
    if kind not in WRITE_BUNDLES or any(f not in WRITE_FEATURES for f in features):
        raise ValueError(
            f"{value!r}: give 'auto', or one of {', '.join(WRITE_BUNDLES)} followed by any "
            f"of {', '.join(WRITE_FEATURES)} (e.g. 'batch,if-match')"
        )
    return kind, frozenset(features)
