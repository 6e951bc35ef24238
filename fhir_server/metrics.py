"""Prometheus metrics: what an operator watches, counted where it happens, served at
``/metrics`` (``fhir_server/routes/metrics.py``) when ``FHIRSCHED_METRICS_TOKEN`` is set.

* ``fhirsched_http_requests_total{method, route, status}`` and
  ``fhirsched_http_request_duration_seconds{method, route}`` (a histogram), by
  :class:`MetricsMiddleware`. ``route`` is the route's template (``/fhir/Patient/{rid}``: a
  served type is named, an id never), ``unmatched`` when no route took the request; a method
  outside HTTP's usual ones is ``other``. Nothing a client sent reaches a label as it was sent.
* ``fhirsched_book_outcomes_total{outcome}``: each ``$book`` answered: ``booked`` (201, a new
  booking or a reschedule), ``changed`` (200: modified), ``cancelled`` (200), ``conflict``
  (409: the time was taken or is no longer offered), ``refused`` (422 FS-0423, a clinic rule),
  ``invalid`` (any other 4xx) or ``error`` (5xx).
* ``fhirsched_token_requests_total{grant_type, outcome}``: the token endpoint's answers,
  ``granted`` or the OAuth error code (``invalid_client``, ``invalid_grant``, …).
* ``fhirsched_signins_total{outcome}``: sign-ins on the authorization pages (``succeeded``,
  ``failed``: a wrong user name or password, ``throttled``).
* ``fhirsched_audit_write_failures_total``: batches of audit records the log refused (each of
  their requests was answered 503).
* ``fhirsched_hl7_messages{direction, status}``: the HL7 messages in the message store, read
  from the database at each scrape, so the count includes what a separate ``fhir-sched hl7
  listen`` process handled.

With several server processes (``serve --workers N``) each process writes its counts to
files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory ``serve`` makes) and a scrape of any
of them adds up all of them (prometheus_client's multiprocess mode).

See https://prometheus.io/docs/practices/naming/ and
https://prometheus.io/docs/practices/instrumentation/#things-to-watch-out-for (label values
are bounded).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from base.errors import BusinessRule, Conflict, FHIRError
from conformance.declaration import RESOURCE_TYPES
from resources.sql.tables import HL7Message

__all__ = ["MULTIPROCESS_DIR", "Metrics", "MetricsMiddleware", "hl7_message_counts"]

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable

# A request is mostly well under 50 ms; $find over a wide window and a Bundle take longer.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BOOK_OUTCOMES = ("booked", "changed", "cancelled", "conflict", "refused", "invalid", "error")
GRANT_TYPES = ("authorization_code", "client_credentials", "refresh_token")
# RFC 6749 §5.2 and RFC 6750: what the token endpoint answers; anything else counts as "other"
TOKEN_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)
SIGNIN_OUTCOMES = ("succeeded", "failed", "throttled")
# hl7_bridge/messages.py: the statuses a message row takes, by direction
HL7_STATUSES = {
    "in": ("received", "applied", "conflict", "superseded", "failed", "rejected"),
    "out": ("pending", "sent", "rejected"),
}


class Metrics:
    """One process's counters and histograms, and the scrape that renders them."""

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fhirsched_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "fhirsched_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method and route "
            "template (audit records included: an answer waits for them)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.book = Counter(
            "fhirsched_book_outcomes",
            "Appointment/$book answers: booked, changed, cancelled, conflict (the time was "
            "taken or is no longer offered), refused (a clinic rule), invalid, error",
            ["outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "fhirsched_token_requests",
            "Token endpoint answers by grant type: granted, or the OAuth error",
            ["grant_type", "outcome"],
            registry=r,
        )
        self.signins = Counter(
            "fhirsched_signins",
            "Sign-ins on the authorization pages: succeeded, failed (wrong user name or "
            "password), throttled (refused for too many failures)",
            ["outcome"],
            registry=r,
        )
        self.audit_failures = Counter(
            "fhirsched_audit_write_failures",
            "Batches of audit records the audit log refused (their requests were answered 503)",
            registry=r,
        )
        for outcome in BOOK_OUTCOMES:  # present from the start, so rate() sees the first one
            self.book.labels(outcome)
        for outcome in SIGNIN_OUTCOMES:
            self.signins.labels(outcome)
        for grant in GRANT_TYPES:
            self.tokens.labels(grant, "granted")
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    @classmethod
    def from_environment(cls) -> Metrics:
        """This process's metrics, in multiprocess mode when ``serve`` set the directory."""
        return cls(multiprocess_dir=os.environ.get(MULTIPROCESS_DIR) or None)

    # -- counting ---------------------------------------------------------------------------
    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a tuple: once per key
            if len(self._children) > 10_000:
                self._children.clear()
            children = (self.requests.labels(*key), self.latency.labels(method, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def booked(self, status: int, cancelled: bool) -> None:
        """A ``$book`` that succeeded: 201 booked, else a cancellation or a change."""
        if status == 201:
            self.book.labels("booked").inc()
        elif cancelled:
            self.book.labels("cancelled").inc()
        else:
            self.book.labels("changed").inc()

    def book_failed(self, exc: Exception) -> None:
        """A ``$book`` that failed with ``exc``."""
        if isinstance(exc, BusinessRule):
            outcome = "refused"
        elif isinstance(exc, Conflict):
            outcome = "conflict"
        elif isinstance(exc, FHIRError) and exc.status < 500:
            outcome = "invalid"
        else:
            outcome = "error"
        self.book.labels(outcome).inc()

    def token(self, grant_type: str | None, status: int, error: object) -> None:
        grant = grant_type if grant_type in GRANT_TYPES else "other"
        if status == 200:
            outcome = "granted"
        else:
            outcome = error if isinstance(error, str) and error in TOKEN_ERRORS else "other"
        self.tokens.labels(grant, outcome).inc()

    def signin(self, outcome: str) -> None:
        self.signins.labels(outcome).inc()

    # -- the scrape ---------------------------------------------------------------------------
    def render(self, extra: Iterable[Metric], accept: str | None) -> tuple[bytes, str]:
        """The exposition for a scraper sending ``accept``: this process's metrics (every
        process's, in multiprocess mode) and ``extra``. Returns the body and its type."""
        scrape = CollectorRegistry()
        if self.multiprocess_dir is not None:
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                scrape, path=self.multiprocess_dir
            )
        else:
            scrape.register(_Registered(self.registry))
        scrape.register(_Fixed(list(extra)))
        encoder, content_type = choose_encoder(accept or "")
        return encoder(scrape), content_type


class _Registered(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return iter(self.registry.collect())


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


_COUNTS = select(HL7Message.direction, HL7Message.status, func.count()).group_by(
    HL7Message.direction, HL7Message.status
)


def hl7_message_counts(conn: Connection) -> GaugeMetricFamily:
    """``fhirsched_hl7_messages{direction, status}``: the message store's rows, counted on its
    (direction, status, next_attempt) index; every known status is present, 0 or not."""
    counts = {(d, s): 0 for d, statuses in HL7_STATUSES.items() for s in statuses}
    for direction, status, n in conn.execute(_COUNTS):
        counts[(str(direction), str(status))] = int(n)
    family = GaugeMetricFamily(
        "fhirsched_hl7_messages",
        "HL7 v2 messages in the message store, by direction (in, out) and status (in: "
        "received, applied, conflict, superseded, failed, rejected; out: pending, sent, "
        "rejected)",
        labels=["direction", "status"],
    )
    for (direction, status), n in sorted(counts.items()):
        family.add_metric([direction, status], n)
    return family


def route_of(scope: Scope) -> str:
    """The template of the route that took the request, a served type named in place of
    ``{rtype}``; ``unmatched`` if none did."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        return "unmatched"
    rtype = (scope.get("path_params") or {}).get("rtype")
    if rtype in RESOURCE_TYPES and "{rtype}" in template:
        template = template.replace("{rtype}", rtype)
    return template


class MetricsMiddleware:
    """Pure ASGI middleware, outermost: each HTTP request counted by method, route template
    and status, and timed from its arrival to the end of its answer."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope.get("method", "")
            self.metrics.request(
                method if method in METHODS else "other",
                route_of(scope),
                status,
                time.perf_counter() - started,
            )
