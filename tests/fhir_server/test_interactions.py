"""REST interactions on every served type, on SQLite and PostgreSQL.

See https://hl7.org/fhir/R4/http.html: create, conditional create, read, vread, update (and
update-as-create), conditional update, JSON Patch, delete, history, search by GET and POST, and
the ``Prefer: return=`` header.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.builders import FHIR_JSON, MINIMAL, create, make_patient

BASE = "http://testserver/fhir"
TYPES = sorted(MINIMAL)
PATCH_JSON = {"content-type": "application/json-patch+json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


# -- builders and helpers ------------------------------------------------------------------------
def minimal(rtype: str, **extra: Any) -> dict[str, Any]:
    """A fresh copy of the minimal valid resource of ``rtype`` with ``extra`` elements."""
    return {**copy.deepcopy(MINIMAL[rtype]), **extra}


def with_id(resource: dict[str, Any], rid: str) -> dict[str, Any]:
    return {**copy.deepcopy(resource), "id": rid}


def make_patient_with_id(family: str, rid: str) -> dict[str, Any]:
    return with_id(make_patient(family), rid)


def put(
    client: TestClient,
    url: str,
    resource: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.put(url, json=resource, headers={**FHIR_JSON, **(headers or {})})


def patch(
    client: TestClient,
    url: str,
    ops: list[dict[str, Any]],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.patch(url, json=ops, headers={**PATCH_JSON, **(headers or {})})


def version_of(client: TestClient, rtype: str, rid: str) -> str:
    r = client.get(f"/fhir/{rtype}/{rid}")
    assert r.status_code == 200, r.text
    return str(r.json()["meta"]["versionId"])


def count(client: TestClient, rtype: str, **params: str) -> int:
    r = client.get(f"/fhir/{rtype}", params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    total: int = r.json()["total"]
    return total


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((ln["url"] for ln in bundle["link"] if ln["relation"] == "next"), None)


def follow(client: TestClient, url: str) -> tuple[list[dict[str, Any]], int]:
    """Every entry reached by following ``next`` links from ``url``, and the page count."""
    entries: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        r = client.get(next_url)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        assert pages < 50, "next links never end"
        entries += page.get("entry", [])
        next_url = next_link(page)
    return entries, pages


def history_keys(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(id, versionId) for each history entry, taken from the entry itself."""
    keys = []
    for e in entries:
        rid = e["fullUrl"].rsplit("/", 1)[-1]
        version = e["response"]["etag"].removeprefix('W/"').removesuffix('"')
        keys.append((rid, version))
    return keys


