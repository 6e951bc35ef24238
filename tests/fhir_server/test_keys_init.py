"""``fhir-sched keys init`` makes the three secret files a container mounts read-only (key
file, id_token signing key, the booking agent's key), keeps the ones already there, and touches
no database; the server then only reads them (docs/deploy.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agent.fhir import load_agent_key
from fhir_server.cli import main
from fhir_server.keyring import open_keys
from fhir_server.settings import Settings
from resources.sql.engine import Database, migrate
from security import crypto
from security.crypto import generate_key_material
from security.smart.signing import load_signer

FILES = {
    "key file": "FHIRSCHED_KEY_FILE",
    "signing key": "FHIRSCHED_SIGNING_KEY_FILE",
    "agent key": "FHIRSCHED_AGENT_KEY_FILE",
}


def _init(env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, ["keys", "init"], env=env)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    return {
        "FHIRSCHED_DATABASE_URL": f"sqlite:///{tmp_path}/never.db",
        "FHIRSCHED_KEY_FILE": str(secrets / "keys.json"),
        "FHIRSCHED_SIGNING_KEY_FILE": str(secrets / "signing-key.json"),
        "FHIRSCHED_AGENT_KEY_FILE": str(secrets / "agent-key.json"),
    }


def test_it_makes_the_three_files_0600_and_no_database(env: dict[str, str], tmp_path: Path) -> None:
    result = _init(env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{what}: created {env[v]}" for what, v in FILES.items()]
    files = [Path(env[v]) for v in FILES.values()]
    assert [oct(f.stat().st_mode & 0o777) for f in files] == ["0o600"] * 3
    assert not (tmp_path / "never.db").exists()
    assert json.loads(files[0].read_text())["active"]  # each is what the server reads
    load_signer(path=files[1], key_json=None)
    load_agent_key(files[2])


def test_it_keeps_what_is_there(env: dict[str, str]) -> None:
    assert _init(env).exit_code == 0
    files = [Path(env[v]) for v in FILES.values()]
    before = [f.read_bytes() for f in files]
    again = _init(env)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines() == [f"{what}: kept {env[v]}" for what, v in FILES.items()]
    assert [f.read_bytes() for f in files] == before


def test_keys_given_through_the_environment_are_not_written(env: dict[str, str]) -> None:
    env["FHIRSCHED_KEYS"] = json.dumps(generate_key_material())
    result = _init(env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "key file: given through the environment"
    assert not Path(env["FHIRSCHED_KEY_FILE"]).exists()


def test_the_server_only_reads_them(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only mount: once made, opening the keys writes nothing (not even a lock file)."""
    assert _init(env).exit_code == 0

    def refused(*_args: object, **_kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(crypto, "_locked", refused)
    monkeypatch.setattr(crypto, "_write", refused)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/server.db",
        key_file=Path(env["FHIRSCHED_KEY_FILE"]),
        signing_key_file=Path(env["FHIRSCHED_SIGNING_KEY_FILE"]),
    )
    database = Database(settings.database_url)
    try:
        migrate(database)
        assert open_keys(settings, database).active
    finally:
        database.dispose()
    load_signer(path=settings.signing_key_path, key_json=None)


@pytest.mark.parametrize("command", [["rotate"], ["retire", "k-old"]], ids=["rotate", "retire"])
def test_rewriting_a_read_only_key_file_is_refused_in_one_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    assert _init(env).exit_code == 0
    key_file = Path(env["FHIRSCHED_KEY_FILE"])
    before = key_file.read_bytes()
    access = os.access
    monkeypatch.setattr(  # root writes through mode bits: a read-only mount, as access sees it
        "fhir_server.cli.os.access",
        lambda path, mode: access(path, mode) and Path(path) not in (key_file, key_file.parent),
    )
    result = CliRunner().invoke(main, ["keys", *command], env=env)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: the key file {key_file} cannot be rewritten here (is it mounted read-only?): "
        f"run `fhir-sched keys {command[0]}` with FHIRSCHED_KEY_FILE naming the writable file "
        'it is mounted from (docs/deploy.md, "Rotating keys")\n'
    )
    assert key_file.read_bytes() == before
