"""The OpenAPI document says what the server does: bodies, answers, errors and tokens.

tests/integration/test_fuzz_api.py runs Schemathesis over it against a real server; these
check the document itself against the declarations it is derived from.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from conformance.declaration import RESOURCE_TYPES
from conformance.operations import OPERATIONS
from fhir_server.app import create_app
from fhir_server.openapi_operations import operation_examples, parameters_schema
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


def test_every_fhir_route_but_the_open_ones_takes_a_token(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, method, op in operations(document):
        if not path.startswith("/fhir") or "/.well-known/" in path:
            continue
        wanted = None if path in OPEN else [{"smart": []}, {"bearer": []}]
        assert op.get("security") == wanted, (method, path)


def test_the_smart_scheme_names_this_servers_endpoints_and_scopes(
    document: dict[str, Any],
) -> None:
    smart = document["components"]["securitySchemes"]["smart"]
    assert smart["type"] == "oauth2"
    assert "PKCE" in smart["description"] and "S256" in smart["description"]
    code = smart["flows"]["authorizationCode"]
    backend = smart["flows"]["clientCredentials"]
    assert code["authorizationUrl"] == "http://127.0.0.1:8080/auth/authorize"
    assert code["tokenUrl"] == code["refreshUrl"] == backend["tokenUrl"]
    assert backend["tokenUrl"] == "http://127.0.0.1:8080/auth/token"
    assert {"openid", "fhirUser", "launch/patient", "offline_access"} <= set(code["scopes"])
    assert {"patient/*.rs", "user/*.cruds", "user/Appointment.$book"} <= set(code["scopes"])
    assert {"system/*.rs", "system/*.cruds", "system/Appointment.$find"} <= set(backend["scopes"])
    assert not any(s.startswith("system/") for s in code["scopes"])
    assert all(s.startswith("system/") for s in backend["scopes"])
    assert backend["scopes"]["system/Appointment.$book"].startswith("Book or cancel")


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
    for op_id, code, component in (
        ("appointment-find", "find", "AppointmentFindParameters"),
        ("appointment-hold", "hold", "AppointmentHoldParameters"),
        ("appointment-book", "book", "AppointmentBookParameters"),
    ):
        post = document["paths"][f"/fhir/Appointment/${code}"]["post"]
        content = post["requestBody"]["content"]["application/fhir+json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{component}"}
        body = document["components"]["schemas"][component]
        assert body["properties"]["resourceType"] == {"const": "Parameters"}
        items = body["properties"]["parameter"]["items"]["anyOf"]
        names = {n for item in items for n in item["properties"]["name"]["enum"]}
        declared = OPERATIONS[op_id].parameters
        assert names == {n for p in declared for n in (p.name, *p.aliases)}
        assert [item["title"] for item in items] == [p.name for p in declared]
        musts = body["properties"]["parameter"].get("allOf", [])
        required = [m["contains"]["properties"]["name"]["enum"][0] for m in musts]
        assert required == [p.name for p in declared if p.min > 0], op_id
        validator = jsonschema_rs.validator_for(body)
        assert validator.is_valid(content["example"]), op_id


def test_a_parameters_schema_refuses_what_its_operation_refuses() -> None:
    find = jsonschema_rs.validator_for(parameters_schema(OPERATIONS["appointment-find"]))
    example = operation_examples(date(2026, 12, 7))["appointment-find"]
    assert find.is_valid(example)
    assert example["parameter"][0]["valueDateTime"] == "2026-12-07T08:00:00+00:00"
    without_end = [p for p in example["parameter"] if p["name"] != "end"]
    assert not find.is_valid({**example, "parameter": without_end})
    by_alias = [{**p, "name": "endTime"} if p["name"] == "end" else p for p in example["parameter"]]
    assert find.is_valid({**example, "parameter": by_alias})
    unknown = [*example["parameter"], {"name": "colour", "valueString": "blue"}]
    assert not find.is_valid({**example, "parameter": unknown})
    assert not find.is_valid({"resourceType": "Appointment"})
