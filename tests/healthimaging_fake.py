"""A faithful fake of the AWS HealthImaging API on a loopback port, for boto3 itself to
call with an endpoint override. Built from botocore's own service model for
`medical-imaging` (rest-json):
- `GET /datastore/{id}` (GetDatastore);
- `POST /datastore/{id}/searchImageSets?maxResults=&nextToken=` with the `searchCriteria`
  as the body (the model's payload member): at most 2 filters (`updatedAt`/`createdAt`
  BETWEEN, `DICOMStudyInstanceUID` EQUAL), `sort` by `updatedAt`/`createdAt`, timestamps
  as epoch seconds, pages of at most 50;
- `POST /datastore/{id}/imageSet/{id}/getImageSetMetadata`: the metadata JSON, gzipped,
  with `Content-Encoding: gzip`;
- `POST /datastore/{id}/imageSet/{id}/getImageSet`;
- errors as rest-json ones: `x-amzn-ErrorType` and a `message` body; ThrottlingException
  is HTTP 429, AccessDeniedException 403, ResourceNotFoundException 404.
Every request must be SigV4-signed for `medical-imaging` with the test credentials.

"Imports" turn DICOM datasets into image sets the way HealthImaging stores them: keyword
keyed, at the patient, study, series and instance levels, IS/DS as their padded text, PN
as plain text, empty values as null, private elements by tag with their VR in `DICOMVRs`.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydicom import Dataset
from pydicom.dataelem import DataElement

from tests.loopback import Answer, Loopback
from tests.sigv4 import MEDICAL_IMAGING, sigv4_refusal

PATIENT = frozenset(
    {"PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
     "OtherPatientIDsSequence", "IssuerOfPatientIDQualifiersSequence", "PatientBirthTime"}
)  # fmt: skip
STUDY = frozenset(
    {"StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
     "ReferringPhysicianName", "StudyDescription", "IssuerOfAccessionNumberSequence",
     "ProcedureCodeSequence"}
)  # fmt: skip
SERIES = frozenset(
    {"SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
     "Laterality", "SeriesDate", "SeriesTime"}
)  # fmt: skip
JSON = {"Content-Type": "application/json"}
NUMBERS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
BINARY = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})


def keyword_value(element: DataElement) -> Any:
    """An element's value as HealthImaging writes it."""
    value = element.value
    if element.VR == "SQ":
        return [keyword_dataset(item)[0] for item in value]
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return None
    if element.VR in BINARY:
        return base64.b64encode(bytes(value)).decode()
    values = list(value) if element.VM > 1 else [value]
    if element.VR in ("IS", "DS"):
        out: list[Any] = [getattr(v, "original_string", None) or str(v) for v in values]
    elif element.VR in NUMBERS:
        out = [v for v in values]
    else:
        out = [str(v) for v in values]
    return out if element.VM > 1 else out[0]


def keyword_dataset(dataset: Dataset) -> tuple[dict[str, Any], dict[str, str]]:
    """(keyword -> value, and the VRs of private elements)."""
    values: dict[str, Any] = {}
    vrs: dict[str, str] = {}
    for element in dataset:
        if element.tag.group == 0x0002 or element.tag == 0x7FE00010:
            continue
        name = element.keyword or f"{int(element.tag):08X}"
        if not element.keyword:
            vrs[name] = element.VR
        values[name] = keyword_value(element)
    return values, vrs


