"""structlog JSON events. Log ids and event names only: never names, phones, tokens or bodies.

Records from the standard library's ``logging`` (uvicorn, alembic, psycopg, authlib) are rendered
as JSON events too, one per line, by their message *template*: the arguments a library
interpolates can be tokens or request data (authlib logs issued tokens at debug level), so they
are dropped. An exception attached to a record is reduced to its type and frames: exception
messages and tracebacks' source lines can quote request data, which may be PHI.

>>> import io
>>> out = io.StringIO()
>>> configure_logging("info", stream=out)
>>> get_logger("demo").info("appointment.booked", appointment_id="a1")
>>> '"event": "appointment.booked"' in out.getvalue()
True
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

import structlog

__all__ = ["JSONFormatter", "configure_logging", "exception_frames", "get_logger"]


def exception_frames(tb: TracebackType | None, *, limit: int = 8) -> list[str]:
    """``file:line:function`` of the innermost ``limit`` frames, without source text."""
    return [f"{f.filename}:{f.lineno}:{f.name}" for f in traceback.extract_tb(tb)][-limit:]


class JSONFormatter(logging.Formatter):
    """A standard-library record as a JSON event shaped like structlog's."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            **structlog.contextvars.get_contextvars(),
            # the template, never the interpolated arguments (see the module docstring)
            "event": str(record.msg).strip() if record.args else record.getMessage().strip(),
            "logger": record.name,
            "level": record.levelname.lower(),
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            event["error_type"] = type(exc).__name__
            event["where"] = exception_frames(exc.__traceback__)
        return json.dumps(event, default=str)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send structlog events and standard-library records to ``stream`` as JSON lines."""
    out = stream or sys.stderr
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("authlib").setLevel(max(numeric, logging.INFO))  # its debug quotes tokens
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
