"""Configuration mistakes answered by the real `fhir-sched` in one line, without a traceback
unless FHIRSCHED_LOG_LEVEL=debug (fhir_server/cli_errors.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.server import EXE, free_port


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("FHIRSCHED_")
    }  # only the mistakes under test
    given = {
        "FHIRSCHED_DATABASE_URL": f"sqlite:///{tmp_path}/fhir.db",
        "FHIRSCHED_KEY_FILE": str(tmp_path / "keys.json"),
        "FHIRSCHED_PORT": str(free_port()),
        **env,
    }
    return subprocess.run(
        [str(EXE), *args],
        env={**base, **given},
        capture_output=True,
        text=True,
        timeout=60,
    )


def unreachable() -> str:
    return f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/fhir"


CASES = [
    pytest.param(
        ("db", "upgrade"),
        {"FHIRSCHED_PORT": "abc"},
        "Error: FHIRSCHED_PORT: 'abc' is not an integer",
        id="port-not-a-number",
    ),
    pytest.param(
        ("serve",),
        {"FHIRSCHED_WORKERS": "100"},
        "Error: FHIRSCHED_WORKERS: '100' is out of range; it must be at most 64",
        id="workers-out-of-range",
    ),
    pytest.param(
        ("serve",),
        {"FHIRSCHED_CLINIC_FILE": "/nowhere/clinic.yaml"},
        "Error: FHIRSCHED_CLINIC_FILE: '/nowhere/clinic.yaml' is not a file; name an existing file",
        id="clinic-file-missing",
    ),
    pytest.param(
        ("user", "list"),
        {"FHIRSCHED_DATABASE_URL": "mysql://app:s3cret@127.0.0.1/fhir"},
        "Error: FHIRSCHED_DATABASE_URL: mysql is not supported; use sqlite:///path or "
        "postgresql+psycopg://user@host:port/db",
        id="database-unsupported",
    ),
    pytest.param(
        ("db", "upgrade"),
        {"FHIRSCHED_DATABASE_URL": "unreachable"},
        "Error: cannot reach the database at postgresql+psycopg://app@127.0.0.1:{port}/fhir "
        "(password hidden): connection refused",
        id="database-unreachable",
    ),
    pytest.param(
        ("serve",),
        {"FHIRSCHED_ANTHROPIC_API_KEY": "sk-never-shown", "FHIRSCHED_AGENT_THREADS": "x"},
        "Error: FHIRSCHED_AGENT_THREADS: 'x' is not an integer",
        id="secret-setting-beside",
    ),
]


@pytest.mark.parametrize(("args", "env", "expected"), CASES)
def test_a_configuration_mistake_is_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    if env.get("FHIRSCHED_DATABASE_URL") == "unreachable":
        url = unreachable()
        env = {**env, "FHIRSCHED_DATABASE_URL": url}
        expected = expected.format(port=url.rsplit(":", 1)[1].split("/")[0])
    done = run(tmp_path, *args, **env)
    assert done.returncode != 0
    assert done.stderr.splitlines() == [expected], done.stderr
    assert "s3cret" not in done.stderr
    assert "sk-never-shown" not in done.stderr


def test_several_bad_settings_are_a_line_each(tmp_path: Path) -> None:
    done = run(
        tmp_path,
        "db",
        "upgrade",
        FHIRSCHED_PORT="abc",
        FHIRSCHED_ALLOW_REMOTE="maybe",
        FHIRSCHED_KEYS="",
        FHIRSCHED_HL7_ENDPOINTS='[{"name": "emr", "host": "10.0.0.9", "port": "z"}]',
    )
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        "Error: FHIRSCHED_PORT: 'abc' is not an integer",
        "FHIRSCHED_ALLOW_REMOTE: 'maybe' is not true or false",
        "FHIRSCHED_HL7_ENDPOINTS[0][port]: 'z' is not an integer",
    ]


def test_a_bad_clinic_file_is_refused_before_the_server_says_where_it_serves(
    tmp_path: Path,
) -> None:
    clinic = tmp_path / "clinic.yaml"
    clinic.write_text("name: x\n")
    done = run(tmp_path, "serve", FHIRSCHED_CLINIC_FILE=str(clinic))
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert lines[0] == f"Error: FHIRSCHED_CLINIC_FILE: {clinic} is not a valid clinic file:"
    assert all(line.startswith("  ") for line in lines[1:]), done.stderr  # one per problem
    assert "FHIR base URL" not in done.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = run(tmp_path, "db", "upgrade", FHIRSCHED_PORT="abc", FHIRSCHED_LOG_LEVEL="debug")
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr
    assert "ValidationError" in done.stderr
    unreached = run(
        tmp_path, "db", "upgrade", FHIRSCHED_DATABASE_URL=unreachable(), FHIRSCHED_LOG_LEVEL="DEBUG"
    )
    assert unreached.returncode != 0
    assert "sqlalchemy.exc.OperationalError" in unreached.stderr
