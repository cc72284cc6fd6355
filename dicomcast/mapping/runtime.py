"""What compiled mapping rules run on: the scope a rule reads, one run's context, and the
small steps rules are made of (reading a tag path, applying a converter per item)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dicomcast.mapping import sr
from dicomcast.mapping.converters import ConversionError, ConvertContext
from dicomcast.studyview import DicomJson, SeriesView, StudyView, values

MAX_TEXT = 65_536  # characters of one DICOM text value: no real element needs more
_SHORT = frozenset({int, float, bool})
# A converter that trips over malformed input must cost one element, never the study.
_CONVERTER_FAULTS = (ConversionError, ValueError, TypeError, KeyError, AttributeError, IndexError)


@dataclass(frozen=True)
class Scope:
    """Where a rule is evaluated: the dataset `from` reads, plus the study/series around it."""

    data: DicomJson
    study: StudyView | None = None
    series: SeriesView | None = None
    item: Any = None


@dataclass
class Run:
    """One evaluation of the mappings: settings, tables, references and collected warnings."""

    ctx: ConvertContext
    refs: Mapping[str, str] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return self.ctx.warnings


Node = Callable[[Scope, Run], Any]


def empty(value: Any) -> bool:
    """None, or an empty text, list or object (0 and False are values)."""
    return value is None or (not value and isinstance(value, str | list | dict))


def computed_value(name: str) -> Node:
    def computed(scope: Scope, run: Run) -> Any:
        if name == "$item":
            return scope.item
        study = scope.study
        if study is None:
            return None
        if name == "$series_count":
            return len(study.series)
        if name == "$instance_count":
            return len(scope.series.instances) if scope.series else study.instance_count
        return study.series_modalities

    return computed


def content_reader(steps: tuple[sr.Step, ...], many: bool) -> tuple[Node, str]:
    """A reader of SR content items (see mapping/sr.py), and its label for warnings."""

    def content(scope: Scope, run: Run) -> Any:
        found = sr.find(scope.data, steps, many)
        if not found:
            return None
        return list(found) if many else found[0]

    return content, f"content item {' > '.join(str(s.concept) for s in steps)}"


def joined(items: Node) -> Node:
    """The texts (and numbers) `items` gives, joined by ", "."""

    def join(scope: Scope, run: Run) -> Any:
        parts = items(scope, run) or []
        return ", ".join(str(p) for p in parts if isinstance(p, str | int | float)) or None

    return join


def read_path(data: DicomJson, tags: list[str], many: bool) -> Any:
    if not many:  # most reads: the first usable value, through each sequence's first item
        item: Any = data
        for tag in tags[:-1]:
            listed = _listed(item, tag)
            if not listed:
                return None
            item = clean(listed[0])
            if empty(item):
                return None
        for value in _listed(item, tags[-1]):
            value = clean(value)
            if not empty(value):
                return value
        return None
    current: list[Any] = [data]
    for tag in tags:  # many: every value, through every item of each sequence
        found: list[Any] = []
        for entry in current:
            if isinstance(entry, Mapping):
                found.extend(values(entry, tag))
        current = [clean(v) for v in found]
        current = [v for v in current if not empty(v)]
        if not current:
            return None
    return current


def _listed(item: Any, tag: str) -> list[Any]:
    """`item`'s element `tag`'s Value list, [] if there is none (dicts take the fast way:
    an ABC isinstance check costs more than the read)."""
    if item.__class__ is not dict and not isinstance(item, Mapping):
        return []
    element = item.get(tag)
    if element.__class__ is not dict and not isinstance(element, Mapping):
        return []
    listed = element.get("Value")
    return listed if listed.__class__ is list or isinstance(listed, list) else []


def clean(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def per_item(step: Callable[[Any, Run], Any]) -> Callable[[Any, Run], Any]:
    """Apply a step to each item of a list (flattening list results), or to a single value."""

    def apply(value: Any, run: Run) -> Any:
        if not isinstance(value, list):
            return step(value, run)
        out: list[Any] = []
        for item in value:
            result = step(item, run)
            if isinstance(result, list):
                out.extend(r for r in result if not empty(r))
            elif not empty(result):
                out.append(result)
        return out or None

    return apply


def guarded(
    conv: Callable[[Any, ConvertContext], Any], where: str, path: str, source: str
) -> Callable[[Any, Run], Any]:
    """Run a converter; a bad value costs this element and leaves a warning, not the study."""

    def guarded(value: Any, run: Run) -> Any:
        before = len(run.warnings)
        try:
            result = conv(value, run.ctx)
        except _CONVERTER_FAULTS as exc:
            run.warnings.append(f"{where} {path}: {source} dropped: {exc}")
            return None
        for index in range(before, len(run.warnings)):
            run.warnings[index] = f"{where} {path}: {source}: {run.warnings[index]}"
        return result

    return guarded


def _too_long(value: Any) -> int:
    """The length of the longest text in a value read from DICOM, if it is over MAX_TEXT
    (a string, a list of them, or a person name's groups); else 0."""
    items = value if isinstance(value, list) else [value]
    longest = 0
    for item in items:
        texts = item.values() if isinstance(item, dict) else (item,)
        for text in texts:
            if isinstance(text, str) and len(text) > MAX_TEXT:
                longest = max(longest, len(text))
    return longest


def bounded(value: Any, where: str, run: Run) -> Any:
    """A value read from DICOM, or None (with a warning naming it) when a text in it is
    longer than any real one: refused, never cut short (which would change what it says)."""
    if (
        value is None
        or value.__class__ in _SHORT
        or (value.__class__ is str and len(value) <= MAX_TEXT)
    ):
        return value
    longest = _too_long(value)
    if longest:
        run.warnings.append(f"{where}: dropped: {longest:,} characters, over {MAX_TEXT:,}")
        return None
    return value
