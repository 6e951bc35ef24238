"""Running the bridge from Settings: the MLLP listener and one sender per configured EMR,
alone (``fhir-sched hl7 listen``) or inside the HTTP server's event loop
(``FHIRSCHED_HL7_LISTEN=true``); and the outbox, installed in every process that changes
Appointments. Run one bridge per database: two would deliver each outbound message twice."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from zoneinfo import ZoneInfo

from fhir_server.settings import Settings
from hl7_bridge.listener import BridgeConfig, Listener
from hl7_bridge.mllp import MLLPServer
from hl7_bridge.outbound import Outbox, Sender
from resources.sql.engine import Database
from resources.store import Store
from scheduling.config import ClinicConfig

__all__ = ["Bridge", "bridge_config", "install_outbox", "start_bridge"]


def bridge_config(settings: Settings, clinic: ClinicConfig | None) -> BridgeConfig:
    zone: tzinfo = UTC
    if settings.hl7_sender_timezone:
        zone = ZoneInfo(settings.hl7_sender_timezone)
    elif clinic is not None:
        zone = clinic.tz
    return BridgeConfig(
        sender_tz=zone,
        status_map=settings.hl7_status_map,
        identifier_systems=settings.hl7_identifier_systems,
        server=settings.fhir_base,
        audit=settings.audit_enabled,
    )


def install_outbox(settings: Settings, store: Store) -> None:
    """Queue SIU messages for the configured EMRs with every Appointment change."""
    if settings.hl7_endpoints:
        outbox = Outbox(
            store,
            settings.hl7_endpoints,
            application=settings.hl7_application,
            facility=settings.hl7_facility,
        )
        store.watch("Appointment", outbox.on_change)


@dataclass
class Bridge:
    server: MLLPServer
    port: int
    senders: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        await self.server.close()
        for task in self.senders:
            task.cancel()
        for task in self.senders:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def start_bridge(
    settings: Settings,
    *,
    db: Database,
    store: Store,
    clinic: ClinicConfig | None,
    own_loop: bool = False,
) -> Bridge:
    """Bind the MLLP listener and start the senders (``store`` must have its outbox).
    ``own_loop``: the event loop runs nothing but the bridge (``hl7 listen``, not ``serve``),
    so on SQLite inbound groups are written on it, without a thread hop."""
    settings.check_hl7_bind()
    listener = Listener(
        db,
        store.keys,
        store,
        clinic=clinic,
        config=bridge_config(settings, clinic),
        inline_writes=own_loop and db.is_sqlite,
    )
    server = MLLPServer(listener.handle, max_size=settings.hl7_max_message_bytes)
    port = await server.start(settings.hl7_host, settings.hl7_port)
    senders = [
        asyncio.create_task(
            Sender(
                db,
                store,
                endpoint,
                server=settings.fhir_base,
                ack_timeout=settings.hl7_ack_timeout,
                audit=settings.audit_enabled,
            ).run(),
            name=f"hl7-sender-{endpoint.name}",
        )
        for endpoint in settings.hl7_endpoints
    ]
    return Bridge(server, port, senders)
