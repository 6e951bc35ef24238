"""/metadata is generated from the declaration and valid against the R4B models."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationdefinition import OperationDefinition
from fhir.resources.R4B.searchparameter import SearchParameter

from base.errors import BadRequest
from conformance.declaration import COMMON_PARAMS, CUSTOM_SEARCH_PARAMETERS, RESOURCE_TYPES
from conformance.operations import OPERATIONS, parse_operation


def test_capability_statement_matches_declaration(client: TestClient) -> None:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    body = r.json()
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.0.1"
    rest = body["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    served = {res["type"]: res for res in rest["resource"]}
    assert set(served) == {*RESOURCE_TYPES, "AuditEvent"}  # the log: read and search only
    for rtype, decl in RESOURCE_TYPES.items():
        res = served[rtype]
        assert [i["code"] for i in res["interaction"]] == list(decl.interactions)
        declared = {*decl.params, *COMMON_PARAMS}
        assert {p["name"] for p in res["searchParam"]} == declared
        for p in res["searchParam"]:
            assert p["definition"].startswith(("http://hl7.org/fhir/SearchParameter/", "urn:"))
    slot_end = next(p for p in served["Slot"]["searchParam"] if p["name"] == "end")
    assert slot_end["type"] == "date"
    assert "Slot:schedule" in served["Slot"]["searchInclude"]
    assert "Slot:schedule" in served["Schedule"]["searchRevInclude"]


def test_custom_search_parameter_is_served(client: TestClient) -> None:
    for sp_id, (base, param) in CUSTOM_SEARCH_PARAMETERS.items():
        r = client.get(f"/fhir/SearchParameter/{sp_id}")
        assert r.status_code == 200
        sp = r.json()
        SearchParameter.model_validate(sp)
        assert sp["url"] == param.url
        assert sp["base"] == [base]
        assert sp["code"] == param.name
    assert client.get("/fhir/SearchParameter/nope").status_code == 404


def test_operations_are_declared_served_and_listed(client: TestClient) -> None:
    body = client.get("/fhir/metadata").json()
    appointment = next(r for r in body["rest"][0]["resource"] if r["type"] == "Appointment")
    listed = {o["name"]: o["definition"] for o in appointment["operation"]}
    assert listed == {op.code: op.url for op in OPERATIONS.values()}
    for op_id, op in OPERATIONS.items():
        r = client.get(f"/fhir/OperationDefinition/{op_id}")
        assert r.status_code == 200
        OperationDefinition.model_validate(r.json())
        assert r.json()["url"] == op.url
        names = {p["name"] for p in r.json()["parameter"] if p["use"] == "in"}
        assert names == {p.name for p in op.parameters}
        assert not any(alias in names for p in op.parameters for alias in p.aliases)
    assert client.get("/fhir/OperationDefinition/nope").status_code == 404


def test_operation_input_follows_its_declaration() -> None:
    find = OPERATIONS["appointment-find"]
    got = parse_operation(
        find,
        [
            ("startTime", "a"),
            ("end", "b"),
            ("appt-type", "v"),
            ("provider", "x"),
            ("provider", "y"),
        ],
    )
    assert got == {"start": ["a"], "end": ["b"], "visit-type": ["v"], "practitioner": ["x", "y"]}
    with pytest.raises(BadRequest, match="once"):
        parse_operation(find, [("start", "a"), ("start", "b"), ("end", "c"), ("visit-type", "v")])
    with pytest.raises(BadRequest, match="needs end"):
        parse_operation(find, [("start", "a"), ("visit-type", "v")])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("start", 5),
        ("visit-type", {"system": "urn:x"}),
        ("practitioner", {"display": "Dr. Smith"}),
        ("_count", True),
        ("_count", 2.5),
        ("patient-resource", "Patient/1"),
        ("patient-resource", {"resourceType": "Appointment"}),
    ],
    ids=[
        "number",
        "coding-without-code",
        "reference-without-reference",
        "bool",
        "float",
        "text-for-resource",
        "other-resource",
    ],
)
def test_operation_input_values_have_their_declared_types(name: str, value: object) -> None:
    find = OPERATIONS["appointment-find"]
    base = [("start", "a"), ("end", "b"), ("visit-type", "v")]
    assert parse_operation(find, [*base, ("_count", 3)])["_count"] == [3]  # valueInteger
    with pytest.raises(BadRequest, match=f"takes {name} as a") as refused:
        parse_operation(find, [*[p for p in base if p[0] != name], (name, value)])
    assert refused.value.expression == [name]
