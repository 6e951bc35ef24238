"""Scheduling fixtures shared by the $find and $hold/$book tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.store import Store
from scheduling.clinic import load_clinic
from scheduling.config import parse_clinic_config
from security.crypto import KeyRing
from tests.scheduling.test_find import MONDAY, app_client, cfg  # noqa: F401 - re-exported
from tests.smart import backend_token

ClientFor = Callable[[dict[str, Any]], TestClient]


@pytest.fixture
def client_for(db: Database, keys: KeyRing, store: Store, tmp_path: Path) -> Iterator[ClientFor]:
    """A server for this clinic file (its Slots loaded for the week of ``MONDAY``), with a
    full-access backend token; call it once per test."""
    with ExitStack() as stack:

        def build(data: dict[str, Any]) -> TestClient:
            path = tmp_path / "clinic.yaml"
            path.write_text(yaml.safe_dump(data))
            config = parse_clinic_config(data)
            with db.write() as conn:
                load_clinic(conn, store=store, config=config, today=MONDAY, weeks=1)
            settings = Settings(
                database_url="sqlite://",
                key_file=tmp_path / "k.json",
                base_url="http://testserver/fhir",
                clinic_file=path,
            )
            app = create_app(settings, keys=keys, db=db)
            c = stack.enter_context(TestClient(app, raise_server_exceptions=False))
            c.headers["Authorization"] = f"Bearer {backend_token(c, db)}"
            return c

        yield build
