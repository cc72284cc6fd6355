"""Bad input never crashes: malformed change-feed answers and entries, and DICOM JSON of any
shape (property-based) through study building and the mappings. The only way out besides
success is a typed error that names what is wrong."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomcast.app import load_mappings, mapping_config
from dicomcast.config import SourceSettings, load_settings
from dicomcast.errors import SourceUnavailable, StudyError
from dicomcast.mapping.mapper import Mappings
from dicomcast.sandbox.samples import DEMO_ISSUERS, demo_studies
from dicomcast.sources.orthanc import OrthancSource
from dicomcast.studyview import build_study_views
from tests.fakes import dicom_json

SETTINGS = load_settings(
    None,
    patient_id_system="urn:oid:1.2.3",
    issuer_systems=DEMO_ISSUERS,
    source_url="http://dicom.test",
    http_retries=1,
)
MAPPINGS: Mappings = load_mappings(SETTINGS)
CONFIG = mapping_config(SETTINGS)
BASE = dicom_json(demo_studies()[0])[:2]
TAGS = sorted({tag for instance in BASE for tag in instance})


def orthanc(answers: dict[str, Any], seen: list[str]) -> OrthancSource:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path in answers:
            return httpx.Response(200, json=answers[request.url.path])
        return httpx.Response(404)

    settings = SourceSettings(
        name="o", kind="orthanc", url="http://o.test", public_url="http://o.test/dicom-web"
    )
    return OrthancSource(settings, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    "page",
    [[], "text", {"Changes": "nope", "Last": 3}, {"Changes": [], "Last": "x"}, {"Changes": []}],
)
def test_a_malformed_feed_page_is_a_retriable_error(page: Any) -> None:
    with pytest.raises(SourceUnavailable):
        orthanc({"/changes": page}, []).read_changes("0", 10)


def test_malformed_change_entries_are_skipped_and_the_cursor_moves_past_them() -> None:
    seen: list[str] = []
    changes: list[Any] = [
        None,
        "text",
        {"Seq": "x", "ChangeType": "StableStudy", "ResourceType": "Study", "ID": "a"},
        {"Seq": -4, "ChangeType": "StableStudy", "ResourceType": "Study", "ID": "b"},
        {"Seq": 5, "ChangeType": "NewInstance", "ResourceType": "Instance", "ID": "../system"},
        {"Seq": 6, "ChangeType": "NewInstance", "ResourceType": "Instance", "ID": 42},
        {"Seq": 7, "ChangeType": "NewSeries", "ResourceType": "Series", "ID": "s-odd"},
        {"Seq": 8, "ChangeType": "StableStudy", "ResourceType": "Study", "ID": "ok", "Date": 3},
        {"Seq": True, "ChangeType": "StableStudy", "ResourceType": "Study", "ID": "c"},
    ]
    answers = {"/changes": {"Changes": changes, "Last": 9, "Done": True}}
    page = orthanc(answers, seen).read_changes("4", 100)
    assert [(m.study_key, m.event_time) for m in page.marks] == [("ok", None)]
    assert page.cursor == "9" and page.changes_read == 7
    assert not any("system" in path for path in seen)  # an ID never becomes a path


VRS = ["PN", "DA", "TM", "DT", "UI", "CS", "LO", "SH", "IS", "DS", "US", "SQ", "XX", 3, None]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["19600101", "2026-11-23", "1.2.840.10008.1", "^^^^", "DOE^JOHN=山田", ""]),
)
ELEMENT_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["Alphabetic", "vr", "Value", *TAGS[:6]]), inner),
    ),
    max_leaves=12,
)
ELEMENTS = st.one_of(
    ELEMENT_VALUES,
    st.fixed_dictionaries(
        {"vr": st.sampled_from(VRS)},
        optional={"Value": ELEMENT_VALUES, "InlineBinary": st.text(max_size=8)},
    ),
)


@st.composite
def mangled_instances(draw: st.DrawFn) -> list[Any]:
    """The demo study's instances with some elements replaced by anything at all."""
    instances: list[Any] = []
    for base in BASE:
        instance = dict(base)
        for tag in draw(st.lists(st.sampled_from(TAGS), max_size=8, unique=True)):
            if draw(st.booleans()):
                instance[tag] = draw(ELEMENTS)
            else:
                instance.pop(tag, None)
        instances.append(instance)
    instances.extend(draw(st.lists(ELEMENT_VALUES, max_size=2)))  # not even objects
    return instances


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(mangled_instances())
def test_any_dicom_json_maps_or_is_refused_with_a_reason(instances: list[Any]) -> None:
    views, orphans = build_study_views(instances)
    assert all(isinstance(o, str) and o for o in orphans)
    for view in views:
        try:
            mapped = MAPPINGS.map_study(view, CONFIG, "Endpoint/e")
        except StudyError as exc:
            assert str(exc)  # refused, and says why
        else:
            assert mapped.imaging_study["resourceType"] == "ImagingStudy"
            assert all(isinstance(w, str) for w in mapped.warnings)
