"""The no-show risk is for staff: a patient's token reads and searches its Appointments
without it, and cannot search or sort by it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from resources.sql.engine import Database
from scheduling.risk import RISK_URL, Risk, risk_extension, risk_of
from security.crypto import KeyRing
from tests.fhir_server.test_authz import _patient_token, bearer, world  # noqa: F401 - fixture

OTHER = {"url": "urn:other", "valueString": "kept"}


def _score(anonymous: TestClient, world: dict[str, Any], appt: str) -> None:  # noqa: F811
    """Staff's copy carries the risk (as the rescoring job writes it) beside another one."""
    body = anonymous.get(f"/fhir/Appointment/{appt}", headers=world["admin"]).json()
    risk = Risk(0.72, ("2 no-shows in the last 5 visits",), "noshow-lr-1")
    body["extension"] = [OTHER, risk_extension(risk)]
    r = anonymous.put(f"/fhir/Appointment/{appt}", json=body, headers=world["admin"])
    assert r.status_code == 200, r.text


def _mentions_risk(text: str) -> bool:
    return RISK_URL in text or "no-shows" in text


def test_a_patients_token_never_sees_the_risk(
    anonymous: TestClient,
    db: Database,
    keys: KeyRing,
    world: dict[str, Any],  # noqa: F811
) -> None:
    appt = world["apptA"]
    _score(anonymous, world, appt)
    staff = anonymous.get(f"/fhir/Appointment/{appt}", headers=world["admin"])
    assert risk_of(staff.json()) == 0.72  # staff see it, with its reasons
    token = bearer(_patient_token(anonymous, db, keys, world["A"], "launch/patient patient/*.rs"))
    answers = [
        anonymous.get(f"/fhir/Appointment/{appt}", headers=token),
        anonymous.get(f"/fhir/Appointment/{appt}/_history/2", headers=token),
        anonymous.get(f"/fhir/Appointment/{appt}/_history", headers=token),
        anonymous.get("/fhir/Appointment", headers=token),
        anonymous.get("/fhir/Appointment", params={"_id": appt}, headers=token),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        assert not _mentions_risk(r.text), r.request.url
    read = answers[0].json()
    assert read["extension"] == [OTHER]  # other extensions stay
    assert read["meta"]["versionId"] == "2"
    for params in ({"risk": "ge0.5"}, {"risk:missing": "false"}, {"_sort": "-risk"}):
        r = anonymous.get("/fhir/Appointment", params=params, headers=token)
        assert r.status_code == 403, (params, r.text)
    assert (
        anonymous.get("/fhir/Appointment", params={"risk": "ge0.5"}, headers=world["admin"]).json()[
            "total"
        ]
        == 1
    )
