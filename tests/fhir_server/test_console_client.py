"""The staff console's client: registered public, PKCE, at ``{public root}/console/``, by the
demo and by ``fhir-sched console register`` (idempotent; another address adds its URI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_server.cli import main
from fhir_server.console_client import CLIENT_ID, register_console
from resources.sql.engine import Database
from security.smart.registry import Client, get_client


def _client(url: str) -> Client | None:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            return get_client(conn, CLIENT_ID)
    finally:
        db.dispose()


def test_register_is_idempotent_and_adds_a_new_address(db: Database) -> None:
    with db.write() as conn:
        assert register_console(conn, "http://127.0.0.1:8080") == "registered"
        assert register_console(conn, "http://127.0.0.1:8080/") == "unchanged"
        assert register_console(conn, "https://clinic.example") == "updated"
        client = get_client(conn, CLIENT_ID)
    assert client is not None
    assert client.kind == "public"
    assert client.secret_hash is None
    assert client.redirect_uris == (
        "http://127.0.0.1:8080/console/",
        "https://clinic.example/console/",
    )
    assert "refresh_token" in client.grant_types  # offline_access: signed in for the day
    assert "patient/" not in client.scope  # a patient is granted nothing through it


def test_console_register_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("FHIRSCHED_DATABASE_URL", url)
    monkeypatch.setenv("FHIRSCHED_KEY_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("FHIRSCHED_BASE_URL", "https://clinic.example/fhir")
    first = CliRunner().invoke(main, ["console", "register"])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == (
        "client console: registered; open https://clinic.example/console/"
    )
    again = CliRunner().invoke(main, ["console", "register"])
    assert "client console: unchanged" in again.output
    client = _client(url)
    assert client is not None
    assert client.redirect_uris == ("https://clinic.example/console/",)
