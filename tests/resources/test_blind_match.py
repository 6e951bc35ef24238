"""``blind_match`` finds what the search engine finds, and ``match_patient`` picks by it, on both
databases."""

from __future__ import annotations

from typing import Any

import pytest

from resources import service
from resources.search.lookup import blind_match
from resources.sql.engine import Database
from resources.store import Store
from scheduling.calendar_reads import match_patient
from tests.builders import make_patient

PEOPLE: dict[str, dict[str, Any]] = {
    "p1": make_patient("Smith", ["John"], birth="1980-05-02", mrn="A1"),
    "p2": make_patient("Smith", ["Jane"], birth="1980-05-02", mrn="A2"),  # same name and birth
    "p3": make_patient("Smithers", ["Ann"], birth="1975", mrn="A3"),  # a year only
    "p4": {  # no system on the identifier; a second one shared with p5
        **make_patient("Jones", birth="1990-01-31"),
        "identifier": [{"value": "NOSYS-1"}, {"system": "urn:shared", "value": "S-1"}],
    },
    "p5": {
        **make_patient("Jonas", birth="1990-01-31"),
        "identifier": [{"system": "urn:shared", "value": "S-1"}],
    },
    "p6": make_patient("Gone", birth="2001-02-03", mrn="A6"),  # deleted below
    "p7": make_patient("Müller", ["Zoë"], birth="1966-06-06", mrn="A,7"),  # a comma in the value
}

SEARCHES: list[list[tuple[str, str]]] = [
    [("identifier", "urn:mrn|A1")],
    [("identifier", "A1")],  # any system
    [("identifier", "|NOSYS-1")],  # no system
    [("identifier", "|A1")],  # A1 has a system: no match
    [("identifier", "urn:shared|S-1")],  # two Patients
    [("identifier", "urn:mrn|")],  # a system only: every MRN
    [("identifier", "urn:mrn|A6")],  # deleted
    [("identifier", "urn:mrn|nobody")],
    [("family:exact", "Smith"), ("birthdate", "1980-05-02")],  # two Patients
    [("family:exact", "Smithers"), ("birthdate", "1975")],
    [("family:exact", "Smithers"), ("birthdate", "1975-03-01")],  # a year is not that day
    [("family", "Smith")],  # a prefix: Smith and Smithers
    [("family:exact", "Müller"), ("birthdate", "1966-06-06")],
    [("family:exact", "Jones"), ("birthdate", "ge1990-01-01")],  # a range of days
    [("family:exact", "smith"), ("birthdate", "1980-05-02")],  # exact is case-sensitive
    [("given", "Ja"), ("family", "smi")],
]


@pytest.fixture
def people(db: Database, store: Store) -> Database:
    with db.write() as conn:
        for rid, patient in PEOPLE.items():
            service.update(
                conn,
                store=store,
                resource_type="Patient",
                resource_id=rid,
                resource={**patient, "id": rid},
            )
        service.delete(conn, store=store, resource_type="Patient", resource_id="p6")
    return db


def engine_ids(db: Database, store: Store, terms: list[tuple[str, str]]) -> list[str]:
    with db.read() as conn:
        _, result = service.search(
            conn, store=store, resource_type="Patient", params=[*terms, ("_count", "10")]
        )
    return sorted(m.res_id for m in result.matches)


def test_each_search_finds_what_the_search_engine_finds(people: Database, store: Store) -> None:
    with people.read() as conn:
        found = blind_match(conn, store.keys, "Patient", SEARCHES, limit=10)
    expected = [engine_ids(people, store, terms) for terms in SEARCHES]
    assert [sorted(ids) for ids in found] == expected
    # and the cases say what they should: shared values, deletions, absent values
    by_search = dict(zip(map(repr, SEARCHES), found, strict=True))
    assert sorted(by_search[repr([("identifier", "urn:shared|S-1")])]) == ["p4", "p5"]
    assert by_search[repr([("identifier", "urn:mrn|A6")])] == []
    assert sorted(by_search[repr([("family", "Smith")])]) == ["p1", "p2", "p3"]


def test_a_value_is_taken_as_it_is(people: Database, store: Store) -> None:
    """The search engine splits ``A,7`` into two values; a matcher given an identifier must not."""
    with people.read() as conn:
        [found] = blind_match(conn, store.keys, "Patient", [[("identifier", "urn:mrn|A,7")]])
    assert found == ["p7"]


def test_limit_caps_each_search(people: Database, store: Store) -> None:
    with people.read() as conn:
        [found] = blind_match(conn, store.keys, "Patient", [[("identifier", "urn:mrn|")]], limit=2)
    assert len(found) == 2


def test_only_phi_parameters(people: Database, store: Store) -> None:
    with people.read() as conn, pytest.raises(ValueError, match="gender"):
        blind_match(conn, store.keys, "Patient", [[("gender", "female")]])


@pytest.mark.parametrize(
    ("described", "expected"),
    [
        (make_patient("Someone", birth="1999-09-09", mrn="A1"), "p1"),  # the identifier wins
        (make_patient("Smithers", birth="1975", mrn="unknown"), "p3"),  # then name and birth
        (make_patient("Smith", birth="1980-05-02", mrn="unknown"), None),  # two: no match
        (make_patient("Smith", birth="1980-05-02", mrn="A2"), "p2"),  # the identifier decides
        ({**make_patient("Jonas", birth="1990-01-31"), "identifier": [{"value": "S-1"}]}, "p5"),
        (make_patient("Gone", birth="2001-02-03", mrn="A6"), None),  # deleted
        (make_patient("Gone", birth=None), None),  # no birth date: no name search
        (None, None),
    ],
    ids=[
        "identifier",
        "name-birth",
        "ambiguous",
        "identifier-first",
        "shared-id",
        "deleted",
        "no-birth",
        "none",
    ],
)
def test_match_patient(
    people: Database, store: Store, described: dict[str, Any] | None, expected: str | None
) -> None:
    with people.read() as conn:
        assert match_patient(conn, store, described) == expected