def image_set_metadata(datastore: str, image_set: str, datasets: list[Dataset]) -> dict[str, Any]:
    """The metadata document of one image set made of `datasets` (one study)."""
    patient: dict[str, Any] = {}
    study: dict[str, Any] = {}
    series: dict[str, Any] = {}
    for dataset in datasets:
        values, vrs = keyword_dataset(dataset)
        level = {k: v for k, v in values.items() if k not in PATIENT | STUDY | SERIES}
        patient.update({k: v for k, v in values.items() if k in PATIENT})
        study.update({k: v for k, v in values.items() if k in STUDY})
        one = series.setdefault(str(dataset.SeriesInstanceUID), {"DICOM": {}, "Instances": {}})
        one["DICOM"].update({k: v for k, v in values.items() if k in SERIES})
        one["Instances"][str(dataset.SOPInstanceUID)] = {
            "DICOM": level,
            "DICOMVRs": vrs,
            "StoredTransferSyntaxUID": "1.2.840.10008.1.2.4.202",
            "ImageFrames": [{"ID": uuid.uuid4().hex}],
        }
    return {
        "SchemaVersion": "1.1",
        "DatastoreID": datastore,
        "ImageSetID": image_set,
        "Patient": {"DICOM": patient},
        "Study": {"DICOM": study, "Series": series},
    }


class ImageSet:
    def __init__(self, image_set: str, document: dict[str, Any], primary: bool | None) -> None:
        self.id = image_set
        self.document = document
        self.version = 1
        self.created = self.updated = time.time()
        self.primary = primary
        self.deleted = False

    def summary(self) -> dict[str, Any]:
        study = self.document["Study"]["DICOM"]
        patient = self.document["Patient"]["DICOM"]
        tags = {
            "DICOMStudyInstanceUID": study.get("StudyInstanceUID"),
            "DICOMPatientId": patient.get("PatientID"),
            "DICOMStudyDate": study.get("StudyDate"),
            "DICOMNumberOfStudyRelatedInstances": sum(
                len(s["Instances"]) for s in self.document["Study"]["Series"].values()
            ),
        }
        summary: dict[str, Any] = {
            "imageSetId": self.id,
            "version": self.version,
            "createdAt": self.created,
            "updatedAt": self.updated,
            "DICOMTags": {k: v for k, v in tags.items() if v is not None},
        }
        if self.primary is not None:
            summary["isPrimary"] = self.primary
        return summary


