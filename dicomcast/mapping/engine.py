"""Load the mapping folder once, compile every rule into a Python closure, run them per study.

A mapping file looks like the FHIR JSON it produces. A YAML mapping is a *directive* when it
has one of the producer keys (see PRODUCERS), else a *template* whose keys are FHIR element
names. Lists splice their items; empty results (None,
"", [], {}) are left out, so a rule whose DICOM element is absent simply writes nothing.
The format is documented in mappings/README.md.

Compilation checks everything that can be checked without data (directive names, DICOM
keywords, converters, tables, config keys) and fails with `file:line: reason`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dicomcast.errors import MappingError, MappingFileError
from dicomcast.mapping import sr
from dicomcast.mapping.converters import get_converter
from dicomcast.mapping.foreach import compile_foreach
from dicomcast.mapping.runtime import (
    Node,
    Run,
    Scope,
    bounded,
    computed_value,
    content_reader,
    empty,
    guarded,
    joined,
    per_item,
    read_path,
)
from dicomcast.studyview import describe_tag, tag_of

PRODUCERS = ("from", "const", "first", "config", "ref", "foreach", "sr", "join")
MODIFIERS = ("many", "as", "lookup", "in", "default", "when", "required", "each")
TEMPLATE_KEYS = ("when", "required", "needs")
COMPUTED = ("$item", "$series_count", "$instance_count", "$series_modalities")
REFERABLE = ("Patient", "ImagingStudy", "Endpoint")


def _where(node: yaml.Node, file: Path) -> str:
    return f"{file.name}:{node.start_mark.line + 1}"


class Compiler:
    """Turns one file's YAML node tree into closures; knows the file for error messages."""

    def __init__(
        self, file: Path, tables: Mapping[str, Mapping[str, Any]], config_keys: Iterable[str]
    ) -> None:
        self.file = file
        self.tables = tables
        self.config_keys = frozenset(config_keys)
        self.tags: set[str] = set()  # every DICOM tag a rule of this file reads
        self.item_tags: set[str] = set()  # tags read inside sequence items or SR content
        self.top_tags: set[str] = set()  # tags read as attributes of an instance
        self.in_item = 0  # compiling a rule that reads inside an item
        self.reads_content = False  # a rule reads an SR content tree (`sr:`)
        self._loader = yaml.SafeLoader("")

    def fail(self, node: yaml.Node, reason: str) -> MappingFileError:
        return MappingFileError(f"{_where(node, self.file)}: {reason}")

    def plain(self, node: yaml.Node) -> Any:
        return self._loader.construct_object(node, deep=True)

    def compile(self, node: yaml.Node, path: str) -> Node:
        if isinstance(node, yaml.MappingNode):
            keys = self._keys(node)
            if any(k in PRODUCERS for k in keys):
                return self._directive(node, path)
            return self._template(node, path)
        if isinstance(node, yaml.SequenceNode):
            return self._sequence(node, path)
        literal = self.plain(node)
        return lambda scope, run: literal

    def _keys(self, node: yaml.MappingNode) -> dict[str, yaml.Node]:
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.plain(key_node)
            if not isinstance(key, str):
                raise self.fail(key_node, f"keys must be text, not {key!r}")
            if key in out:
                raise self.fail(key_node, f"{key!r} appears twice")
            out[key] = value_node
        return out

    # --- templates and lists

    def _template(self, node: yaml.MappingNode, path: str) -> Node:
        keys = self._keys(node)
        when = self._condition(keys["when"], path) if "when" in keys else None
        required = bool(self.plain(keys["required"])) if "required" in keys else False
        needs: list[str] = []
        if "needs" in keys:
            needs_value = self.plain(keys["needs"])
            if not isinstance(needs_value, list) or not all(
                isinstance(n, str) for n in needs_value
            ):
                raise self.fail(keys["needs"], "needs: expects a list of element names")
            needs = needs_value
        fields = [
            (name, self.compile(child, f"{path}.{name}" if path else name))
            for name, child in keys.items()
            if name not in TEMPLATE_KEYS
        ]
        unknown_needs = [n for n in needs if n not in dict(fields)]
        if unknown_needs:
            raise self.fail(
                keys["needs"], f"needs: names no element of this object: {unknown_needs}"
            )
        where = _where(node, self.file)

        def template(scope: Scope, run: Run) -> Any:
            if when is not None and not when(scope, run):
                return None
            out: dict[str, Any] = {}
            for name, fn in fields:
                value = fn(scope, run)
                if value is not None and (value or not isinstance(value, str | list | dict)):
                    out[name] = value
            missing = [n for n in needs if n not in out] if needs else None
            if missing:
                run.warnings.append(f"{where} {path}: left out, no value for {', '.join(missing)}")
                out = {}
            if not out and required:
                raise MappingError(f"{where} {path}: required, but the study gives it no value")
            return out or None

        return template

    def _sequence(self, node: yaml.SequenceNode, path: str) -> Node:
        items = [self.compile(child, path) for child in node.value]

        def sequence(scope: Scope, run: Run) -> Any:
            out: list[Any] = []
            for fn in items:
                value = fn(scope, run)
                if empty(value):
                    continue
                if isinstance(value, list):
                    out.extend(v for v in value if not empty(v))
                else:
                    out.append(value)
            return out or None

        return sequence

    def _condition(self, node: yaml.Node, path: str) -> Node:
        """`when: Keyword.Path` (present and non-empty) or `when: {directive}` (truthy)."""
        if isinstance(node, yaml.ScalarNode):
            read, _ = self._reader(node, self.plain(node), many=False)
            return read
        return self.compile(node, path)

    # --- directives

    def _directive(self, node: yaml.MappingNode, path: str) -> Node:
        keys = self._keys(node)
        unknown = [k for k in keys if k not in PRODUCERS + MODIFIERS]
        if unknown:
            raise self.fail(
                node,
                f"unknown key(s) {unknown} in a directive (one of {', '.join(PRODUCERS)} "
                f"with {', '.join(MODIFIERS)})",
            )
        producers = [k for k in keys if k in PRODUCERS]
        if len(producers) != 1:
            raise self.fail(node, f"a directive takes exactly one of {PRODUCERS}, got {producers}")
        kind = producers[0]
        if "each" in keys and kind != "foreach":
            raise self.fail(keys["each"], "each: belongs to a foreach directive")
        many = bool(self.plain(keys["many"])) if "many" in keys else False
        source = "value"
        if kind == "from":
            produce, source = self._reader(keys["from"], self.plain(keys["from"]), many)
        elif kind == "const":
            literal = self.plain(keys["const"])
            produce = lambda scope, run: literal  # noqa: E731
        elif kind == "first":
            produce = self._first(keys["first"], path)
        elif kind == "config":
            produce = self._config(keys["config"])
        elif kind == "ref":
            produce = self._ref(keys["ref"], bare=path.endswith(".reference"))
        elif kind == "sr":
            produce, source = self._content(keys["sr"], many)
        elif kind == "join":
            produce, source = self._join(keys["join"], path), "the joined items"
        else:
            produce = self._foreach(keys, path)
        return self._modified(node, keys, path, produce, source)

    def _modified(
        self,
        node: yaml.MappingNode,
        keys: dict[str, yaml.Node],
        path: str,
        produce: Node,
        source: str,
    ) -> Node:
        where = _where(node, self.file)
        when = self._condition(keys["when"], path) if "when" in keys else None
        steps = self._steps(keys, where, path, source)
        has_default = "default" in keys
        default = self.plain(keys["default"]) if has_default else None
        required = bool(self.plain(keys["required"])) if "required" in keys else False
        if when is None and not steps and not has_default and not required:
            return produce  # nothing to modify: no wrapper to call per value

        def directive(scope: Scope, run: Run) -> Any:
            if when is not None and not when(scope, run):
                return None
            value = produce(scope, run)
            for step in steps:
                if empty(value):
                    break
                value = step(value, run)
            if empty(value) and has_default:
                value = default
            if empty(value) and required:
                raise MappingError(
                    f"{where} {path}: required, but no usable value came from {source}"
                )
            return value

        return directive

    def _steps(
        self, keys: dict[str, yaml.Node], where: str, path: str, source: str
    ) -> list[Callable[[Any, Run], Any]]:
        """The `in` filter on raw values, then `as` converters, then `lookup`; per list item."""
        steps: list[Callable[[Any, Run], Any]] = []
        if "in" in keys:
            allowed = self.plain(keys["in"])
            if not isinstance(allowed, list):
                raise self.fail(keys["in"], "in: expects a list of values")
            allowed_set = frozenset(str(a) for a in allowed)
            steps.append(per_item(lambda value, run: value if str(value) in allowed_set else None))
        if "as" in keys:
            names = self.plain(keys["as"])
            names = names if isinstance(names, list) else [names]
            for name in names:
                conv = get_converter(str(name))
                if conv is None:
                    raise self.fail(keys["as"], f"unknown converter {name!r}")
                steps.append(per_item(guarded(conv, where, path, source)))
        if "lookup" in keys:
            table_name = self.plain(keys["lookup"])
            if table_name not in self.tables:
                raise self.fail(keys["lookup"], f"unknown table {table_name!r}")
            table = self.tables[table_name]

            def lookup(value: Any, run: Run) -> Any:
                found = table.get(str(value))
                if found is None:
                    run.warnings.append(
                        f"{where} {path}: {source} {value!r} is not in table {table_name!r}"
                    )
                return found

            steps.append(per_item(lookup))
        return steps

    def _reader(self, node: yaml.Node, spec: Any, many: bool) -> tuple[Node, str]:
        """`from:` — a keyword path (`Seq.Keyword`), a computed `$name`, or a list of paths."""
        if isinstance(spec, list):
            readers = [self._reader(node, s, False) for s in spec]
            fns = [r[0] for r in readers]
            label = " + ".join(r[1] for r in readers)
            return (lambda scope, run: tuple(fn(scope, run) for fn in fns)), label
        if not isinstance(spec, str) or not spec:
            raise self.fail(node, "from: expects a DICOM keyword path or a list of them")
        if spec.startswith("$"):
            if spec not in COMPUTED:
                raise self.fail(node, f"unknown computed value {spec!r} (known: {COMPUTED})")
            return computed_value(spec), spec
        try:
            tags = [tag_of(part) for part in spec.split(".")]
        except ValueError as exc:
            raise self.fail(node, str(exc)) from None
        self.note(tags)
        label = describe_tag(tags[-1])
        where = f"{_where(node, self.file)} {label}"

        def read(scope: Scope, run: Run) -> Any:
            return bounded(read_path(scope.data, tags, many), where, run)

        return read, label

    def _content(self, node: yaml.Node, many: bool) -> tuple[Node, str]:
        """`sr: "DCM:113811 > DCM:113813"`: content items of the SR being read."""
        try:
            steps = sr.parse_path(self.plain(node), self.tables.get("srt_to_sct", {}))
        except ValueError as exc:
            raise self.fail(node, f"sr: {exc}") from None
        self.note([sr.CONTENT])
        self.tags.update(sr.TAGS_READ)
        self.item_tags.update(sr.TAGS_READ - {sr.CONTENT})
        self.reads_content = True
        return content_reader(steps, many)

    def _join(self, node: yaml.Node, path: str) -> Node:
        """`join: [a, b, ...]`: the texts the items give, joined by ", "."""
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, "join: expects a list of items")
        return joined(self._sequence(node, path))

    def _first(self, node: yaml.Node, path: str) -> Node:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, "first: expects a list of alternatives")
        options = [self.compile(child, path) for child in node.value]

        def first(scope: Scope, run: Run) -> Any:
            for fn in options:
                value = fn(scope, run)
                if not empty(value):
                    return value
            return None

        return first

    def _config(self, node: yaml.Node) -> Node:
        key = self.plain(node)
        if key not in self.config_keys:
            raise self.fail(node, f"unknown setting {key!r}")
        return lambda scope, run: run.ctx.config.get(key)

    def _ref(self, node: yaml.Node, bare: bool) -> Node:
        """`ref: Patient` -> `{"reference": ...}`; under a `reference:` key (a Reference that
        also carries an identifier) the reference text alone."""
        target = self.plain(node)
        if target not in REFERABLE:
            raise self.fail(node, f"ref: names one of {REFERABLE}, not {target!r}")

        def ref(scope: Scope, run: Run) -> Any:
            reference = run.refs.get(target)
            if not reference:
                return None
            return reference if bare else {"reference": reference}

        return ref

    def note(self, tags: list[str]) -> None:
        """Record the tags a path reads: its first at the level the rule reads at, the rest
        inside items (a source asking for attributes asks only for the top-level ones)."""
        self.tags.update(tags)
        (self.item_tags if self.in_item else self.top_tags).add(tags[0])
        self.item_tags.update(tags[1:])

    def _foreach(self, keys: dict[str, yaml.Node], path: str) -> Node:
        return compile_foreach(self, keys, path)
