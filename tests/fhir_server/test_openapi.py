"""The OpenAPI document says what the server does: bodies, answers, errors and tokens.

tests/integration/test_fuzz_api.py runs Schemathesis over it against a real server; these
check the document itself against the declarations it is derived from.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from conformance.declaration import RESOURCE_TYPES
from conformance.operations import OPERATIONS
from fhir_server.app import create_app
from fhir_server.settings import Settings

OPEN = {
    "/healthz",
    "/readyz",
    "/fhir/metadata",
    "/fhir/SearchParameter/{sp_id}",
    "/fhir/OperationDefinition/{op_id}",
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("openapi")
    settings = Settings(database_url=f"sqlite:///{tmp}/openapi.db", key_file=tmp / "keys.json")
    with TestClient(create_app(settings)) as c:
        r = c.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, ops in doc["paths"].items() for m, op in ops.items()]


def test_every_fhir_route_but_the_open_ones_takes_a_bearer_token(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, method, op in operations(document):
        if not path.startswith("/fhir") or "/.well-known/" in path:
            continue
        wanted = None if path in OPEN else [{"bearer": []}]
        assert op.get("security") == wanted, (method, path)


def test_every_fhir_error_is_an_operation_outcome(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(document)  # FastAPI's 422: this server sends 400
    for path, method, op in operations(document):
        if path.startswith("/fhir") and "/.well-known/" not in path:
            schema = op["responses"]["default"]["content"]["application/fhir+json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/OperationOutcome"}, (method, path)
            successes = [s for s in op["responses"] if s != "default"]
            assert successes and all(s.startswith("2") for s in successes), (method, path)


def test_resource_types_are_the_served_ones(document: dict[str, Any]) -> None:
    read = document["paths"]["/fhir/{rtype}/{rid}"]["get"]
    rtype = next(p for p in read["parameters"] if p["name"] == "rtype")
    assert rtype["schema"]["enum"] == sorted(RESOURCE_TYPES)


def test_each_type_is_searched_by_the_parameters_it_declares(document: dict[str, Any]) -> None:
    assert "get" not in document["paths"]["/fhir/{rtype}"]
    for rtype, decl in RESOURCE_TYPES.items():
        search = document["paths"][f"/fhir/{rtype}"]["get"]
        names = [p["name"] for p in search["parameters"]]
        assert len(names) == len(set(names)), rtype
        assert {"_id", "_lastUpdated", "_count", "_sort", *decl.params} <= set(names), rtype


def test_operation_inputs_follow_their_declarations(document: dict[str, Any]) -> None:
    find = document["paths"]["/fhir/Appointment/$find"]
    query = {p["name"]: p["required"] for p in find["get"]["parameters"]}
    declared = OPERATIONS["appointment-find"].parameters
    assert query == {p.name: p.min > 0 for p in declared if p.type != "Patient"}
    for op_id, code in (
        ("appointment-find", "find"),
        ("appointment-hold", "hold"),
        ("appointment-book", "book"),
    ):
        post = document["paths"][f"/fhir/Appointment/${code}"]["post"]
        body = post["requestBody"]["content"]["application/fhir+json"]["schema"]
        items = body["properties"]["parameter"]["items"]["anyOf"]
        names = {n for item in items for n in item["properties"]["name"]["enum"]}
        assert names == {n for p in OPERATIONS[op_id].parameters for n in (p.name, *p.aliases)}
