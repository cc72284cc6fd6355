"""`foreach:`, compiled: the scopes a body runs in, one per series, instance, sequence item
or value a directive gives."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import yaml

from dicomcast.errors import MappingFileError
from dicomcast.mapping.runtime import Node, Run, Scope, empty
from dicomcast.studyview import is_dataset, tag_of, values


class Compiler(Protocol):
    """What `foreach:` asks of the rule compiler (`engine.Compiler`): compiling its body,
    refusing with the node's place, and noting the tags it reads."""

    in_item: int  # compiling a rule that reads inside an item (nested foreach: a count)

    def fail(self, node: yaml.Node, reason: str) -> MappingFileError: ...

    def plain(self, node: yaml.Node) -> Any: ...

    def compile(self, node: yaml.Node, path: str) -> Node: ...

    def note(self, tags: list[str]) -> None: ...


def compile_foreach(compiler: Compiler, keys: dict[str, yaml.Node], path: str) -> Node:
    """`foreach:` over series, instances, a sequence (each item is what `from` reads next)
    or a directive giving a list; the body is compiled as reading inside items unless it
    walks series or instances."""
    if "each" not in keys:
        raise compiler.fail(keys["foreach"], "foreach: needs an each: template")
    over_node = keys["foreach"]
    over = compiler.plain(over_node) if isinstance(over_node, yaml.ScalarNode) else None
    in_item = over not in ("series", "instances")
    compiler.in_item += in_item
    try:
        body = compiler.compile(keys["each"], path)
    finally:
        compiler.in_item -= in_item
    scopes: Callable[[Scope, Run], Iterable[Scope]]
    if over == "series":

        def scopes(scope: Scope, run: Run) -> Iterable[Scope]:
            study = scope.study
            return [Scope(s.data, study, s) for s in study.series] if study else []

    elif over == "instances":

        def scopes(scope: Scope, run: Run) -> Iterable[Scope]:
            series = scope.series
            if series is None:
                return []
            return [Scope(i.data, scope.study, series) for i in series.instances]

    elif isinstance(over, str):
        try:
            tag = tag_of(over)
        except ValueError as exc:
            raise compiler.fail(over_node, f"foreach: {exc}") from None
        compiler.note([tag])

        def scopes(scope: Scope, run: Run) -> Iterable[Scope]:
            return [
                Scope(item, scope.study, scope.series, item)
                for item in values(scope.data, tag)
                if isinstance(item, Mapping)
            ]

    else:
        producer = compiler.compile(over_node, path)

        def scopes(scope: Scope, run: Run) -> Iterable[Scope]:
            found = producer(scope, run)
            items = found if isinstance(found, list) else ([] if empty(found) else [found])
            # A dataset (a sequence item, an SR content item) is what `from:` reads next.
            return [
                Scope(item if is_dataset(item) else scope.data, scope.study, scope.series, item)
                for item in items
            ]

    def foreach(scope: Scope, run: Run) -> Any:
        out: list[Any] = []
        for inner in scopes(scope, run):
            value = body(inner, run)
            if isinstance(value, list):
                out.extend(value)
            elif not empty(value):
                out.append(value)
        return out or None

    return foreach
