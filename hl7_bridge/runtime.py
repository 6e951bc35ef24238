"""Running the bridge: the MLLP listener built from Settings, alone (``fhir-sched hl7
listen``) or inside the HTTP server's event loop (``FHIRSCHED_HL7_LISTEN=true``)."""

from __future__ import annotations

from datetime import UTC
from zoneinfo import ZoneInfo

from fhir_server.scheduling.config import ClinicConfig
from fhir_server.settings import Settings
from hl7_bridge.listener import BridgeConfig, Listener
from hl7_bridge.mllp import MLLPServer
from resources.sql.engine import Database
from resources.store import Store
from security.crypto import KeyRing

__all__ = ["bridge_config", "start_listener"]


def bridge_config(settings: Settings, clinic: ClinicConfig | None) -> BridgeConfig:
    if settings.hl7_sender_timezone:
        zone = ZoneInfo(settings.hl7_sender_timezone)
    else:
        zone = ZoneInfo(clinic.timezone) if clinic is not None else ZoneInfo("UTC")
    return BridgeConfig(
        sender_tz=zone if zone.key != "UTC" else UTC,
        status_map=settings.hl7_status_map,
        identifier_systems=settings.hl7_identifier_systems,
        server=settings.fhir_base,
        audit=settings.audit_enabled,
    )


async def start_listener(
    settings: Settings,
    *,
    db: Database,
    keys: KeyRing,
    store: Store,
    clinic: ClinicConfig | None,
) -> tuple[MLLPServer, int]:
    """Bind the MLLP listener; returns it and the port it listens on."""
    settings.check_hl7_bind()
    listener = Listener(db, keys, store, clinic=clinic, config=bridge_config(settings, clinic))
    server = MLLPServer(listener.handle, max_size=settings.hl7_max_message_bytes)
    port = await server.start(settings.hl7_host, settings.hl7_port)
    return server, port