# -- create, read, vread ---------------------------------------------------------------------------
@pytest.mark.parametrize("rtype", TYPES, ids=TYPES)
def test_create_assigns_id_and_returns_location_and_etag(client: TestClient, rtype: str) -> None:
    r = client.post(f"/fhir/{rtype}", json=minimal(rtype, id="client-id"), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    body = r.json()
    rid = body["id"]
    assert rid != "client-id"  # POST ignores a client id: the server assigns one
    assert body["resourceType"] == rtype
    assert r.headers["location"] == f"{BASE}/{rtype}/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert body["meta"]["versionId"] == "1"
    assert parsedate_to_datetime(r.headers["last-modified"]).tzinfo is not None
    assert r.headers["content-type"].startswith("application/fhir+json")
    # what was sent comes back, plus id and meta
    sent = minimal(rtype)
    assert {k: v for k, v in body.items() if k not in ("id", "meta")} == sent

    read = client.get(f"/fhir/{rtype}/{rid}")
    assert read.status_code == 200
    assert read.json() == body
    assert read.headers["etag"] == 'W/"1"'
    assert client.get(f"/fhir/{rtype}/client-id").status_code == 404


@pytest.mark.parametrize("rtype", TYPES, ids=TYPES)
def test_update_then_vread_each_version(client: TestClient, rtype: str) -> None:
    v1 = create(client, minimal(rtype))
    rid = v1["id"]
    r = put(client, f"/fhir/{rtype}/{rid}", with_id(minimal(rtype, language="en"), rid))
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    assert "location" not in r.headers  # only a create answers with Location
    assert r.json()["meta"]["versionId"] == "2"
    assert r.json()["meta"]["lastUpdated"] >= v1["meta"]["lastUpdated"]

    old = client.get(f"/fhir/{rtype}/{rid}/_history/1")
    assert old.status_code == 200
    assert old.json() == v1
    assert old.headers["etag"] == 'W/"1"'
    new = client.get(f"/fhir/{rtype}/{rid}/_history/2")
    assert new.json()["language"] == "en"
    assert client.get(f"/fhir/{rtype}/{rid}").json() == new.json()
    assert client.get(f"/fhir/{rtype}/{rid}/_history/3").status_code == 404


@pytest.mark.parametrize(
    "content_type",
    ["application/fhir+json", "application/fhir+json; charset=utf-8", "application/json"],
    ids=["fhir-json", "with-charset", "plain-json"],
)
def test_json_media_types_are_accepted(client: TestClient, content_type: str) -> None:
    r = client.post(
        "/fhir/Patient",
        content=orjson.dumps(make_patient("Media")),
        headers={"content-type": content_type},
    )
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["name"] == [{"family": "Media"}]


# -- conditional create ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("existing", "status"),
    [(0, 201), (1, 200), (2, 412)],
    ids=["no-match-creates", "one-match-returns-it", "several-matches-412"],
)
def test_conditional_create(client: TestClient, existing: int, status: int) -> None:
    made = [create(client, make_patient(f"Old{n}", mrn="MRN-7")) for n in range(existing)]
    create(client, make_patient("Unrelated", mrn="MRN-8"))
    r = client.post(
        "/fhir/Patient",
        json=make_patient("New", mrn="MRN-7"),
        headers={**FHIR_JSON, "if-none-exist": "identifier=urn:mrn|MRN-7"},
    )
    assert r.status_code == status, r.text
    if status == 201:
        assert r.json()["name"][0]["family"] == "New"
        assert r.headers["location"] == f"{BASE}/Patient/{r.json()['id']}/_history/1"
    elif status == 200:
        assert r.json() == made[0]  # the existing resource, untouched
        assert r.headers["etag"] == 'W/"1"'
    else:
        assert r.json()["resourceType"] == "OperationOutcome"
    assert count(client, "Patient", identifier="urn:mrn|MRN-7") == max(existing, 1)


@pytest.mark.parametrize(
    ("prefer", "expect"),
    [
        ("return=minimal", None),
        ("return=representation", "Patient"),
        ("return=OperationOutcome", "OperationOutcome"),
    ],
    ids=["minimal", "representation", "OperationOutcome"],
)
def test_conditional_create_match_honours_prefer(
    client: TestClient, prefer: str, expect: str | None
) -> None:
    existing = create(client, make_patient("Kept", mrn="PR-1"))
    r = client.post(
        "/fhir/Patient",
        json=make_patient("Ignored", mrn="PR-1"),
        headers={**FHIR_JSON, "if-none-exist": "identifier=urn:mrn|PR-1", "prefer": prefer},
    )
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"1"'
    if expect is None:
        assert r.content == b""
    elif expect == "Patient":
        assert r.json() == existing
    else:
        diagnostics = r.json()["issue"][0]["diagnostics"]
        assert f"Patient/{existing['id']}" in diagnostics
        assert "nothing created" in diagnostics  # not "updated": nothing was written
    assert version_of(client, "Patient", existing["id"]) == "1"


@pytest.mark.parametrize("rtype", ["Practitioner", "Location"], ids=["Practitioner", "Location"])
def test_conditional_create_on_other_types(client: TestClient, rtype: str) -> None:
    criteria = {"Practitioner": "identifier=1234", "Location": "name=Main"}[rtype]
    first = client.post(
        f"/fhir/{rtype}", json=minimal(rtype), headers={**FHIR_JSON, "if-none-exist": criteria}
    )
    again = client.post(
        f"/fhir/{rtype}", json=minimal(rtype), headers={**FHIR_JSON, "if-none-exist": criteria}
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert count(client, rtype) == 1


# -- update --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("if_match", "status", "version_after"),
    [('W/"1"', 200, "2"), ('"1"', 200, "2"), ('W/"2"', 412, "1"), ('W/"0"', 412, "1")],
    ids=["weak-match", "strong-form-match", "ahead-412", "stale-412"],
)
def test_update_if_match(
    client: TestClient, if_match: str, status: int, version_after: str
) -> None:
    p = create(client, make_patient("Before"))
    r = put(
        client,
        f"/fhir/Patient/{p['id']}",
        make_patient_with_id("After", p["id"]),
        {"if-match": if_match},
    )
    assert r.status_code == status, r.text
    assert version_of(client, "Patient", p["id"]) == version_after
    family = client.get(f"/fhir/Patient/{p['id']}").json()["name"][0]["family"]
    assert family == ("After" if status == 200 else "Before")
    if status == 412:
        assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("rtype", TYPES, ids=TYPES)
