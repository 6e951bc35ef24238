"""Wiring of the booking agent (``agent/``) into the server: its configuration from the
settings and the clinic file, its registration as a SMART Backend Services client, its model,
its SMS provider and its tables.

The agent stays a client: it gets a URL, a client id and a signing key, never a database
handle for FHIR data. Its own tables (conversations, transcripts, the SMS outbox) are reached
through the connection factories handed to :class:`agent.store.AgentStore`.
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import Connection

from agent.config import AgentConfig, Clinician, Directory, Place, VisitKind
from agent.engine import Agent
from agent.fhir import AGENT_SCOPE, FhirClient, generate_agent_key, public_jwks
from agent.model import Model, make_model
from agent.offline import OfflineModel
from agent.sms import OutboxSms, SmsProvider, TwilioSms
from agent.store import AgentStore
from fhir_server.agent_conversations import OptOutAware, opted_out_check
from fhir_server.settings import Settings
from resources.sql.engine import Database
from scheduling.config import ClinicConfig
from security.crypto import KeyRing
from security.smart.registry import add_client, get_client

__all__ = [
    "agent_config",
    "agent_store",
    "build_agent",
    "directory_of",
    "register_agent",
    "sms_provider",
]


def directory_of(clinic: ClinicConfig) -> Directory:
    """What a patient may know of the clinic, from its file."""
    everyone = tuple(p.id for p in clinic.practitioners)
    return Directory(
        name=clinic.name,
        timezone=clinic.timezone,
        visits=tuple(
            VisitKind(
                v.code,
                v.display,
                v.minutes,
                v.patients,
                tuple(v.practitioners) if v.practitioners is not None else everyone,
            )
            for v in clinic.visit_types
        ),
        clinicians=tuple(
            Clinician(p.id, clinic.practitioner_names[p.id], p.family) for p in clinic.practitioners
        ),
        places=tuple(Place(loc.id, loc.name) for loc in clinic.locations),
        phone=next((loc.phone for loc in clinic.locations if loc.phone), None),
        cancellation_notice_hours=clinic.rules.cancellation_notice_hours,
    )


def agent_config(settings: Settings, clinic: ClinicConfig) -> AgentConfig:
    key = settings.anthropic_api_key
    fhir_base = (settings.agent_fhir_url or settings.fhir_base).rstrip("/")
    audience = f"{settings.public_root}/auth/token"  # what the server checks the assertion for
    return AgentConfig(
        fhir_base=fhir_base,
        # asked where the agent reaches the server, which may not be the public address
        token_url=f"{fhir_base.removesuffix('/fhir')}/auth/token",
        token_audience=audience,
        client_id=settings.agent_client_id,
        key_file=settings.agent_key_path,
        directory=directory_of(clinic),
        model=settings.agent_model,
        api_key=key.get_secret_value() if key else None,
        base_url=settings.agent_model_base_url,
        model_timeout=settings.agent_model_timeout,
        model_retries=settings.agent_model_retries,
        sms_from=settings.twilio_from_number,
    )


def register_agent(conn: Connection, settings: Settings) -> bool:
    """Register the agent's client (asymmetric, ES384, ``$find`` and ``$book`` only) with a
    key pair made for it; False if it is registered already."""
    key = generate_agent_key(settings.agent_key_path)
    if get_client(conn, settings.agent_client_id) is not None:
        return False
    add_client(
        conn,
        name="Booking agent (SMS and web chat)",
        kind="asymmetric",
        scope=AGENT_SCOPE,
        jwks=public_jwks(key),
        client_id=settings.agent_client_id,
    )
    return True


def sms_provider(settings: Settings, store: AgentStore) -> SmsProvider:
    if settings.sms_provider == "twilio":
        if not (
            settings.twilio_account_sid
            and settings.twilio_auth_token
            and settings.twilio_from_number
        ):
            raise ValueError(
                "FHIRSCHED_SMS_PROVIDER=twilio needs FHIRSCHED_TWILIO_ACCOUNT_SID, "
                "FHIRSCHED_TWILIO_AUTH_TOKEN and FHIRSCHED_TWILIO_FROM_NUMBER"
            )
        return TwilioSms(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number,
        )
    if settings.sms_provider != "outbox":
        raise ValueError(
            f"FHIRSCHED_SMS_PROVIDER must be outbox or twilio, not {settings.sms_provider!r}"
        )
    return OutboxSms(store)


def agent_store(db: Database, keys: KeyRing) -> AgentStore:
    return AgentStore(write=db.write, read=db.read, keys=keys)


def build_agent(
    settings: Settings,
    *,
    db: Database,
    keys: KeyRing,
    clinic: ClinicConfig,
    http: httpx.Client | None = None,
    model: Model | None = None,
    **extra: Any,
) -> Agent | None:
    """The agent, if it can run here: a clinic file and a registered client with its key."""
    if not settings.agent_enabled or not settings.agent_key_path.exists():
        return None
    with db.read() as conn:
        if get_client(conn, settings.agent_client_id) is None:
            return None
    config = agent_config(settings, clinic)
    store = agent_store(db, keys)
    fhir = FhirClient(config, http=http)
    offline = OfflineModel(config.directory, extra.get("clock"))
    return Agent(
        config=config,
        store=store,
        fhir=fhir,
        model=model or make_model(config, offline),
        # no text to a number that opted out of automated texts (STOP)
        sms=OptOutAware(
            sms_provider(settings, store), opted_out_check(db, keys, clinic.phone_region)
        ),
        **extra,
    )
