"""``/metrics``: served only with ``FHIRSCHED_METRICS_TOKEN`` and only to its bearer, off the FHIR
base, unaudited; and what it counts after real requests (a booking, a conflict, a refusal by
rule, token grants and refusals, sign-ins, an audit write refused), with no patient data and
no client-sent text in its labels. Over HTTP, on both databases."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import func, select

from fhir_server.app import create_app
from fhir_server.metrics import Metrics
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.sql.tables import AuditLog
from resources.store import Store
from scheduling.clinic import load_clinic
from scheduling.config import parse_clinic_config
from security.crypto import KeyRing
from security.smart.registry import add_user
from tests.builders import FHIR_JSON, create, make_patient
from tests.conftest import audit_writes_refused
from tests.scheduling.test_clinic_config import make_config
from tests.smart import authorize_params, backend_token, pkce, register_app, sign_in_and_allow

TOKEN = "scrape-token-0123456789abcdef"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}
DAY = datetime.now(UTC).date() + timedelta(days=3)
SAMPLE = re.compile(r"^([a-z_0-9]+)(?:\{(.*)\})? (\S+)$")


def _clinic() -> dict[str, Any]:
    """One practitioner, 09:00-10:00 every day; a cancellation needs 60 days' notice, so
    cancelling anything here is refused by that rule."""
    return make_config(rules={"cancellation_notice_hours": 24 * 60})


@pytest.fixture
def metered(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path, settings: Settings
) -> Iterator[TestClient]:
    """The app with a metrics token and a clinic with Slots, and a full-access FHIR token."""
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump(_clinic()))
    with db.write() as conn:
        load_clinic(conn, store=store, config=parse_clinic_config(_clinic()), today=DAY, weeks=1)
    configured = settings.model_copy(
        update={"metrics_token": SecretStr(TOKEN), "clinic_file": path}
    )
    app = create_app(configured, keys=keys, db=db)
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as c:
        c.headers["Authorization"] = f"Bearer {backend_token(c, db)}"
        yield c


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The exposition's samples: (name, labels) → value."""
    out = {}
    for line in text.splitlines():
        found = SAMPLE.match(line)
        if found is None or line.startswith("#"):
            continue
        name, labels, value = found.groups()
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        out[(name, pairs)] = float(value)
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def scrape(c: TestClient) -> dict[Any, float]:
    r = c.get("/metrics", headers=SCRAPE)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


def _book(c: TestClient, appointment: dict[str, Any]) -> Any:
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment-resource", "resource": appointment}],
    }
    return c.post("/fhir/Appointment/$book", json=body, headers=FHIR_JSON)


def _proposal(c: TestClient, patient_id: str) -> dict[str, Any]:
    tz = parse_clinic_config(_clinic()).tz
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=tz)
    found = c.get(
        "/fhir/Appointment/$find",
        params={
            "start": start.isoformat(),
            "end": (start + timedelta(days=1)).isoformat(),
            "visit-type": "follow-up",
            "patient-reference": f"Patient/{patient_id}",
            "_count": "1",
        },
    )
    assert found.status_code == 200, found.text
    proposal: dict[str, Any] = found.json()["entry"][0]["resource"]
    return proposal


def test_a_scrape_after_a_booking(metered: TestClient) -> None:
    before = scrape(metered)
    patient = create(metered, make_patient("Scrapewell"))
    proposal = _proposal(metered, patient["id"])
    booked = _book(metered, proposal)
    assert booked.status_code == 201, booked.text
    taken = _book(metered, proposal)
    assert taken.status_code == 409, taken.text
    cancel = {**booked.json(), "status": "cancelled"}
    refused = _book(metered, cancel)
    assert refused.status_code == 422 and "notice" in refused.text, refused.text
    assert metered.get(f"/fhir/Patient/{patient['id']}").status_code == 200

    after = scrape(metered)
    book = "fhirsched_book_outcomes_total"
    for outcome, n in (("booked", 1), ("conflict", 1), ("refused", 1), ("cancelled", 0)):
        assert value(after, book, outcome=outcome) - value(before, book, outcome=outcome) == n
    requests = "fhirsched_http_requests_total"
    route = "/fhir/Appointment/$book"
    for status, n in (("201", 1), ("409", 1), ("422", 1)):
        assert value(after, requests, method="POST", route=route, status=status) == n
    latency = "fhirsched_http_request_duration_seconds_count"
    assert value(after, latency, method="POST", route=route) == 3
    read = {"method": "GET", "route": "/fhir/Patient/{rid}", "status": "200"}
    assert value(after, requests, **read) == 1  # the type named, never the id
    assert value(after, requests, method="GET", route="/metrics", status="200") == 1
    token = "fhirsched_token_requests_total"
    assert value(after, token, grant_type="client_credentials", outcome="granted") >= 1
    assert value(after, "fhirsched_audit_write_failures_total") == 0
    for status in ("applied", "failed", "received"):
        assert ("fhirsched_hl7_messages", frozenset({("direction", "in"), ("status", status)})) in (
            after
        )


