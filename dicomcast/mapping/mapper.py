"""Turn one StudyView into the FHIR resources the mapping folder describes, validated.

The first identifier of each resource is its match key on the FHIR server (conditional
create / search); a resource without a usable one is a `MappingError`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dicomcast.errors import MappingError, MappingFileError
from dicomcast.mapping.checks import checked, one_patient, scrub
from dicomcast.mapping.converters import TAGS_READ, ConvertContext
from dicomcast.mapping.files import ResourceMapping, compile_file
from dicomcast.mapping.runtime import Run, Scope
from dicomcast.mapping.tables import load_tables
from dicomcast.studyview import ITEM_TAGS, SOP_CLASS, VIEW_TAGS, StudyView, text_value

RESOURCE_FILES = {
    "Patient": "patient.yaml",
    "ImagingStudy": "imagingstudy.yaml",
    "Endpoint": "endpoint.yaml",
}
# Resources made per instance of a study, optional: a folder without the file makes none.
INSTANCE_FILES = {"Observation": "dose-summary.yaml"}
# Derived from a fixed namespace so a dry run and a worker name the same placeholders.
_PLACEHOLDER_NS = uuid.UUID("5b0b6a1e-4c1d-4f62-9d0e-6a3d1c0f7e21")


def default_mapping_dir() -> Path:
    """The bundled mappings: packaged beside the code, or the repository's `mappings/`."""
    packaged = Path(__file__).resolve().parent.parent / "default_mappings"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "mappings"


def placeholder(kind: str, key: str) -> str:
    """A stable `urn:uuid:` for a resource not yet known to exist on the server."""
    return f"urn:uuid:{uuid.uuid5(_PLACEHOLDER_NS, f'{kind}|{key}')}"


def match_key(resource: Mapping[str, Any]) -> tuple[str, str]:
    """(system, value) of the first identifier: how the resource is found on the server."""
    identifiers = resource.get("identifier") or []
    first = identifiers[0] if identifiers else {}
    system, value = first.get("system"), first.get("value")
    if not system or not value:
        kind = resource.get("resourceType", "resource")
        what = "no identifier" if not identifiers else "an identifier without system or value"
        raise MappingError(f"{kind} has {what}: it could not be matched on the FHIR server")
    return str(system), str(value)


def _escape(text: str) -> str:
    """Escape a search token part (FHIR search: `\\`, `|`, `,` and `$` are special)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")


def search_token(resource: Mapping[str, Any]) -> str:
    """`system|value` of the match key, escaped for FHIR search and percent-encoded for a URL
    (patient IDs may hold `&`, `+`, `#` or spaces)."""
    system, value = match_key(resource)
    return quote(f"{_escape(system)}|{_escape(value)}", safe=":/|")


def study_token(study_uid: str, scope: str | None = None) -> str:
    """The match-key search token of the ImagingStudy of `study_uid` (in `scope`, if any),
    as the bundled mappings and `map_study` write it."""
    key = {"system": scope or "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}
    return search_token({"identifier": [key]})


def _shape(value: Any) -> Any:
    """The structure of a value without its content: keys and types, recursively."""
    if isinstance(value, dict):
        return tuple(sorted((k, _shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", frozenset(_shape(v) for v in value))
    return type(value).__name__


def validation_sample(study: dict[str, Any]) -> dict[str, Any]:
    """The ImagingStudy with each series' instances cut to one per distinct shape.

    Instance values come from converters that already enforce FHIR's types (OIDs, unsigned
    integers, non-empty strings), so what validation can still catch is structural, and one
    instance of each shape shows it. This keeps validation cost per study, not per instance.
    """
    series = study.get("series")
    if not isinstance(series, list):
        return study
    trimmed = []
    for item in series:
        instances = item.get("instance") if isinstance(item, dict) else None
        if isinstance(instances, list) and len(instances) > 1:
            shapes: dict[Any, Any] = {}
            for instance in instances:
                shapes.setdefault(_shape(instance), instance)
            item = {**item, "instance": list(shapes.values())}
        trimmed.append(item)
    return {**study, "series": trimmed}


def content_hash(*parts: Any) -> str:
    """A digest of mapped resources: equal digests mean nothing needs writing. Stored in
    the state DB, so its form must not change without a reason."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class MappedStudy:
    """The desired FHIR state of one study, before it meets the server's current state.

    `observations` (one per dose report) point at the Patient and ImagingStudy through
    `patient_placeholder` and `study_placeholder`, which the writer replaces by ids."""

    study_uid: str
    patient: dict[str, Any]
    imaging_study: dict[str, Any]
    patient_placeholder: str
    warnings: tuple[str, ...]
    observations: tuple[dict[str, Any], ...] = ()
    study_placeholder: str | None = None

    def digest(self, *extra: Any) -> str:
        """content_hash of what would be written (Observations only when there are some, so
        a study without any keeps the digest it always had)."""
        parts: list[Any] = [self.patient, self.imaging_study, *extra]
        if self.observations:
            parts.append(list(self.observations))
        return content_hash(*parts)


