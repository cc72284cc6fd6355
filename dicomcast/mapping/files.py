"""One mapping file, compiled: its resource type, the elements it owns, the closure that
builds the resource, and every DICOM tag it reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dicomcast.errors import MappingFileError
from dicomcast.mapping.elements import check_elements
from dicomcast.mapping.engine import TEMPLATE_KEYS, Compiler
from dicomcast.mapping.runtime import Node
from dicomcast.studyview import is_uid


@dataclass(frozen=True)
class ResourceMapping:
    """One compiled mapping file. `owned` lists the top-level elements it writes; `tags`
    every DICOM tag its rules read. `instances_of`, for a file that makes one resource per
    instance (a dose report's Observation), the SOP classes of those instances; `reads_content`
    says its rules read SR content trees."""

    resource_type: str
    file: Path
    owned: frozenset[str]
    build: Node
    tags: frozenset[str] = frozenset()
    instances_of: frozenset[str] | None = None
    reads_content: bool = False
    item_tags: frozenset[str] = frozenset()  # read inside items
    top_tags: frozenset[str] = frozenset()  # read as attributes of an instance


# libyaml's parser where PyYAML was built with it (node marks, hence file:line, are kept).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def compile_file(
    path: Path,
    resource_type: str,
    tables: Mapping[str, Mapping[str, Any]],
    config_keys: Iterable[str],
    *,
    check: bool = True,
) -> ResourceMapping:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise MappingFileError(f"{path.name}: not valid YAML: {exc}") from None
    if not isinstance(root, yaml.MappingNode):
        raise MappingFileError(f"{path.name}:1: expected a mapping of FHIR elements")
    compiler = Compiler(path, tables, config_keys)
    keys = compiler._keys(root)
    if "tables" in keys:
        inline = compiler.plain(keys["tables"])
        if not isinstance(inline, dict) or not all(isinstance(t, dict) for t in inline.values()):
            raise compiler.fail(keys["tables"], "tables: maps a name to {key: value}")
        compiler.tables = {
            **tables,
            **{k: {str(a): b for a, b in v.items()} for k, v in inline.items()},
        }
        root.value = [(k, v) for k, v in root.value if compiler.plain(k) != "tables"]
    instances_of = None
    if "instances_of" in keys:
        classes = compiler.plain(keys["instances_of"])
        if not isinstance(classes, list) or not all(is_uid(str(c)) for c in classes) or not classes:
            raise compiler.fail(
                keys["instances_of"], "instances_of: expects a list of SOP Class UIDs"
            )
        instances_of = frozenset(str(c) for c in classes)
        root.value = [(k, v) for k, v in root.value if compiler.plain(k) != "instances_of"]
    declared = compiler.plain(keys["resourceType"]) if "resourceType" in keys else None
    if declared != resource_type:
        raise compiler.fail(root, f"resourceType must be {resource_type!r}, found {declared!r}")
    if check:  # every element a template names is FHIR's (see elements.py)
        check_elements(root, resource_type, path)
    build = compiler.compile(root, "")
    meta = ("resourceType", "tables", "instances_of", *TEMPLATE_KEYS)
    owned = frozenset(k for k in keys if k not in meta)
    return ResourceMapping(
        resource_type,
        path,
        owned,
        build,
        frozenset(compiler.tags),
        instances_of,
        compiler.reads_content,
        frozenset(compiler.item_tags),
        frozenset(compiler.top_tags),
    )
