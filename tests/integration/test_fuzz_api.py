"""Schemathesis over the server's own OpenAPI document, against the real `fhir-sched serve`.

The server runs on SQLite with the demo clinic loaded (so `$find`, `$hold` and `$book` have
Slots to work on). Every operation the document lists is called with generated requests, valid
and invalid ones: with a full-access token, no response may be a 5xx or break the document's
schemas; without a token, or with one the server never issued, every protected operation
answers 401 with an OperationOutcome.

Generation is derandomized and bounded (``EXAMPLES`` per operation and mode), so a run is
reproducible and takes about a minute on an idle 2-core machine; failures are collected, not
shrunk, and each is reported once per operation with a curl command that repeats it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from fhir_server.demo import DEMO_CLINIC, load_demo
from fhir_server.settings import Settings
from resources.sql.engine import Database
from tests.integration.server import Server, running_server, server_env
from tests.smart import FULL_ACCESS, backend_form, register_backend

EXAMPLES = 25  # per operation and generation mode; the run's time grows with it
NO_TOKEN_EXAMPLES = 3  # the token is checked before anything else is read
CHECKS = [not_a_server_error, response_schema_conformance]
# The audit log takes a scope of its own: a wildcard does not reach it.
SCOPE = f"{FULL_ACCESS} system/AuditEvent.rs"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("fuzz")
    env = server_env(
        tmp_path, f"sqlite:///{tmp_path}/server.db", FHIRSCHED_CLINIC_FILE=str(DEMO_CLINIC)
    )
    load_demo(
        Settings(database_url=env["FHIRSCHED_DATABASE_URL"], key_file=tmp_path / "keys.json"),
        weeks=1,
    )
    with running_server(tmp_path, env) as running:
        yield running


@pytest.fixture(scope="module")
def api(server: Server) -> Any:
    config = schemathesis.Config.from_dict(
        # the token is the test's to give or withhold, never a generated one
        {"request-timeout": 30, "generation": {"with-security-parameters": False}}
    )
    return schemathesis.openapi.from_url(f"{server.root}/openapi.json", config=config)


def _bearer(server: Server) -> Callable[[], dict[str, str]]:
    """Authorization for a backend client registered for everything, the audit log included,
    renewed before the token's 300 s run out (a slow machine may fuzz for longer)."""
    db = Database(server.env["FHIRSCHED_DATABASE_URL"])
    try:
        client_id = register_backend(db, client_id=f"fuzz-{uuid.uuid4().hex[:8]}", scope=SCOPE)
    finally:
        db.dispose()
    held: list[tuple[float, str]] = []

    def headers() -> dict[str, str]:
        if not held or held[0][0] < time.monotonic():
            form = backend_form(client_id, f"{server.root}/auth/token", SCOPE)
            resp = httpx.post(f"{server.root}/auth/token", data=form, timeout=30)
            assert resp.status_code == 200, resp.text
            held[:] = [(time.monotonic() + 200, str(resp.json()["access_token"]))]
        return {"Authorization": f"Bearer {held[0][1]}"}

    return headers


def _fuzz(
    operation: Any, call: Callable[[schemathesis.Case], None], examples: int = EXAMPLES
) -> list[str]:
    """``call`` on ``examples`` generated cases of each mode; each distinct failure once."""
    found: dict[str, str] = {}

    def record(case: schemathesis.Case, failures: list[AssertionError]) -> None:
        for failure in failures:
            title = failure.title if isinstance(failure, Failure) else str(failure)
            found.setdefault(title, f"{failure}\n    {case.as_curl_command()}")

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            try:
                call(case)
            except FailureGroup as group:
                record(case, list(group.exceptions))
            except AssertionError as failure:
                record(case, [failure])

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to make invalid: no parameters
    return [f"{operation.label}: {text}" for text in found.values()]


def test_no_server_error_and_every_response_as_documented(
    server: Server, api: Any, subtests: pytest.Subtests
) -> None:
    headers = _bearer(server)
    for result in api.get_all_operations():
        operation = result.ok()
        with subtests.test(operation.label):
            failures = _fuzz(
                operation, lambda case: case.call_and_validate(headers=headers(), checks=CHECKS)
            )
            assert not failures, "\n\n".join(failures)


def _refused(case: schemathesis.Case) -> None:
    """No token, or one this server never issued: a protected route answers 401 with an
    OperationOutcome and a Bearer challenge; an open one answers as documented."""
    secured = bool(case.operation.definition.raw.get("security"))
    for headers in ({}, {"Authorization": "Bearer not-a-token-of-ours"}):
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS)
        if secured:
            assert response.status_code == 401, f"{response.status_code} without a token"
            assert response.json()["resourceType"] == "OperationOutcome"
            challenge = response.headers.get("www-authenticate", [""])  # values by lower name
            assert challenge[0].startswith("Bearer"), "no Bearer challenge"


def test_without_a_usable_token_every_protected_route_is_401(
    api: Any, subtests: pytest.Subtests
) -> None:
    for result in api.get_all_operations():
        operation = result.ok()
        with subtests.test(operation.label):
            failures = _fuzz(operation, _refused, examples=NO_TOKEN_EXAMPLES)
            assert not failures, "\n\n".join(failures)
