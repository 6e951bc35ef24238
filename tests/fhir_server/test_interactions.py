"""REST interactions (https://hl7.org/fhir/R4/http.html) on every served type and backend."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.builders import FHIR_JSON, MINIMAL, create, make_patient

TYPES = sorted(MINIMAL)


@pytest.mark.parametrize("rtype", TYPES)
def test_create_read_update_delete_every_type(client: TestClient, rtype: str) -> None:
    body = copy.deepcopy(MINIMAL[rtype])
    body["id"] = "client-chosen"  # ignored on create
    r = client.post(f"/fhir/{rtype}", json=body, headers=FHIR_JSON)
    assert r.status_code == 201
    created = r.json()
    rid = created["id"]
    assert rid != "client-chosen"
    assert r.headers["location"] == f"http://testserver/fhir/{rtype}/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert created["meta"]["versionId"] == "1"

    read = client.get(f"/fhir/{rtype}/{rid}")
    assert read.status_code == 200
    assert read.headers["content-type"].startswith("application/fhir+json")
    assert read.json() == created

    changed = {**created, "meta": {}}
    changed["language"] = "en"
    upd = client.put(f"/fhir/{rtype}/{rid}", json=changed, headers=FHIR_JSON)
    assert upd.status_code == 200
    assert upd.headers["etag"] == 'W/"2"'
    assert client.get(f"/fhir/{rtype}/{rid}").json()["language"] == "en"
    assert client.get(f"/fhir/{rtype}/{rid}/_history/1").json().get("language") is None

    assert client.delete(f"/fhir/{rtype}/{rid}").status_code == 204
    gone = client.get(f"/fhir/{rtype}/{rid}")
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
    history = client.get(f"/fhir/{rtype}/{rid}/_history").json()
    assert [e["response"]["status"] for e in history["entry"]] == ["204", "200", "201"]
    assert client.get(f"/fhir/{rtype}/{rid}/_history/2").json()["language"] == "en"


def test_update_as_create_with_client_id(client: TestClient) -> None:
    r = client.put(
        "/fhir/Patient/mine-1", json={**make_patient(), "id": "mine-1"}, headers=FHIR_JSON
    )
    assert r.status_code == 201
    assert r.json()["id"] == "mine-1"
    assert r.headers["location"].endswith("/Patient/mine-1/_history/1")


def test_update_after_delete_recreates(client: TestClient) -> None:
    p = create(client, make_patient())
    client.delete(f"/fhir/Patient/{p['id']}")
    r = client.put(f"/fhir/Patient/{p['id']}", json=p, headers=FHIR_JSON)
    assert r.status_code == 201
    assert r.json()["meta"]["versionId"] == "3"


@pytest.mark.parametrize(
    ("if_match", "status"),
    [('W/"1"', 200), ('W/"2"', 412), ('"1"', 200), ("garbage", 400)],
    ids=["match", "stale", "strong-form", "malformed"],
)
def test_if_match(client: TestClient, if_match: str, status: int) -> None:
    p = create(client, make_patient())
    r = client.put(f"/fhir/Patient/{p['id']}", json=p, headers={**FHIR_JSON, "if-match": if_match})
    assert r.status_code == status
    if status != 200:
        assert r.json()["resourceType"] == "OperationOutcome"
        assert client.get(f"/fhir/Patient/{p['id']}").json()["meta"]["versionId"] == "1"


def test_update_id_mismatch_is_400(client: TestClient) -> None:
    p = create(client, make_patient())
    r = client.put(f"/fhir/Patient/{p['id']}", json={**p, "id": "other"}, headers=FHIR_JSON)
    assert r.status_code == 400
    assert "does not match" in r.json()["issue"][0]["diagnostics"]


def test_conditional_create(client: TestClient) -> None:
    cond = {"if-none-exist": "identifier=urn:mrn|M-1"}
    first = client.post(
        "/fhir/Patient", json=make_patient(mrn="M-1"), headers={**FHIR_JSON, **cond}
    )
    assert first.status_code == 201
    again = client.post(
        "/fhir/Patient", json=make_patient(mrn="M-1"), headers={**FHIR_JSON, **cond}
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    create(client, make_patient(mrn="M-2"))
    create(client, make_patient(mrn="M-2"))
    several = client.post(
        "/fhir/Patient",
        json=make_patient(mrn="M-2"),
        headers={**FHIR_JSON, "if-none-exist": "identifier=urn:mrn|M-2"},
    )
    assert several.status_code == 412
    total = client.get("/fhir/Patient", params={"_summary": "count"}).json()["total"]
    assert total == 3


def test_conditional_update(client: TestClient) -> None:
    url = "/fhir/Patient?identifier=urn:mrn|C-1"
    made = client.put(url, json=make_patient("Alpha", mrn="C-1"), headers=FHIR_JSON)
    assert made.status_code == 201
    updated = client.put(url, json=make_patient("Beta", mrn="C-1"), headers=FHIR_JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == made.json()["id"]
    assert updated.json()["name"][0]["family"] == "Beta"
    create(client, make_patient(mrn="C-2"))
    create(client, make_patient(mrn="C-2"))
    many = client.put(
        "/fhir/Patient?identifier=urn:mrn|C-2", json=make_patient(mrn="C-2"), headers=FHIR_JSON
    )
    assert many.status_code == 412


PATCH = {"content-type": "application/json-patch+json"}


def test_json_patch_with_test_op(client: TestClient) -> None:
    p = create(client, make_patient("Smith"))
    ops = [
        {"op": "test", "path": "/name/0/family", "value": "Smith"},
        {"op": "replace", "path": "/name/0/family", "value": "Smythe"},
        {"op": "add", "path": "/gender", "value": "female"},
    ]
    r = client.patch(f"/fhir/Patient/{p['id']}", json=ops, headers=PATCH)
    assert r.status_code == 200
    assert r.json()["name"][0]["family"] == "Smythe"
    assert r.json()["gender"] == "female"
    assert r.json()["meta"]["versionId"] == "2"


@pytest.mark.parametrize(
    ("ops", "status"),
    [
        ([{"op": "test", "path": "/name/0/family", "value": "Nope"}], 422),
        ([{"op": "replace", "path": "/birthDate", "value": "soon"}], 422),
        ([{"op": "add", "path": "/gender", "value": "banana"}], 422),
        ([{"op": "replace", "path": "/id", "value": "x"}], 422),
        ([{"op": "remove", "path": "/nothing/here"}], 422),
        ([{"op": "explode", "path": "/gender"}], 400),
        ({"op": "replace"}, 400),
    ],
    ids=[
        "test-fails",
        "invalid-result",
        "bad-code",
        "changes-id",
        "bad-path",
        "unknown-op",
        "not-array",
    ],
)
def test_json_patch_failures(client: TestClient, ops: Any, status: int) -> None:
    p = create(client, make_patient("Smith"))
    r = client.patch(f"/fhir/Patient/{p['id']}", json=ops, headers=PATCH)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{p['id']}").json()["meta"]["versionId"] == "1"


def test_patch_requires_patch_media_type(client: TestClient) -> None:
    p = create(client, make_patient())
    r = client.patch(f"/fhir/Patient/{p['id']}", json=[], headers=FHIR_JSON)
    assert r.status_code == 415


@pytest.mark.parametrize(
    ("prefer", "check"),
    [
        ("return=minimal", lambda r: r.content == b""),
        ("return=representation", lambda r: r.json()["resourceType"] == "Patient"),
        ("return=OperationOutcome", lambda r: r.json()["resourceType"] == "OperationOutcome"),
    ],
    ids=["minimal", "representation", "outcome"],
)
def test_prefer_return(client: TestClient, prefer: str, check: Any) -> None:
    r = client.post("/fhir/Patient", json=make_patient(), headers={**FHIR_JSON, "prefer": prefer})
    assert r.status_code == 201
    assert r.headers["location"]
    assert check(r)
    rid = r.headers["location"].split("/")[-3]
    upd = client.put(
        f"/fhir/Patient/{rid}",
        json={**make_patient("New"), "id": rid},
        headers={**FHIR_JSON, "prefer": prefer},
    )
    assert upd.status_code == 200
    assert check(upd)


def test_history_paging_and_since(client: TestClient) -> None:
    p = create(client, make_patient("V1"))
    for n in range(2, 6):
        client.put(
            f"/fhir/Patient/{p['id']}",
            json={**make_patient(f"V{n}"), "id": p["id"]},
            headers=FHIR_JSON,
        )
    other = create(client, make_patient("Other"))
    seen: list[str] = []
    url: str | None = f"/fhir/Patient/{p['id']}/_history?_count=2"
    while url:
        page = client.get(url.replace("http://testserver", "")).json()
        assert len(page.get("entry", [])) <= 2
        seen += [e["resource"]["meta"]["versionId"] for e in page.get("entry", [])]
        url = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
    assert seen == ["5", "4", "3", "2", "1"]
    type_hist = client.get("/fhir/Patient/_history").json()
    assert len(type_hist["entry"]) == 6
    since = other["meta"]["lastUpdated"]
    recent = client.get("/fhir/Patient/_history", params={"_since": since}).json()
    assert [e["resource"]["id"] for e in recent["entry"]] == [other["id"]]


def test_search_get_and_post_agree(client: TestClient) -> None:
    for family in ("Adams", "Adamson", "Baker"):
        create(client, make_patient(family))
    got = client.get("/fhir/Patient", params={"family": "adam"}).json()
    posted = client.post(
        "/fhir/Patient/_search",
        data={"family": "adam"},
        headers={"content-type": "application/x-www-form-urlencoded"},
    ).json()
    assert got["total"] == posted["total"] == 2
    ids = lambda b: sorted(e["resource"]["id"] for e in b["entry"])  # noqa: E731
    assert ids(got) == ids(posted)


def test_vread_unknown_version_is_404(client: TestClient) -> None:
    p = create(client, make_patient())
    assert client.get(f"/fhir/Patient/{p['id']}/_history/9").status_code == 404
    assert client.get(f"/fhir/Patient/{p['id']}/_history/x").status_code == 404
