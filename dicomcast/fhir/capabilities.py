"""How to write into one FHIR server, from what its CapabilityStatement (`/metadata`) says.

Servers differ: some run no transactions (only batch, or only single requests), some have
no conditional create or no version-aware update (`If-Match`). The same no-duplicate
guarantee holds in every mode: every write holds our own lock on the study and on its
Patient's identifier (across workers on PostgreSQL), so without conditional create a
resource is searched for and created under it, and without `If-Match` an update is made
under it. What the lock cannot cover is another system (an EHR) updating the same Patient
meanwhile; `describe` says so.

`DICOMCAST_FHIR_WRITES` overrides the statement (a server may under- or over-state):
`auto`, or the bundle kind followed by the features to use, e.g. `batch,if-match` or
`transaction,conditional-create,if-match`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from dicomcast.config.fhir import split_writes

BundleKind = Literal["transaction", "batch", "single"]
UNSAID = (
    "The statement does not say whether If-Match is enforced (versioning is not "
    "versioned-update): If-Match is sent, and learnt by a stale update of dicomcast's Endpoint."
)


@dataclass(frozen=True)
class WriteMode:
    """How writes go out: `bundle` kind, the features used, the largest Bundle sent, and
    why (each reason one short sentence for `check-config` and the start-up log)."""

    bundle: BundleKind = "transaction"
    conditional_create: bool = True
    if_match: bool = True
    max_entries: int = 100
    reasons: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # interactions we need that the server does not list
    probe_if_match: bool = False  # the statement does not say: learn it (`learnt`)

    @property
    def blind_creates(self) -> bool:
        """A study never written may go out as conditional creates without a read first."""
        return self.bundle == "transaction" and self.conditional_create and self.max_entries >= 2

    def describe(self) -> str:
        kind = {
            "transaction": f"transaction Bundles of up to {self.max_entries} entries",
            "batch": f"batch Bundles of up to {self.max_entries} entries, in dependency order",
            "single": "single requests, in dependency order",
        }[self.bundle]
        features = [
            "conditional create" if self.conditional_create else "search, then create",
            "If-Match" if self.if_match else "updates without If-Match",
        ]
        words = f"{kind}; {', '.join(features)}"
        if not self.if_match:
            words += "; an EHR updating a Patient at the same moment can lose its change"
        if self.reasons:
            words += f" ({' '.join(self.reasons)})"
        return words


def configured(value: str, max_entries: int) -> WriteMode | None:
    """The mode `DICOMCAST_FHIR_WRITES` names (checked by the settings); None for `auto`."""
    split = split_writes(value)
    if split is None:
        return None
    kind, features = split
    bundle = cast(BundleKind, kind)
    return WriteMode(
        bundle=bundle,
        max_entries=_size(bundle, max_entries),
        conditional_create="conditional-create" in features,
        if_match="if-match" in features,
        reasons=("As configured by DICOMCAST_FHIR_WRITES.",),
    )


def from_statement(
    statement: Mapping[str, Any], needs: Mapping[str, frozenset[str]], max_entries: int
) -> WriteMode:
    """The mode a CapabilityStatement allows. `needs` maps each resource type written to
    the interactions used on it (`create`, `update`, `delete`, `search-type`)."""
    rests = [r for r in statement.get("rest") or [] if isinstance(r, dict)]
    rest = next((r for r in rests if r.get("mode") == "server"), rests[0] if rests else {})
    reasons: list[str] = []
    system = _codes(rest.get("interaction"))
    bundle: BundleKind = "transaction"
    if system is None:
        reasons.append("The statement lists no system interactions: transactions assumed.")
    elif "transaction" not in system:
        bundle = "batch" if "batch" in system else "single"
        reasons.append(f"The statement lists no transaction interaction: {bundle} used.")
    resources = {r.get("type"): r for r in rest.get("resource") or [] if isinstance(r, dict)}
    missing: list[str] = []
    conditional, versioned, unsaid = True, True, False
    for resource_type, interactions in sorted(needs.items()):
        declared = resources.get(resource_type)
        if declared is None:
            if resources:
                missing.append(f"{resource_type} (not supported at all)")
            continue
        listed = _codes(declared.get("interaction"))
        missing += [f"{resource_type} {i}" for i in sorted(interactions - (listed or interactions))]
        if "create" in interactions and declared.get("conditionalCreate") is not True:
            conditional = False
            reasons.append(f"No conditional create of {resource_type}.")
        versioning = declared.get("versioning")
        if "update" in interactions and versioning == "no-version":
            versioned = False
            reasons.append(f"No version-aware update (If-Match) of {resource_type}.")
        elif "update" in interactions and versioning != "versioned-update":
            unsaid = True  # `versioned` or nothing: whether If-Match holds is not said
    if unsaid and versioned:
        reasons.append(UNSAID)
    return WriteMode(
        bundle=bundle,
        conditional_create=conditional,
        if_match=versioned,
        max_entries=_size(bundle, max_entries),
        reasons=tuple(reasons),
        missing=tuple(missing),
        probe_if_match=versioned and unsaid,
    )


def learnt(mode: WriteMode, enforced: bool) -> WriteMode:
    """The mode once a stale-version update showed whether If-Match is enforced."""
    reasons = tuple(r for r in mode.reasons if r != UNSAID)
    if enforced:
        why = "If-Match is enforced: a stale-version update was refused (412)."
    else:
        why = "If-Match is not enforced: a stale-version update was not refused."
    return replace(mode, if_match=enforced, probe_if_match=False, reasons=(*reasons, why))


def _size(bundle: BundleKind, max_entries: int) -> int:
    """The most entries sent at once: one, where each goes as its own request."""
    return 1 if bundle == "single" else max_entries


def _codes(interactions: Any) -> set[str] | None:
    """The interaction codes of a statement's list; None when it has no list at all."""
    if not isinstance(interactions, list):
        return None
    return {str(i.get("code")) for i in interactions if isinstance(i, dict)}
