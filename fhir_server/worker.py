"""The app factory of a server process when ``fhir-sched serve`` runs several.

Uvicorn starts each worker as a fresh interpreter that imports :func:`create`, so the settings
the command was given (its options, and what ``demo`` fills in) travel in the environment, as
``FHIRSCHED_*`` variables the workers' :class:`Settings` read like any other. The command
migrates the schema first; each worker then builds its own app, database pool and audit writer.
Nothing else is shared between them but the database: tokens, idempotency keys, holds and the
audit chain's head all live there.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI
from pydantic import SecretStr

from fhir_server.settings import Settings

__all__ = ["create", "hand_over"]


def hand_over(settings: Settings) -> None:
    """Put into this process's environment (which the workers inherit) every setting whose
    value differs from what the environment alone gives."""
    plain = Settings()
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value == getattr(plain, name):
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        else:
            dumped = settings.model_dump(mode="json", include={name})[name]
            text = dumped if isinstance(dumped, str) else json.dumps(dumped)
        os.environ[f"FHIRSCHED_{name.upper()}"] = text


def create() -> FastAPI:
    """One worker's app, from the environment (see :func:`hand_over`)."""
    from fhir_server.app import create_app
    from fhir_server.heap import settle_heap
    from fhir_server.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    settle_heap()
    return app