def test_no_patient_data_and_no_client_text_in_labels(metered: TestClient) -> None:
    patient = create(metered, make_patient("Zebediah"))
    metered.get(f"/fhir/Patient/{patient['id']}")
    metered.get("/fhir/Patient", params={"family": "Zebediah"})
    metered.get("/fhir/Zebediah-was-here/123")
    metered.get("/nothing/Zebediah")
    metered.request("BREW", "/fhir/Patient")
    metered.post("/auth/token", data={"grant_type": "Zebediah", "client_id": "Zebediah"})
    r = metered.get("/metrics", headers=SCRAPE)
    assert r.status_code == 200
    assert "Zebediah" not in r.text and patient["id"] not in r.text
    after = samples(r.text)
    routes = {dict(labels).get("route") for name, labels in after if "route" in dict(labels)}
    assert "unmatched" in routes and "/fhir/{rtype}/{rid}" in routes  # an unknown type
    assert all(r is not None and (r == "unmatched" or r.startswith("/")) for r in routes)
    methods = {dict(labels).get("method") for _, labels in after if "method" in dict(labels)}
    assert "other" in methods and "BREW" not in methods
    token = "fhirsched_token_requests_total"
    assert value(after, token, grant_type="other", outcome="unsupported_grant_type") == 1


def test_token_refusals_and_sign_ins_are_counted(
    metered: TestClient, db: Database, keys: KeyRing
) -> None:
    bad = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}
    assert metered.post("/auth/token", data=bad, headers={"Authorization": ""}).status_code == 401
    register_app(db)
    with db.write() as conn:
        add_user(conn, keys, login="desk", password="desk-password-1", role="front-desk")
    _, challenge = pkce()
    wrong = sign_in_and_allow(
        metered, authorize_params("app", challenge), login="desk", password="wrong-password"
    )
    assert wrong.status_code == 401
    right = sign_in_and_allow(
        metered, authorize_params("app", challenge), login="desk", password="desk-password-1"
    )
    assert right.status_code == 302
    after = scrape(metered)
    token = "fhirsched_token_requests_total"
    assert value(after, token, grant_type="client_credentials", outcome="invalid_client") == 1
    assert value(after, "fhirsched_signins_total", outcome="failed") == 1
    assert value(after, "fhirsched_signins_total", outcome="succeeded") == 1


def test_an_audit_write_refused_is_counted(metered: TestClient, db: Database) -> None:
    with audit_writes_refused(db):
        assert metered.get("/fhir/Patient").status_code == 503
    after = scrape(metered)  # a scrape needs no audit record: it works while the log is down
    assert value(after, "fhirsched_audit_write_failures_total") >= 1
    assert value(after, "fhirsched_http_requests_total", **_route("GET", "/fhir/Patient")) >= 1


def _route(method: str, route: str, status: str = "503") -> dict[str, str]:
    return {"method": method, "route": route, "status": status}


def test_a_scrape_needs_the_metrics_token_and_is_not_audited(
    metered: TestClient, db: Database
) -> None:
    def records() -> int:
        with db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(AuditLog)).scalar_one())

    fhir_token = metered.headers["Authorization"]  # a FHIR token is not the metrics token
    for sent in ("", fhir_token, f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"):
        r = metered.get("/metrics", headers={"Authorization": sent})
        assert r.status_code == 401, sent
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert metered.get("/fhir/metrics", headers=SCRAPE).status_code != 200  # off the FHIR base
    before = records()
    assert metered.get("/metrics", headers=SCRAPE).status_code == 200
    assert records() == before
    assert "/metrics" not in metered.get("/openapi.json").json()["paths"]


def test_metrics_are_off_without_a_token(anonymous: TestClient) -> None:
    assert anonymous.get("/metrics").status_code == 404
    assert anonymous.get("/metrics", headers=SCRAPE).status_code == 404


def test_a_short_metrics_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(key_file=tmp_path / "k.json", metrics_token="short")


def test_every_outcome_is_there_from_the_start() -> None:
    text = Metrics().render([], None)[0].decode()
    for outcome in ("booked", "conflict", "refused", "cancelled", "changed"):
        assert f'fhirsched_book_outcomes_total{{outcome="{outcome}"}} 0.0' in text
    assert "fhirsched_audit_write_failures_total 0.0" in text
