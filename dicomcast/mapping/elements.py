"""Every element a mapping names is one FHIR R4 has at that place, checked when the file
is loaded: a misspelled element (`descripton:`) or directive (`{form: StudyDate}`) would
otherwise compile as a template, and the per-study validation would drop what it makes
from every study, one warning at a time, for ever.

The element names and types come from the FHIR models dicomcast validates its output with
(fhir.resources, R4B, whose elements are R4's)."""

from __future__ import annotations

import difflib
import types
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel

from dicomcast.errors import MappingFileError
from dicomcast.mapping.engine import PRODUCERS, TEMPLATE_KEYS

FILE_KEYS = ("resourceType", "tables", "instances_of")
PRIMITIVE = object()  # an element that takes a value, not an object
Model = type[BaseModel] | object | None  # a model, PRIMITIVE, or None (unknown: not checked)
Keys = dict[str, tuple[yaml.Node, yaml.Node]]  # key -> (its node, its value's node)


def check_elements(root: yaml.MappingNode, resource_type: str, file: Path) -> None:
    """Refuse (`file:line: ...`) a template key that is no element of its FHIR type."""
    _Walk(file).node(root, _model_named(resource_type), resource_type, top=True)


class _Walk:
    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, node: yaml.Node, reason: str) -> MappingFileError:
        return MappingFileError(f"{self.file.name}:{node.start_mark.line + 1}: {reason}")

    def node(self, node: yaml.Node, model: Model, path: str, *, top: bool = False) -> None:
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self.node(item, model, path)
        elif isinstance(node, yaml.MappingNode):
            keys: Keys = {
                str(k.value): (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)
            }
            if any(k in PRODUCERS for k in keys):
                self.directive(keys, model, path)
            else:
                self.template(keys, model, path, top)

    def directive(self, keys: Keys, model: Model, path: str) -> None:
        """What a directive gives is an element value too: `foreach`'s `each` template and
        `first`'s alternatives are checked as the element they give."""
        if "foreach" in keys and "each" in keys:
            self.node(keys["each"][1], model, path)
        if "first" in keys:
            self.node(keys["first"][1], model, path)
        # (a directive's own keys are the compiler's to check)

    def template(
        self,
        keys: Keys,
        model: Model,
        path: str,
        top: bool,
    ) -> None:
        if model is None:
            return  # a type dicomcast does not know the elements of: not checked
        names = [k for k in keys if k not in TEMPLATE_KEYS and not (top and k in FILE_KEYS)]
        if model is PRIMITIVE:
            if names:
                key_node = keys[names[0]][0]
                hint = _close(names[0], PRODUCERS)
                raise self.fail(
                    key_node,
                    f"{path} takes a value, not an object with {names[0]!r}"
                    + (f": did you mean the directive {hint!r}?" if hint else ""),
                )
            return
        assert isinstance(model, type)
        fields = _fields(model)
        for name in names:
            key_node, value_node = keys[name]
            if name not in fields:
                hint = _close(name, list(fields)) or _close(name, PRODUCERS)
                raise self.fail(
                    key_node,
                    f"{name!r} is not an element of {path}"
                    + (f": did you mean {hint!r}?" if hint else ""),
                )
            self.node(value_node, fields[name], f"{path}.{name}")


def _close(name: str, known: typing.Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return found[0] if found else None


@cache
def _model_named(name: str) -> Model:
    try:
        found = get_fhir_model_class(name)
    except (KeyError, ValueError):
        return None
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


@cache
def _fields(model: type[BaseModel]) -> dict[str, Model]:
    """Element name (as JSON has it) -> what it holds."""
    return {
        (field.alias or name): _held(field.annotation) for name, field in model.model_fields.items()
    }


def _held(annotation: Any) -> Model:
    """The model an element holds (a list's items), PRIMITIVE, or None (not known)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None
            annotation = args[0]
        elif origin in (list, Annotated):
            annotation = typing.get_args(annotation)[0]
        else:
            break
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    name = getattr(annotation, "__name__", "")
    if getattr(annotation, "__module__", "") == "abc" and name.endswith("Type"):
        if name in ("FHIRPrimitiveExtensionType", "ResourceType"):
            return None
        return _model_named(name.removesuffix("Type"))
    return PRIMITIVE