class HealthImagingFake(Loopback):
    """One data store, served on a loopback port (`url` is the endpoint override)."""

    def __init__(self, datastore: str = "0123456789abcdef0123456789abcdef") -> None:
        super().__init__()
        self.datastore = datastore
        self.image_sets: dict[str, ImageSet] = {}
        self.calls: list[str] = []  # operation names, in order
        self.throttle_next = 0  # answer the next N calls with ThrottlingException
        self.denied: set[str] = set()  # operations answered with AccessDeniedException
        self.lock = threading.Lock()

    # --- what the scripted histories do

    def import_study(
        self, datasets: list[Dataset], *, primary: bool | None = True, at: float | None = None
    ) -> str:
        """An import job's result: one new image set of these instances."""
        image_set = uuid.uuid4().hex
        document = image_set_metadata(self.datastore, image_set, datasets)
        with self.lock:
            made = ImageSet(image_set, document, primary)
            if at is not None:
                made.created = made.updated = at
            self.image_sets[image_set] = made
        return image_set

    def update(self, image_set: str, level: str, changes: dict[str, Any]) -> None:
        """`UpdateImageSetMetadata`: a new version, at the study or patient level."""
        with self.lock:
            made = self.image_sets[image_set]
            made.document[level]["DICOM"].update(changes)
            made.version += 1
            made.updated = max(time.time(), made.updated + 0.001)

    def delete(self, image_set: str) -> None:
        with self.lock:
            self.image_sets[image_set].deleted = True

    # --- the API

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        url = urlsplit(target)
        parts = url.path.strip("/").split("/")
        operation = _operation(method, parts)
        with self.lock:
            self.calls.append(operation)
            refusal = sigv4_refusal(method, self.url + target, headers, body, MEDICAL_IMAGING)
            if refusal:
                return _error(403, "UnrecognizedClientException", refusal)
            if self.throttle_next:
                self.throttle_next -= 1
                return _error(429, "ThrottlingException", "Rate exceeded")
            if operation in self.denied:
                return _error(403, "AccessDeniedException", f"not allowed: {operation}")
            if len(parts) < 2 or parts[0] != "datastore" or parts[1] != self.datastore:
                return _error(404, "ResourceNotFoundException", "no such data store")
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            request = json.loads(body) if body else {}
            if operation == "GetDatastore":
                return _json(200, {"datastoreProperties": self._properties()})
            if operation == "SearchImageSets":
                return _json(200, self._search(request, query))  # the body is the criteria
            image_set = self.image_sets.get(parts[3]) if len(parts) > 3 else None
            if image_set is None or image_set.deleted:
                return _error(404, "ResourceNotFoundException", "no such image set")
            if operation == "GetImageSetMetadata":
                blob = gzip.compress(json.dumps(image_set.document).encode())
                return _answer(200, blob, **{"Content-Encoding": "gzip"})
            if operation == "GetImageSet":
                return _json(
                    200,
                    {
                        "datastoreId": self.datastore,
                        "imageSetId": image_set.id,
                        "versionId": str(image_set.version),
                        "imageSetState": "ACTIVE",
                        "createdAt": image_set.created,
                        "updatedAt": image_set.updated,
                    },
                )
            return _error(400, "ValidationException", f"{operation} is not faked")

    def _properties(self) -> dict[str, Any]:
        return {
            "datastoreId": self.datastore,
            "datastoreName": "hospital-imaging",
            "datastoreStatus": "ACTIVE",
            "createdAt": 1_700_000_000,
        }

    def _search(self, criteria: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        filters = criteria.get("filters") or []
        if len(filters) > 2:
            raise ValueError("at most 2 filters")
        found = [s for s in self.image_sets.values() if not s.deleted]
        for one in filters:
            found = [s for s in found if _matches(s, one)]
        sort = criteria.get("sort") or {}
        field = {"createdAt": "created"}.get(sort.get("sortField", ""), "updated")
        found.sort(key=lambda s: (getattr(s, field), s.id), reverse=sort.get("sortOrder") == "DESC")
        size = min(int(query.get("maxResults", 50)), 50)
        start = int(base64.b64decode(query["nextToken"])) if "nextToken" in query else 0
        page = found[start : start + size]
        answer: dict[str, Any] = {"imageSetsMetadataSummaries": [s.summary() for s in page]}
        if start + size < len(found):
            answer["nextToken"] = base64.b64encode(str(start + size).encode()).decode()
        return answer


def _matches(image_set: ImageSet, condition: dict[str, Any]) -> bool:
    values = condition.get("values") or []
    operator = condition.get("operator")
    if operator == "EQUAL" and len(values) == 1 and "DICOMStudyInstanceUID" in values[0]:
        study = image_set.document["Study"]["DICOM"].get("StudyInstanceUID")
        return bool(study == values[0]["DICOMStudyInstanceUID"])
    if operator == "BETWEEN" and len(values) == 2:
        (field,) = values[0]
        low, high = (_epoch(v[field]) for v in values)
        at = image_set.updated if field == "updatedAt" else image_set.created
        return low <= at <= high
    raise ValueError(f"unsupported filter {condition}")


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _operation(method: str, parts: list[str]) -> str:
    if method == "GET" and len(parts) == 2:
        return "GetDatastore"
    last = parts[-1] if parts else ""
    return last[:1].upper() + last[1:]


def _answer(status: int, body: bytes, **headers: str) -> Answer:
    """An answer as the service sends one: JSON, with a request id."""
    return status, {**JSON, "x-amzn-RequestId": uuid.uuid4().hex, **headers}, body


def _json(status: int, body: Any, **headers: str) -> Answer:
    return _answer(status, json.dumps(body).encode(), **headers)


def _error(status: int, code: str, message: str) -> Answer:
    kind = {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/"}
    return _json(status, {"message": message}, **kind)
