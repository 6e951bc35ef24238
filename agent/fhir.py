"""The agent's only way into the clinic: HTTP to the FHIR server, as a SMART Backend Services
client (``client_credentials`` with a ``private_key_jwt`` assertion signed ES384).

Its registration grants ``system/Appointment.$find`` and ``system/Appointment.$book`` and
nothing else, so whatever a conversation (or a prompt injection) asks for, this client can only
find options and book, cancel or move one appointment of a patient it describes. Every request
carries the conversation's id (``X-Conversation-Id``), which the server writes into the
request's AuditEvent: a compliance officer goes from the audit log to the transcript.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

from agent.config import AgentConfig

__all__ = [
    "AGENT_SCOPE",
    "FhirClient",
    "FhirRefused",
    "FhirUnavailable",
    "generate_agent_key",
    "load_agent_key",
    "named_appointment",
    "public_jwks",
]

AGENT_SCOPE = "system/Appointment.$find system/Appointment.$book"
FHIR_JSON = "application/fhir+json"


class FhirUnavailable(Exception):
    """The server could not be reached or failed (5xx): try later or hand over."""


@dataclass
class FhirRefused(Exception):
    """The server answered 4xx with an OperationOutcome: the request itself was refused."""

    status: int
    message_id: str | None
    code: str | None
    diagnostics: str

    def __str__(self) -> str:
        return f"{self.status} {self.message_id or ''} {self.diagnostics}".strip()


def generate_agent_key(path: Path) -> ECKey:
    """A new P-384 signing key written to ``path`` (0600), or the one already there."""
    if path.exists():
        return load_agent_key(path)
    key = ECKey.generate_key("P-384", parameters={"kid": f"agent-{uuid.uuid4().hex[:8]}"})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(key.as_dict(private=True), out)
    return key


def load_agent_key(path: Path) -> ECKey:
    return ECKey.import_key(json.loads(path.read_text()))


def public_jwks(key: ECKey) -> dict[str, Any]:
    """The JWKS to register for the agent's client (public half only)."""
    public = key.as_dict(private=False)
    public.update({"alg": "ES384", "use": "sig"})
    return {"keys": [public]}


def _outcome(response: httpx.Response) -> tuple[str | None, str | None, str]:
    try:
        body = response.json()
        issue = (body.get("issue") or [{}])[0]
        code = issue.get("code")
        message_id = next(
            (c.get("code") for c in (issue.get("details") or {}).get("coding", [])), None
        )
        return message_id, code, str(issue.get("diagnostics") or "")
    except (ValueError, AttributeError, IndexError):
        return None, None, f"HTTP {response.status_code}"


class FhirClient:
    """``$find`` and ``$book`` over HTTP, with a token fetched and renewed as needed."""

    def __init__(self, config: AgentConfig, *, http: httpx.Client | None = None) -> None:
        self.config = config
        self._key = load_agent_key(config.key_file)
        self._http = http or httpx.Client(timeout=config.http_timeout)
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # -- the token -------------------------------------------------------------------------

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": self.config.token_audience or self.config.token_url,
            "exp": now + 240,
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": "ES384", "kid": self._key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=["ES384"])

    def token(self) -> str:
        with self._lock:
            if self._token is not None and self._token[1] > time.time() + 30:
                return self._token[0]
            try:
                r = self._http.post(
                    self.config.token_url,
                    data={
                        "grant_type": "client_credentials",
                        "scope": AGENT_SCOPE,
                        "client_assertion_type": (
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                        ),
                        "client_assertion": self._assertion(),
                    },
                )
            except httpx.HTTPError as exc:
                raise FhirUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from exc
            if r.status_code != 200:
                raise FhirUnavailable(f"token endpoint answered {r.status_code}")
            body = r.json()
            self._token = (body["access_token"], time.time() + int(body.get("expires_in", 300)))
            return self._token[0]

    # -- requests --------------------------------------------------------------------------

    def _post(self, operation: str, parameters: list[dict[str, Any]], conversation: str) -> Any:
        body = {"resourceType": "Parameters", "parameter": parameters}
        for attempt in range(2):
            headers = {
                "Authorization": f"Bearer {self.token()}",
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
                "X-Conversation-Id": conversation,
            }
            url = f"{self.config.fhir_base}/Appointment/{operation}"
            try:
                r = self._http.post(url, content=json.dumps(body), headers=headers)
            except httpx.HTTPError as exc:
                raise FhirUnavailable(f"{operation}: {type(exc).__name__}") from exc
            if r.status_code == 401 and attempt == 0:  # revoked or expired early: a new token
                self._token = None
                continue
            if r.status_code >= 500:
                raise FhirUnavailable(f"{operation}: HTTP {r.status_code}")
            if r.status_code >= 400:
                raise FhirRefused(r.status_code, *_outcome(r))
            return r.json()
        raise FhirUnavailable(f"{operation}: the server refused the agent's token")

    def find(
        self,
        *,
        start: datetime,
        end: datetime,
        visit_type: str,
        patient: dict[str, Any],
        conversation: str,
        practitioner: str | None = None,
        count: int = 6,
    ) -> list[dict[str, Any]]:
        """Proposed Appointments (the patient contained when the server does not know them)."""
        parameters: list[dict[str, Any]] = [
            {"name": "start", "valueDateTime": start.isoformat()},
            {"name": "end", "valueDateTime": end.isoformat()},
            {"name": "visit-type", "valueString": visit_type},
            {"name": "patient-resource", "resource": patient},
            {"name": "_count", "valueInteger": count},
        ]
        if practitioner:
            parameters.append(
                {"name": "practitioner", "valueReference": {"reference": practitioner}}
            )
        bundle = self._post("$find", parameters, conversation)
        return [
            e["resource"]
            for e in bundle.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "Appointment"
        ]

    def book(
        self,
        proposal: dict[str, Any],
        *,
        conversation: str,
        replaces: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Book ``proposal``; ``replaces``: the booked Appointment it moves (by patient and
        start), cancelled in the same transaction."""
        parameters: list[dict[str, Any]] = [{"name": "appointment-resource", "resource": proposal}]
        if replaces is not None:
            parameters.append({"name": "cancelled-appointment", "resource": replaces})
        result: dict[str, Any] = self._post("$book", parameters, conversation)
        return result

    def join_waitlist(self, entry: dict[str, Any], *, conversation: str) -> dict[str, Any]:
        """Put a patient on the waitlist: ``$book`` of an Appointment with status
        ``waitlist`` (requestedPeriod, visit type, the patient contained)."""
        result: dict[str, Any] = self._post(
            "$book", [{"name": "appointment-resource", "resource": entry}], conversation
        )
        return result

    def cancel(self, named: dict[str, Any], *, conversation: str) -> dict[str, Any]:
        """Cancel the booked Appointment ``named`` by its patient and start."""
        body = {**named, "status": "cancelled"}
        result: dict[str, Any] = self._post(
            "$book", [{"name": "appointment-resource", "resource": body}], conversation
        )
        return result


def named_appointment(patient: dict[str, Any], start: str) -> dict[str, Any]:
    """An Appointment naming a booking by its patient (contained) and start."""
    return {
        "resourceType": "Appointment",
        "status": "cancelled",
        "start": start,
        "contained": [{**patient, "id": "patient"}],
        "participant": [{"actor": {"reference": "#patient"}, "status": "declined"}],
    }