class Mappings:
    """The compiled mapping folder. Build it once at start-up; it is read-only afterwards."""

    def __init__(
        self,
        folder: Path,
        resources: Mapping[str, ResourceMapping],
        tables: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.folder = folder
        self.resources = dict(resources)
        self.tables = tables

    @classmethod
    def load(
        cls, folder: Path | None, config_keys: set[str], *, per_instance: bool = True
    ) -> Mappings:
        """Compile the folder; `per_instance=False` leaves out the per-instance files (dose
        Observations turned off)."""
        folder = folder or default_mapping_dir()
        if not folder.is_dir():
            raise MappingFileError(f"mapping folder {folder} does not exist")
        # The bundled files' element names are checked by the tests (on a copy), not at
        # each start: the check imports the FHIR models, 0.1 s a start-up.
        check = folder.resolve() != default_mapping_dir().resolve()
        tables = load_tables(folder / "tables")
        resources = {}
        for resource_type, name in RESOURCE_FILES.items():
            path = folder / name
            if not path.is_file():
                raise MappingFileError(f"{folder}: {name} is missing (maps {resource_type})")
            resources[resource_type] = compile_file(
                path, resource_type, tables, config_keys, check=check
            )
        for resource_type, name in INSTANCE_FILES.items() if per_instance else ():
            path = folder / name
            if path.is_file():
                mapping = compile_file(path, resource_type, tables, config_keys, check=check)
                if mapping.instances_of is None:
                    raise MappingFileError(f"{name}:1: instances_of: is missing")
                resources[resource_type] = mapping
        return cls(folder, resources, tables)

    def owned(self, resource_type: str) -> frozenset[str]:
        mapping = self.resources.get(resource_type)
        return mapping.owned if mapping else frozenset()

    def tags_read(self) -> frozenset[str]:
        """Every DICOM tag these mappings can read: a source may drop all others as it
        parses a study's metadata, which keeps large studies small in memory."""
        tags = set(VIEW_TAGS | TAGS_READ)  # TAGS_READ: what converters read inside items
        for mapping in self.resources.values():
            tags |= mapping.tags
        return frozenset(tags)

    def item_tags(self) -> frozenset[str]:
        """The tags the mappings read only inside items (sequence items, code items, SR
        content): a source that asks for attributes by name (C-FIND) asks for the others."""
        inside = set(ITEM_TAGS | TAGS_READ)
        for mapping in self.resources.values():
            inside |= mapping.item_tags
        top = set(VIEW_TAGS - ITEM_TAGS - TAGS_READ)
        for mapping in self.resources.values():
            top |= mapping.top_tags
        return frozenset(inside - top)

    def content_classes(self) -> frozenset[str]:
        """The SOP classes whose SR content tree a mapping reads: a source keeps the
        ContentSequence of these instances only (an image never pays for it)."""
        classes: set[str] = set()
        for mapping in self.resources.values():
            if mapping.reads_content and mapping.instances_of:
                classes |= mapping.instances_of
        return frozenset(classes)

    def _per_instance(self, study: StudyView, run: Run) -> tuple[dict[str, Any], ...]:
        """One resource per instance of the classes a per-instance file names. A resource
        that cannot be made is left out with a warning; the study is still written."""
        out: list[dict[str, Any]] = []
        for resource_type in INSTANCE_FILES:
            mapping = self.resources.get(resource_type)
            if mapping is None or not mapping.instances_of:
                continue
            for series in study.series:
                for instance in series.instances:
                    if text_value(instance.data, SOP_CLASS) not in mapping.instances_of:
                        continue
                    try:
                        built = self._build(resource_type, Scope(instance.data, study, series), run)
                        resource = checked(scrub(built, run.warnings), run.warnings)
                        match_key(resource)
                    except MappingError as exc:
                        run.warnings.append(
                            f"{mapping.file.name}: no {resource_type} for instance "
                            f"{instance.uid}: {exc}"
                        )
                        continue
                    out.append(resource)
        return tuple(out)

    def _run(self, config: Mapping[str, Any]) -> Run:
        return Run(ConvertContext(config=config, tables=self.tables))

    def _build(self, resource_type: str, scope: Scope, run: Run) -> dict[str, Any]:
        built = self.resources[resource_type].build(scope, run)
        if not isinstance(built, dict):
            raise MappingError(f"{resource_type} mapping produced nothing for this study")
        return built

    def map_study(
        self,
        study: StudyView,
        config: Mapping[str, Any],
        endpoint_ref: str | None,
        scope: str | None = None,
    ) -> MappedStudy:
        """Patient + ImagingStudy for a study; the ImagingStudy points at placeholders.

        `scope` names the namespace of a study whose UID is unique only there (a data
        partition): its match key becomes `scope|urn:oid:<uid>` in place of the
        `urn:dicom:uid` one, so the same UID in two partitions makes two ImagingStudies
        (`identifier=urn:oid:<uid>`, any system, still finds them all)."""
        one_patient(study.data)
        run = self._run(config)
        run.warnings.extend(study.warnings)
        view_scope = Scope(study.data, study)
        patient = scrub(self._build("Patient", view_scope, run), run.warnings)
        patient_ref = placeholder("Patient", search_token(patient))
        run.refs = {"Patient": patient_ref, **({"Endpoint": endpoint_ref} if endpoint_ref else {})}
        imaging_study = scrub(self._build("ImagingStudy", view_scope, run), run.warnings)
        if scope:
            # Not also `urn:dicom:uid|urn:oid:<uid>`: FHIR matches an identifier at any
            # position, so that one would make this study match the unscoped study's key.
            scoped = {"system": scope, "value": f"urn:oid:{study.uid}"}
            rest = imaging_study.get("identifier", [])
            imaging_study["identifier"] = [scoped] + [
                i for i in rest if i.get("system") != "urn:dicom:uid"
            ]
        match_key(imaging_study)
        patient = checked(patient, run.warnings)
        imaging_study = checked(imaging_study, run.warnings, validation_sample)
        study_ref = placeholder("ImagingStudy", search_token(imaging_study))
        run.refs = {**run.refs, "ImagingStudy": study_ref}
        observations = self._per_instance(study, run)
        return MappedStudy(
            study.uid,
            patient,
            imaging_study,
            patient_ref,
            tuple(dict.fromkeys(run.warnings)),
            observations,
            study_ref,
        )

    def map_endpoint(self, config: Mapping[str, Any], *, validate: bool = True) -> dict[str, Any]:
        """The source's Endpoint; `validate=False` leaves the R4B check to `check_endpoint`,
        for a caller that validates only what it writes (start-up need not load the models
        when the server holds the Endpoint already)."""
        run = self._run(config)
        endpoint = scrub(self._build("Endpoint", Scope({}), run), run.warnings)
        match_key(endpoint)
        return checked(endpoint, run.warnings) if validate else endpoint

    @staticmethod
    def check_endpoint(endpoint: dict[str, Any]) -> dict[str, Any]:
        return checked(endpoint, [])
