"""ImagingStudy.basedOn: the accession's order, resolved when the server has it, added to
what an order system wrote and never in its place."""

from __future__ import annotations

from typing import Any

from dicomcast.fhir.orders import Orders

LOGICAL = {
    "type": "ServiceRequest",
    "identifier": {"system": "urn:oid:1.2.3", "value": "ACC1"},
}
STUDY: dict[str, Any] = {"resourceType": "ImagingStudy", "basedOn": [LOGICAL]}


def searcher(found: list[dict[str, Any]], calls: list[str]) -> Any:
    def search(query: str) -> list[dict[str, Any]]:
        calls.append(query)
        return found

    return search


def test_an_order_on_the_server_becomes_a_literal_reference_once_searched() -> None:
    calls: list[str] = []
    orders = Orders("resolve", searcher([{"id": "sr1"}], calls))
    assert orders.apply(STUDY, None)["basedOn"] == [{**LOGICAL, "reference": "ServiceRequest/sr1"}]
    orders.apply(STUDY, None)
    assert calls == ["ServiceRequest?identifier=urn:oid:1.2.3|ACC1"]  # the hit is cached


def test_no_or_several_orders_leave_the_logical_reference() -> None:
    for found in ([], [{"id": "a"}, {"id": "b"}]):
        orders = Orders("resolve", searcher(found, []))
        assert orders.apply(STUDY, None)["basedOn"] == [LOGICAL]


def test_an_order_systems_references_are_kept_and_ours_upgraded() -> None:
    theirs = {"reference": "ServiceRequest/from-ris"}
    current = {"basedOn": [theirs, LOGICAL]}  # our logical entry from an earlier write
    orders = Orders("resolve", searcher([{"id": "sr1"}], []))
    assert orders.apply(STUDY, current)["basedOn"] == [
        theirs,
        {**LOGICAL, "reference": "ServiceRequest/sr1"},
    ]


def test_identifier_and_off_modes() -> None:
    calls: list[str] = []
    assert Orders("identifier", searcher([{"id": "x"}], calls)).apply(STUDY, None)["basedOn"] == [
        LOGICAL
    ]
    assert calls == []
    assert "basedOn" not in Orders("off", searcher([], calls)).apply(STUDY, None)
    kept = Orders("off", searcher([], calls)).apply(STUDY, {"basedOn": [{"reference": "X/1"}]})
    assert kept["basedOn"] == [{"reference": "X/1"}]
