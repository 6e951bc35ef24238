"""What the agent is told at start-up: where the server is, who it is there, which model
answers, and the clinic's public directory (visit types, clinicians, locations).

Built by the top floor (``fhir_server``) from its settings and the clinic file; nothing here
reads the environment. The directory is configuration the clinic publishes, not data read
from the server: the agent's token cannot read Practitioner or Location.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

__all__ = ["AgentConfig", "Clinician", "Directory", "Place", "VisitKind"]


@dataclass(frozen=True, slots=True)
class Clinician:
    id: str
    name: str  # "Dr. Alice Smith"
    family: str


@dataclass(frozen=True, slots=True)
class Place:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class VisitKind:
    code: str
    display: str
    minutes: int
    patients: str  # new | existing | any
    clinicians: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Directory:
    """The clinic as a patient may know it."""

    name: str
    timezone: str
    visits: tuple[VisitKind, ...]
    clinicians: tuple[Clinician, ...]
    places: tuple[Place, ...]
    phone: str | None = None
    cancellation_notice_hours: int = 24

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def clinician(self, ref: str) -> Clinician | None:
        key = ref.removeprefix("Practitioner/")
        return next((c for c in self.clinicians if c.id == key), None)

    def place(self, ref: str) -> Place | None:
        key = ref.removeprefix("Location/")
        return next((p for p in self.places if p.id == key), None)

    def visit(self, code: str) -> VisitKind | None:
        return next((v for v in self.visits if v.code == code), None)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs, from the server's settings."""

    fhir_base: str  # e.g. http://127.0.0.1:8080/fhir (the agent calls it over HTTP)
    token_url: str  # where the agent asks for its token
    client_id: str
    key_file: Path  # the agent's private signing key (a JWK, ES384), mode 0600
    directory: Directory
    model: str = "claude-sonnet-4-5"
    api_key: str | None = None  # none: the offline model answers
    base_url: str | None = None  # the Messages API (a stand-in in tests)
    model_timeout: float = 30.0
    model_retries: int = 2
    http_timeout: float = 15.0
    max_tool_calls: int = 5
    otp_seconds: int = 600
    sms_from: str | None = None
    token_audience: str | None = None  # the assertion's aud: the server's public token URL
    extra: dict[str, str] = field(default_factory=dict)
