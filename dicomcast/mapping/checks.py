"""The last checks a mapped resource passes before it may be written.

`scrub` removes what FHIR strings may not hold (control characters, ISO 2022 escapes left
undecoded, whitespace other than space/tab/CR/LF). `checked` validates against the R4B
models and drops an optional element the model refuses, with a warning: one malformed
optional value costs that element, never the study. What identifies the resource (its
first identifier, subject, series and instance UIDs) is never dropped; an error there is
a `MappingError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from dicomcast.errors import MappingError

# ESC, intermediates, a final byte: an ISO 2022 code extension nobody decoded.
_ESCAPE = re.compile(r"\x1b[\x20-\x2f]*[\x30-\x7e]?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_SPACES = re.compile(r"[^\S \t\r\n]")
_MAX_ROUNDS = 5
# Keys of a series / instance that make it what it is: an error there refuses the study.
_SERIES_KEYS = {"uid", "modality", "instance"}
_PROTECTED_TOP = {"resourceType", "subject", "status"}


# Who the patient is: one value each, or the study cannot be placed (VM 1 in PS3.6).
_ONE_VALUE = {"00100020": "PatientID", "00100021": "IssuerOfPatientID"}


def one_patient(data: Mapping[str, Any]) -> None:
    """Refuse a study whose PatientID (or its issuer) has several values (`A\\B`): filing
    it under the first would be a guess at which patient is meant."""
    for tag, name in _ONE_VALUE.items():
        element = data.get(tag)
        values = element.get("Value") if isinstance(element, dict) else None
        if isinstance(values, list) and len([v for v in values if v not in (None, "")]) > 1:
            raise MappingError(
                f"{name} has {len(values)} values: which patient is meant cannot be told",
                detail=f"tag ({tag[:4]},{tag[4:]}) {name}; fix it at the source, then resync",
            )


def clean_text(text: str) -> str:
    """`text` without escapes and control characters; other whitespace becomes a space."""
    text = _ESCAPE.sub("", text)
    text = _CONTROL.sub("", text)
    return _SPACES.sub(" ", text).strip()


def scrub(resource: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """The resource with every string made a valid FHIR string; one warning per element."""
    if _clean(resource):
        return resource
    found: set[str] = set()
    out = _scrub(resource, resource.get("resourceType", "resource"), found)
    warnings.extend(
        f"{path}: control characters, escapes or odd spaces removed" for path in sorted(found)
    )
    return out if isinstance(out, dict) else resource


def _clean(resource: dict[str, Any]) -> bool:
    """Nothing to scrub, seen at C speed on the resource's JSON (ASCII control characters
    show there as escapes, the others as themselves; an empty text as `""`). A false alarm
    only costs the element-by-element walk."""
    try:
        text = orjson.dumps(resource).decode()
    except TypeError:  # a value JSON cannot hold as it is: walk it
        return False
    return text.isprintable() and '""' not in text and _JSON_ESCAPE.search(text) is None


_JSON_ESCAPE = re.compile(r"\\[bfnrtu]")


def _scrub(value: Any, path: str, found: set[str]) -> Any:
    if isinstance(value, str):
        if value.isprintable():
            return value
        cleaned = clean_text(value)
        if cleaned != value:
            found.add(path)
        return cleaned
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _scrub(item, f"{path}.{key}", found)
            if item != "":
                out[key] = item
        return out
    if isinstance(value, list):
        return [_scrub(item, path, found) for item in value]
    return value


def _errors(resource: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, str]]:
    model = get_fhir_model_class(resource["resourceType"])
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [(tuple(e["loc"]), e["type"], e["msg"]) for e in exc.errors()]
    return []


def _drop_point(loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Where to cut for an error at `loc`: the innermost list item holding it, or for a
    series the element under it. None when the error is in what identifies the resource."""
    if not loc or loc[0] in _PROTECTED_TOP or loc[:2] == ("identifier", 0):
        return None
    if loc[0] == "series":
        # A series' own elements may go; its UID, modality and instances make it.
        if len(loc) < 3 or loc[2] in _SERIES_KEYS:
            return None
        return loc[:3] + _innermost_item(loc[3:])
    return loc[:1] + _innermost_item(loc[1:])


def _innermost_item(rest: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of `rest` up to its last list index (the item to drop), or nothing."""
    last = max((i for i, p in enumerate(rest) if isinstance(p, int)), default=-1)
    return rest[: last + 1]


def _without(value: Any, cut: tuple[Any, ...]) -> Any:
    """A copy of `value` without the element at `cut`; containers it empties go too."""
    if not cut:
        return None
    head, rest = cut[0], cut[1:]
    if isinstance(value, dict) and head in value:
        inner = _without(value[head], rest)
        copy = {k: v for k, v in value.items() if k != head}
        if inner not in (None, [], {}):
            copy[head] = inner
        return copy
    if isinstance(value, list) and isinstance(head, int) and 0 <= head < len(value):
        inner = _without(value[head], rest)
        items = list(value)
        if inner in (None, [], {}):
            del items[head]
        else:
            items[head] = inner
        return items
    return value


def _dotted(kind: str, loc: tuple[Any, ...]) -> str:
    return ".".join([kind, *(str(p) for p in loc if not isinstance(p, int))])


def checked(
    resource: dict[str, Any],
    warnings: list[str],
    sample: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: r,
) -> dict[str, Any]:
    """The resource, valid against the R4B model, with refused optional elements dropped.

    `sample(resource)` is what gets validated (a study with its instances thinned out):
    cuts never reach into instances, so they apply to the resource as they do to it."""
    kind = str(resource.get("resourceType", "resource"))
    for _ in range(_MAX_ROUNDS):
        errors = _errors(sample(resource))
        if not errors:
            return resource
        cuts = []
        for loc, error_type, _msg in errors:
            cut = _drop_point(loc)
            if cut is None:
                _refuse(kind, errors)
            cuts.append(cut)
            warnings.append(f"{_dotted(kind, loc)}: dropped: not valid FHIR R4 ({error_type})")
        # Deepest and last first, so earlier list positions stay where they were.
        for cut in sorted({c for c in cuts if c is not None}, key=_order, reverse=True):
            resource = _without(resource, cut)
    errors = _errors(sample(resource))
    if errors:
        _refuse(kind, errors)
    return resource


def _order(cut: tuple[Any, ...]) -> tuple[tuple[int, str], ...]:
    return tuple((p, "") if isinstance(p, int) else (-1, str(p)) for p in cut)


def _refuse(kind: str, errors: list[tuple[tuple[Any, ...], str, str]]) -> None:
    shown = errors[:5]
    where = "; ".join(f"{'.'.join(str(p) for p in loc)}: {t}" for loc, t, _ in shown)
    # A validator's message may quote the offending value: detail, not reason.
    said = "; ".join(f"{'.'.join(str(p) for p in loc)}: {m}" for loc, _, m in shown)
    raise MappingError(f"{kind} is not valid FHIR R4: {where}", detail=said)