def test_update_as_create_with_client_id(client: TestClient, rtype: str) -> None:
    rid = f"client-{rtype.lower()}-1"
    r = put(client, f"/fhir/{rtype}/{rid}", with_id(minimal(rtype), rid))
    assert r.status_code == 201, r.text
    assert r.json()["id"] == rid
    assert r.headers["location"] == f"{BASE}/{rtype}/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert client.get(f"/fhir/{rtype}/{rid}").json() == r.json()
    again = put(client, f"/fhir/{rtype}/{rid}", with_id(minimal(rtype), rid))
    assert again.status_code == 200
    assert again.json()["meta"]["versionId"] == "2"


def test_update_as_create_with_if_match_is_412(client: TestClient) -> None:
    r = put(
        client, "/fhir/Patient/nobody", make_patient_with_id("X", "nobody"), {"if-match": 'W/"1"'}
    )
    assert r.status_code == 412
    assert client.get("/fhir/Patient/nobody").status_code == 404


# -- conditional update ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("existing", "status"),
    [(0, 201), (1, 200), (2, 412)],
    ids=["no-match-creates", "one-match-updates-it", "several-matches-412"],
)
def test_conditional_update(client: TestClient, existing: int, status: int) -> None:
    made = [create(client, make_patient(f"Old{n}", mrn="CU-1")) for n in range(existing)]
    other = create(client, make_patient("Other", mrn="CU-2"))
    r = client.put(
        "/fhir/Patient",
        params={"identifier": "urn:mrn|CU-1"},
        json=make_patient("New", mrn="CU-1"),
        headers=FHIR_JSON,
    )
    assert r.status_code == status, r.text
    if status == 201:
        rid = r.json()["id"]
        assert r.headers["location"] == f"{BASE}/Patient/{rid}/_history/1"
        assert client.get(f"/fhir/Patient/{rid}").json()["name"][0]["family"] == "New"
    elif status == 200:
        assert r.json()["id"] == made[0]["id"]
        assert r.json()["meta"]["versionId"] == "2"
        assert client.get(f"/fhir/Patient/{made[0]['id']}").json()["name"][0]["family"] == "New"
    else:
        assert r.json()["resourceType"] == "OperationOutcome"
        assert [version_of(client, "Patient", m["id"]) for m in made] == ["1", "1"]
    assert count(client, "Patient", identifier="urn:mrn|CU-1") == max(existing, 1)
    assert client.get(f"/fhir/Patient/{other['id']}").json() == other


# -- JSON Patch ----------------------------------------------------------------------------------
def test_json_patch_applies_test_replace_add_remove(client: TestClient) -> None:
    p = create(client, make_patient("Smith", ["Ann"], phone="555-0100"))
    ops = [
        {"op": "test", "path": "/name/0/family", "value": "Smith"},
        {"op": "replace", "path": "/name/0/family", "value": "Smythe"},
        {"op": "add", "path": "/name/0/given/-", "value": "Beth"},
        {"op": "add", "path": "/gender", "value": "female"},
        {"op": "remove", "path": "/telecom"},
    ]
    r = patch(client, f"/fhir/Patient/{p['id']}", ops)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    body = r.json()
    assert body["name"] == [{"family": "Smythe", "given": ["Ann", "Beth"]}]
    assert body["gender"] == "female"
    assert "telecom" not in body
    assert client.get(f"/fhir/Patient/{p['id']}").json() == body
    assert client.get(f"/fhir/Patient/{p['id']}/_history/1").json() == p


