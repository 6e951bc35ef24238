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
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI
from pydantic import SecretStr

from fhir_server.settings import Settings

__all__ = ["create", "hand_over", "serving_app", "shared_metrics", "worker_env"]


def worker_env(settings: Settings) -> dict[str, str | None]:
    """The ``FHIRSCHED_*`` variables that give a worker ``settings``: every setting whose value
    differs from what the environment alone gives (None: the variable is to be unset)."""
    plain = Settings()
    out: dict[str, str | None] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value == getattr(plain, name):
            continue
        text: str | None = None  # cleared: the field's default (every such default is None)
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif value is not None:
            dumped = settings.model_dump(mode="json", include={name})[name]
            text = dumped if isinstance(dumped, str) else json.dumps(dumped)
        out[f"FHIRSCHED_{name.upper()}"] = text
    return out


def hand_over(settings: Settings) -> None:
    """Put :func:`worker_env` into this process's environment, which the workers inherit."""
    for name, text in worker_env(settings).items():
        if text is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = text


@contextmanager
def shared_metrics(settings: Settings) -> Iterator[None]:
    """While the workers run, a fresh directory where each writes its metrics and from which a
    scrape of any of them adds up all of them (prometheus_client's multiprocess mode, told by
    ``PROMETHEUS_MULTIPROC_DIR``, which the workers inherit); removed when they stop, so a
    restart starts from zero as a single process does. Nothing when metrics are off."""
    from fhir_server.metrics import MULTIPROCESS_DIR

    if settings.metrics_token is None:
        yield
        return
    directory = tempfile.mkdtemp(prefix="fhir-sched-metrics-")
    before = os.environ.get(MULTIPROCESS_DIR)
    os.environ[MULTIPROCESS_DIR] = directory
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MULTIPROCESS_DIR, None)
        else:
            os.environ[MULTIPROCESS_DIR] = before
        shutil.rmtree(directory, ignore_errors=True)


def serving_app(settings: Settings) -> FastAPI:
    """The app a server process serves, its start-up heap settled (one process or each of
    several)."""
    from fhir_server.app import create_app
    from fhir_server.heap import settle_heap

    app = create_app(settings)
    settle_heap()
    return app


def create() -> FastAPI:
    """One worker's app, from the environment (see :func:`worker_env`)."""
    from base.logging import configure_logging
    from fhir_server.protocol import use_settings

    settings = Settings()
    configure_logging(settings.log_level)
    use_settings(settings)
    return serving_app(settings)
