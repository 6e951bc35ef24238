"""Runtime configuration: one pydantic-settings object, built once and passed in.

Every field can be set from the environment with the ``FHIRSCHED_`` prefix, e.g.
``FHIRSCHED_DATABASE_URL=postgresql+psycopg://app@db/fhir``.  Nothing reads the environment
at import time: ``Settings()`` is called by the CLI or by whoever builds the app.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, FilePath, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hl7_bridge.endpoint import HL7Endpoint
from hl7_bridge.status import check_status_map

__all__ = ["Settings"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_DATABASES = "use sqlite:///path or postgresql+psycopg://user@host:port/db"


class Settings(BaseSettings):
    """Server settings (environment prefix ``FHIRSCHED_``)."""

    model_config = SettingsConfigDict(env_prefix="FHIRSCHED_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./data/fhir-sched.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
    key_file: Path = Field(
        default=Path("./data/keys.json"),
        description="Key file (created with mode 0600 on first run) unless FHIRSCHED_KEYS is set",
    )
    keys: SecretStr | None = Field(
        default=None, description="The key file's JSON content, given through the environment"
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="RS256 key that signs id_tokens (created 0600 on first run; default: "
        "signing-key.json beside the key file)",
    )
    signing_key: SecretStr | None = Field(
        default=None, description="The signing key's private JWK, given through the environment"
    )
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes sharing the port (more than 1 needs PostgreSQL, and the "
        "HL7 bridge then runs apart, as `fhir-sched hl7 listen`)",
    )
    allow_remote: bool = Field(
        default=False,
        description="Must be true to listen beyond loopback (put TLS in front: tokens are "
        "bearer credentials)",
    )
    base_url: str | None = Field(
        default=None, description="Public FHIR base URL; default http://{host}:{port}/fhir"
    )
    token_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="How long a checked access token is trusted without asking the database "
        "again; revocations made by this process end it at once, those made by another "
        "process (the CLI, another worker) within this time (0: check every request)",
    )
    cors_origins: list[str] = Field(
        default=["*"],
        description="Browser origins allowed to call the API (JSON list); tokens, not cookies, "
        "carry authority, so any origin is safe by default",
    )
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Largest JSON request body (a resource, a patch, an operation's "
        "Parameters); a larger one is refused with 413 before it is read",
    )
    max_bundle_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest transaction or batch Bundle (POST /fhir); 413 above it",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A request's line and headers must arrive within this long of its first "
        "byte (or of the connection's opening); later, 408 and the connection is closed",
    )
    body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A request's body must arrive within this long of its headers; later, "
        "the connection is closed",
    )
    keep_alive_seconds: float = Field(
        default=5.0,
        gt=0,
        description="An idle kept-alive connection is closed after this long",
    )
    default_page_size: int = Field(default=20, ge=1, le=1000)
    max_page_size: int = Field(default=500, ge=1, le=10000)
    log_level: str = "info"
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Serve Prometheus metrics at /metrics to a scraper sending this as "
        "`Authorization: Bearer <token>` (at least 16 characters, e.g. `openssl rand -hex "
        "32`); unset, /metrics is not served",
    )
    audit_enabled: bool = Field(
        default=True,
        description="Write the audit log (false only to measure what auditing costs)",
    )
    audit_retention_years: int = Field(
        default=6,
        ge=6,
        description="How long audit records are kept; nothing is purged before this",
    )
    audit_checkpoint_file: Path | None = Field(
        default=None,
        description="Append-only file the audit chain's head is checkpointed to, signed, so "
        "`audit verify` finds the newest records deleted (created 0600; default: "
        "audit-checkpoints.jsonl beside the key file)",
    )
    audit_checkpoint_seconds: float = Field(
        default=300,
        ge=0,
        description="Checkpoint the audit chain's head this often while serving, when it has "
        "moved, and once at shutdown (0: never; `fhir-sched audit checkpoint` still does)",
    )
    audit_checkpoint_syslog: str | None = Field(
        default=None,
        description="Also send each checkpoint to syslog: a socket path (/dev/log) or "
        "host:port (UDP), ideally a collector on another host",
    )
    clinic_refresh_seconds: int = Field(
        default=86400,
        ge=0,
        description="Extend the clinic's Slot horizon this often while serving (0: never)",
    )
    waitlist_seconds: int = Field(
        default=60,
        ge=0,
        description="Run the waitlist job (offer freed time) this often, when the clinic file "
        "enables the waitlist (0: never)",
    )
    reminder_seconds: int = Field(
        default=60,
        ge=0,
        description="Run the reminder job this often while serving, when the clinic file "
        "turns reminders on (0: never)",
    )
    risk_refresh_seconds: int = Field(
        default=900,
        ge=0,
        description="Rescore the no-show risk of upcoming booked Appointments this often "
        "while serving, with a clinic file (0: never)",
    )
    clinic_file: FilePath | None = Field(
        default=None,
        description="Clinic file whose rules $find applies (see docs/clinic-config.md)",
    )

    hl7_listen: bool = Field(
        default=False, description="Run the HL7 v2 MLLP listener inside `fhir-sched serve`"
    )
    hl7_host: str = Field(default="127.0.0.1", description="Interface the MLLP listener binds")
    hl7_port: int = Field(default=2575, ge=0, le=65535, description="MLLP listener port")
    hl7_max_message_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Larger inbound frames are dropped and logged"
    )
    hl7_sender_timezone: str | None = Field(
        default=None,
        description="IANA zone for inbound times that carry no offset (default: the clinic's "
        "zone, else UTC)",
    )
    hl7_status_map: dict[str, str | dict[str, str]] = Field(
        default_factory=dict,
        description="SCH-25 filler status (code or text, any case) → Appointment.status, added "
        'to the built-in table (JSON, e.g. {"Confirmed": "booked"}); a sender key maps to that '
        'sender\'s own table ({"EPIC.MSFP": {"1": "booked"}})',
    )
    hl7_identifier_systems: dict[str, str] = Field(
        default_factory=dict,
        description="PID-3 assigning authority → identifier system URI (JSON); default "
        "urn:fhir-sched:hl7:id:<authority>",
    )

    hl7_application: str = Field(default="FHIRSCHED", description="Our MSH-3")
    hl7_facility: str = Field(default="", description="Our MSH-4")
    hl7_endpoints: list[HL7Endpoint] = Field(
        default_factory=list,
        description="EMRs to send SIU messages to (JSON list of {name, host, port, "
        "application, facility, senders, version}); the sender runs beside the listener",
    )
    hl7_ack_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for an EMR's ACK before resending"
    )

    agent_enabled: bool = Field(
        default=True,
        description="Serve the booking agent (/agent/chat, its API and SMS webhook) when a "
        "clinic file is configured and the agent's client is registered "
        "(`fhir-sched agent register`; `demo` registers it)",
    )
    agent_client_id: str = Field(
        default="booking-agent", description="The agent's SMART Backend Services client id"
    )
    agent_key_file: Path | None = Field(
        default=None,
        description="The agent's private ES384 signing key (a JWK, created 0600 by `agent "
        "register`; default: agent-key.json beside the key file)",
    )
    agent_fhir_url: str | None = Field(
        default=None,
        description="Where the agent reaches the FHIR API over HTTP (default: the base URL; "
        "set it when the public URL is not reachable from the server itself)",
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        description="Claude answers patients when set; without it the offline rules do",
    )
    agent_model: str = Field(default="claude-sonnet-4-5", description="The Claude model")
    agent_model_base_url: str | None = Field(
        default=None, description="The Messages API's URL (default: Anthropic's)"
    )
    agent_model_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for one model answer"
    )
    agent_model_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a model call on 429, 529, other 5xx and timeouts (with "
        "backoff) before the conversation is handed to staff",
    )
    agent_threads: int = Field(
        default=16, ge=1, le=256, description="Conversation turns answered at once"
    )
    sms_provider: str = Field(
        default="outbox",
        description="outbox (texts kept, sealed, in the database: `fhir-sched agent outbox`) "
        "or twilio",
    )
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = Field(
        default=None, description="Sends texts and checks X-Twilio-Signature on the webhook"
    )
    twilio_from_number: str | None = None
    sms_webhook_url: str | None = Field(
        default=None,
        description="The public URL Twilio calls (/agent/sms), exactly as configured there: "
        "the signature covers it (default: the public root + /agent/sms)",
    )

    @field_validator("host")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("metrics_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError(
                "must be at least 16 characters, e.g. the output of openssl rand -hex 32"
            )
        return value

    @field_validator("hl7_status_map")
    @classmethod
    def _statuses(cls, value: dict[str, str | dict[str, str]]) -> dict[str, str | dict[str, str]]:
        check_status_map(value)  # every target an Appointment.status, or refused at start-up
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        """SQLite and PostgreSQL through psycopg 3 are the databases the server is built and
        tested on; refused here, another URL fails later as a missing driver module. The
        messages never repeat the URL: it may hold a password."""
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL; {_DATABASES}") from None
        backend, driver = url.get_backend_name(), url.get_driver_name()
        if backend == "sqlite" and driver == "pysqlite":
            return value
        if backend == "postgresql" and driver == "psycopg":
            return value
        if backend == "postgresql":
            raise ValueError(
                f"{url.drivername} is not supported: PostgreSQL is reached through psycopg 3; "
                f"{_DATABASES}"
            )
        raise ValueError(f"{url.drivername} is not supported; {_DATABASES}")

    def check_bind(self) -> None:
        """Refuse a non-loopback bind unless it was asked for explicitly."""
        if self.host not in _LOOPBACK and not self.allow_remote:
            raise ValueError(
                f"refusing to listen on {self.host}: the server binds to loopback unless told "
                "otherwise; put TLS in front of it and set FHIRSCHED_ALLOW_REMOTE=true"
            )
        if self.hl7_listen:
            self.check_hl7_bind()

    def check_workers(self) -> None:
        """Several server processes share one PostgreSQL; SQLite and the bridge stay single."""
        if self.workers == 1:
            return
        if make_url(self.database_url).get_backend_name() != "postgresql":
            raise ValueError(
                f"{self.workers} workers need PostgreSQL: a SQLite file has one writer, so its "
                "server runs one process (set FHIRSCHED_WORKERS=1, or FHIRSCHED_DATABASE_URL "
                "to a postgresql+psycopg:// URL)"
            )
        if self.hl7_listen:
            raise ValueError(
                "the HL7 bridge runs once per database, not once per worker: with "
                f"{self.workers} workers set FHIRSCHED_HL7_LISTEN=false and run "
                "`fhir-sched hl7 listen` beside them"
            )

    def check_hl7_bind(self) -> None:
        """MLLP has no authentication: beyond loopback only when asked for explicitly."""
        if self.hl7_host not in _LOOPBACK and not self.allow_remote:
            raise ValueError(
                f"refusing to accept MLLP on {self.hl7_host}: MLLP carries no credentials, so "
                "expose it only on a network the EMR alone reaches (a VPN or a TLS tunnel) and "
                "set FHIRSCHED_ALLOW_REMOTE=true"
            )

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.key_file.with_name("signing-key.json")

    @property
    def audit_checkpoint_path(self) -> Path:
        return self.audit_checkpoint_file or self.key_file.with_name("audit-checkpoints.jsonl")

    @property
    def agent_key_path(self) -> Path:
        return self.agent_key_file or self.key_file.with_name("agent-key.json")

    @property
    def public_root(self) -> str:
        """The server's public URL without the ``/fhir`` suffix (where ``/auth`` lives)."""
        base = self.fhir_base
        return base[: -len("/fhir")] if base.endswith("/fhir") else base

    @property
    def fhir_base(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/fhir"