@pytest.mark.parametrize(
    ("ops", "status"),
    [
        ([{"op": "test", "path": "/name/0/family", "value": "Jones"}], 422),
        ([{"op": "test", "path": "/gender", "value": "male"}], 422),
        ([{"op": "remove", "path": "/address"}], 422),
        ([{"op": "replace", "path": "/birthDate", "value": "not a date"}], 422),
        ([{"op": "replace", "path": "/id", "value": "another"}], 422),
        ([{"op": "add", "path": "/gender", "value": "banana"}], 422),
        ([{"op": "explode", "path": "/gender"}], 400),
        ([{"path": "/gender", "value": "male"}], 400),
        ([{"op": "add", "value": "male"}], 400),
        ([{"op": "add", "path": "gender", "value": "male"}], 400),
        ([{"op": "add", "path": "/gender"}], 400),
        ([{"op": "move", "path": "/gender"}], 400),
        ({"op": "add", "path": "/gender", "value": "male"}, 400),
        (["add /gender male"], 400),
    ],
    ids=[
        "test-fails-422",
        "test-missing-element-422",
        "remove-absent-422",
        "result-invalid-422",
        "changes-id-422",
        "bad-code-422",
        "unknown-op-400",
        "no-op-400",
        "no-path-400",
        "path-without-slash-400",
        "add-without-value-400",
        "move-without-from-400",
        "object-not-array-400",
        "array-of-strings-400",
    ],
)
def test_json_patch_errors_leave_resource_unchanged(
    client: TestClient, ops: Any, status: int
) -> None:
    p = create(client, make_patient("Smith"))
    r = client.patch(f"/fhir/Patient/{p['id']}", json=ops, headers=PATCH_JSON)
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert "Smith" not in r.text  # the resource is never echoed in the error
    assert client.get(f"/fhir/Patient/{p['id']}").json() == p


def test_json_patch_if_match(client: TestClient) -> None:
    p = create(client, make_patient("Smith"))
    ops = [{"op": "add", "path": "/gender", "value": "other"}]
    stale = patch(client, f"/fhir/Patient/{p['id']}", ops, {"if-match": 'W/"9"'})
    assert stale.status_code == 412
    assert version_of(client, "Patient", p["id"]) == "1"
    ok = patch(client, f"/fhir/Patient/{p['id']}", ops, {"if-match": 'W/"1"'})
    assert ok.status_code == 200
    assert ok.json()["gender"] == "other"


@pytest.mark.parametrize("rtype", TYPES, ids=TYPES)
def test_json_patch_every_type(client: TestClient, rtype: str) -> None:
    made = create(client, minimal(rtype))
    ops = [{"op": "add", "path": "/language", "value": "fr"}]
    r = patch(client, f"/fhir/{rtype}/{made['id']}", ops)
    assert r.status_code == 200, r.text
    assert r.json() == {**made, "language": "fr", "meta": r.json()["meta"]}
    assert r.json()["meta"]["versionId"] == "2"


# -- delete --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rtype", TYPES, ids=TYPES)
def test_delete_is_soft(client: TestClient, rtype: str) -> None:
    v1 = create(client, minimal(rtype))
    rid = v1["id"]
    v2 = put(client, f"/fhir/{rtype}/{rid}", with_id(minimal(rtype, language="en"), rid)).json()

    r = client.delete(f"/fhir/{rtype}/{rid}")
    assert r.status_code == 204
    assert r.content == b""
    gone = client.get(f"/fhir/{rtype}/{rid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert gone.headers["etag"] == 'W/"3"'

    # history keeps every version, newest (the deletion) first
    hist = client.get(f"/fhir/{rtype}/{rid}/_history").json()
    assert hist["type"] == "history"
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["status"] for e in hist["entry"]] == ["204", "200", "201"]
    assert "resource" not in hist["entry"][0]
    assert [e["resource"] for e in hist["entry"][1:]] == [v2, v1]
    assert client.get(f"/fhir/{rtype}/{rid}/_history/1").json() == v1
    assert client.get(f"/fhir/{rtype}/{rid}/_history/2").json() == v2
    assert client.get(f"/fhir/{rtype}/{rid}/_history/3").status_code == 410
    assert client.get(f"/fhir/{rtype}", params={"_id": rid}).json()["total"] == 0

    # deleting again is harmless; an update brings it back as a new version
    assert client.delete(f"/fhir/{rtype}/{rid}").status_code == 204
    back = put(client, f"/fhir/{rtype}/{rid}", with_id(minimal(rtype), rid))
    assert back.status_code == 201
    assert back.json()["meta"]["versionId"] == "4"
    assert client.get(f"/fhir/{rtype}", params={"_id": rid}).json()["total"] == 1


# -- history -------------------------------------------------------------------------------------
def test_instance_history_paging_follows_next_links(client: TestClient) -> None:
    p = create(client, make_patient("V1"))
    for n in range(2, 8):
        put(client, f"/fhir/Patient/{p['id']}", make_patient_with_id(f"V{n}", p["id"]))
    create(client, make_patient("Someone else"))
    entries, pages = follow(client, f"/fhir/Patient/{p['id']}/_history?_count=3")
    assert pages == 3
    assert history_keys(entries) == [(p["id"], str(v)) for v in range(7, 0, -1)]
    assert [e["resource"]["name"][0]["family"] for e in entries] == [
        f"V{v}" for v in range(7, 0, -1)
    ]


@pytest.mark.parametrize("page_size", [1, 2, 5, 100], ids=["1", "2", "5", "100"])
def test_type_history_paging_is_complete_without_duplicates(
    client: TestClient, page_size: int
) -> None:
    expected: set[tuple[str, str]] = set()
    for n in range(4):
        p = create(client, make_patient(f"P{n}"))
        expected.add((p["id"], "1"))
        if n % 2:
            put(client, f"/fhir/Patient/{p['id']}", make_patient_with_id(f"P{n}b", p["id"]))
            expected.add((p["id"], "2"))
    client.delete(f"/fhir/Patient/{p['id']}")
    expected.add((p["id"], "3"))
    create(client, minimal("Location"))  # another type never shows up
    entries, pages = follow(client, f"/fhir/Patient/_history?_count={page_size}")
    keys = history_keys(entries)
    assert len(keys) == len(set(keys)), "a version appeared on two pages"
    assert set(keys) == expected
    assert pages == -(-len(expected) // page_size)  # no trailing empty page
    stamps = [e["response"]["lastModified"] for e in entries]
    assert stamps == sorted(stamps, reverse=True)


def test_history_since(client: TestClient) -> None:
    p = create(client, make_patient("V1"))
    versions = [p]
    for n in range(2, 5):
        versions.append(
            put(client, f"/fhir/Patient/{p['id']}", make_patient_with_id(f"V{n}", p["id"])).json()
        )
    since = versions[2]["meta"]["lastUpdated"]
    # written in the same millisecond counts as "at or after"
    wanted = [
        v["meta"]["versionId"] for v in reversed(versions) if v["meta"]["lastUpdated"] >= since
    ]
    assert wanted[-1] == "3"
    inst = client.get(f"/fhir/Patient/{p['id']}/_history", params={"_since": since}).json()
    assert [e["resource"]["meta"]["versionId"] for e in inst["entry"]] == wanted
    typ = client.get("/fhir/Patient/_history", params={"_since": since}).json()
    assert [e["resource"]["meta"]["versionId"] for e in typ["entry"]] == wanted
    paged, pages = follow(client, f"/fhir/Patient/_history?_count=1&_since={since}")
    assert [e["resource"]["meta"]["versionId"] for e in paged] == wanted
    assert pages == len(wanted)
    later = client.get("/fhir/Patient/_history", params={"_since": "2999-01-01T00:00:00Z"})
    assert later.status_code == 200
    assert "entry" not in later.json()


def test_history_since_with_offset_means_the_same_instant(client: TestClient) -> None:
    p = create(client, make_patient("A"))
    put(client, f"/fhir/Patient/{p['id']}", make_patient_with_id("B", p["id"]))
    stamp = p["meta"]["lastUpdated"]  # e.g. 2026-11-22T16:00:00.123Z
    plus_two = timezone(timedelta(hours=2))
    shifted = datetime.fromisoformat(stamp).astimezone(plus_two).isoformat(timespec="milliseconds")
    assert shifted.endswith("+02:00")
    utc = client.get("/fhir/Patient/_history", params={"_since": stamp}).json()
    offset = client.get("/fhir/Patient/_history", params={"_since": shifted}).json()
    assert history_keys(offset["entry"]) == history_keys(utc["entry"])
    assert len(utc["entry"]) == 2


# -- search by GET and POST ------------------------------------------------------------------------
SEARCHES: list[tuple[str, list[tuple[str, str]]]] = [
    ("family-prefix", [("family", "adam")]),
    ("family-exact", [("family:exact", "Adams")]),
    ("identifier", [("identifier", "urn:mrn|S-2")]),
    ("birthdate-range", [("birthdate", "ge1990-01-01"), ("birthdate", "lt2000-01-01")]),
    ("gender-and-count", [("gender", "female"), ("_count", "1")]),
    ("no-match", [("family", "Zzyzx")]),
]


@pytest.mark.parametrize(("name", "params"), SEARCHES, ids=[s[0] for s in SEARCHES])
def test_search_get_and_post_agree(
    client: TestClient, name: str, params: list[tuple[str, str]]
) -> None:
    create(client, make_patient("Adams", mrn="S-1", birth="1985-03-04", gender="female"))
    create(client, make_patient("Adamson", mrn="S-2", birth="1992-07-08", gender="female"))
    create(client, make_patient("Baker", mrn="S-3", birth="1995-01-01", gender="male"))
    got = client.get("/fhir/Patient", params=params)
    form = str(httpx.QueryParams(params))  # keeps repeated keys, unlike a dict
    posted = client.post("/fhir/Patient/_search", content=form, headers=FORM)
    assert got.status_code == posted.status_code == 200, (got.text, posted.text)
    g, p = got.json(), posted.json()
    assert g["type"] == p["type"] == "searchset"
    assert g["total"] == p["total"]
    ids: Callable[[dict[str, Any]], list[str]] = lambda b: [  # noqa: E731
        e["resource"]["id"] for e in b.get("entry", [])
    ]
    assert ids(g) == ids(p)
    expected = {
        "family-prefix": 2,
        "family-exact": 1,
        "identifier": 1,
        "birthdate-range": 2,
        "gender-and-count": 2,
        "no-match": 0,
    }[name]
    assert g["total"] == expected


def test_search_post_combines_url_and_body_parameters(client: TestClient) -> None:
    create(client, make_patient("Adams", gender="female"))
    want = create(client, make_patient("Adams", gender="male"))
    r = client.post(
        "/fhir/Patient/_search?family=adams", data={"gender": "male"}, headers=FORM
    ).json()
    assert [e["resource"]["id"] for e in r["entry"]] == [want["id"]]


def test_search_post_paging_follows_next_links(client: TestClient) -> None:
    made = {create(client, make_patient("Page"))["id"] for _ in range(5)}
    first = client.post("/fhir/Patient/_search", data={"_count": "2"}, headers=FORM).json()
    entries = list(first["entry"])
    rest, _ = follow(client, next_link(first) or "")
    entries += rest
    ids = [e["resource"]["id"] for e in entries]
    assert len(ids) == len(set(ids)) == 5
    assert set(ids) == made


# -- Prefer: return= -------------------------------------------------------------------------------
def _do_create(client: TestClient, prefer: str) -> httpx.Response:
    return client.post(
        "/fhir/Patient", json=make_patient("Pref"), headers={**FHIR_JSON, "prefer": prefer}
    )


def _do_update(client: TestClient, prefer: str) -> httpx.Response:
    p = create(client, make_patient("Pref"))
    return put(
        client,
        f"/fhir/Patient/{p['id']}",
        make_patient_with_id("Pref", p["id"]),
        {"prefer": prefer},
    )


def _do_patch(client: TestClient, prefer: str) -> httpx.Response:
    p = create(client, make_patient("Pref"))
    ops = [{"op": "add", "path": "/gender", "value": "unknown"}]
    return patch(client, f"/fhir/Patient/{p['id']}", ops, {"prefer": prefer})


INTERACTIONS: dict[str, tuple[Callable[[TestClient, str], httpx.Response], int, str]] = {
    "create": (_do_create, 201, "1"),
    "update": (_do_update, 200, "2"),
    "patch": (_do_patch, 200, "2"),
}


@pytest.mark.parametrize("interaction", sorted(INTERACTIONS), ids=sorted(INTERACTIONS))
@pytest.mark.parametrize(
    "prefer",
    ["return=minimal", "return=representation", "return=OperationOutcome", ""],
    ids=["minimal", "representation", "OperationOutcome", "absent"],
)
def test_prefer_return(client: TestClient, interaction: str, prefer: str) -> None:
    run, status, version = INTERACTIONS[interaction]
    r = run(client, prefer)
    assert r.status_code == status, r.text
    assert r.headers["etag"] == f'W/"{version}"'
    assert ("location" in r.headers) == (interaction == "create")
    if prefer == "return=minimal":
        assert r.content == b""
        return
    body = r.json()
    if prefer == "return=OperationOutcome":
        assert body["resourceType"] == "OperationOutcome"
        issue = body["issue"][0]
        assert issue["severity"] == "information"
        assert f"(version {version})" in issue["diagnostics"]
        assert "Pref" not in r.text
    else:
        assert body["resourceType"] == "Patient"
        assert body["meta"]["versionId"] == version
        assert body["name"][0]["family"] == "Pref"
