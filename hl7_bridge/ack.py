"""HL7 v2 acknowledgements, built from the inbound message's own bytes.

MSA-2 must equal the inbound MSH-10 byte for byte, so the header is read with the message's own
delimiters (MSH-1, MSH-2) and echoed fields are copied, never re-encoded; sender and receiver
are swapped, the version is echoed and the ACK gets a fresh control id. Original mode: ``AA``
(applied), ``AE`` (processing failed), ``AR`` (rejected: message type, event, processing id or
version not supported), the last two with an ERR segment; enhanced mode adds the commit
acknowledgement ``CA``.

See HL7 v2.5.1 chapter 2 (2.9 acknowledgment messages, 2.15 MSH/MSA/ERR).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from hl7_bridge.parse import Encoding, ParseError, escape

__all__ = [
    "SUPPORTED_EVENTS",
    "SUPPORTED_VERSIONS",
    "Header",
    "build_ack",
    "read_ack",
    "read_header",
    "refusal",
]

SUPPORTED_EVENTS = ("S12", "S13", "S14", "S15", "S16", "S17", "S26")
# every v2 release from 2.1 to 2.8.2: SIU is read by field position, and SCH, TQ1 and the AIx
# segments keep their positions across them (HL7 v2.5.1 chapter 10; 2.1 and 2.2 predate the
# chapter's segments, which are read as the newest version defines them, see parse._known)
SUPPORTED_VERSIONS = (
    "2.1",
    "2.2",
    "2.3",
    "2.3.1",
    "2.4",
    "2.5",
    "2.5.1",
    "2.6",
    "2.7",
    "2.7.1",
    "2.8",
    "2.8.1",
    "2.8.2",
)
_V25 = SUPPORTED_VERSIONS.index("2.5")  # ERR-2..8 from here on; ERR-1 (an ELD) before
PROCESSING_IDS = ("P", "T", "D")
_SEGMENTS = re.compile(rb"\r\n|\r|\n")


class NotHL7(ValueError):
    """No MSH segment to acknowledge."""


@dataclass(frozen=True, slots=True)
class Header:
    """MSH as raw bytes, field numbers as in the standard (``field(10)`` is MSH-10)."""

    separator: bytes
    fields: tuple[bytes, ...]  # fields[0] = b"MSH", fields[1] = MSH-2, fields[n-1] = MSH-n

    def field(self, n: int) -> bytes:
        if n == 1:
            return self.separator
        return self.fields[n - 1] if n - 1 < len(self.fields) else b""

    def component(self, n: int, k: int) -> bytes:
        comp = _encoding_characters(self)[:1]
        parts = self.field(n).split(comp)
        return parts[k - 1] if k - 1 < len(parts) else b""


def read_header(message: bytes) -> Header:
    first = _SEGMENTS.split(message.lstrip(b"\r\n"), maxsplit=1)[0]
    if not first.startswith(b"MSH") or len(first) < 8:
        raise NotHL7("the message does not start with an MSH segment")
    sep = first[3:4]
    return Header(sep, tuple(first.split(sep)))


def read_ack(message: bytes) -> tuple[str, str]:
    """(MSA-1 acknowledgment code, MSA-2 control id acknowledged) of an ACK; ('', '') if it
    has no MSA segment."""
    try:
        sep = read_header(message).separator
    except NotHL7:
        return "", ""
    for segment in _SEGMENTS.split(message):
        if segment.startswith(b"MSA"):
            fields = segment.split(sep)
            code = fields[1] if len(fields) > 1 else b""
            control = fields[2] if len(fields) > 2 else b""
            return code.decode("latin-1"), control.decode("latin-1")
    return "", ""


def refusal(header: Header) -> tuple[str, str] | None:
    """Why an inbound message is rejected (AR), as (HL7 table 0357 code, text), or None.
    A header whose MSH-2 is unusable is not judged here: reading it answers AE naming MSH-2."""
    if _encoding_characters(header) != header.field(2):
        return None
    kind, event = header.component(9, 1), header.component(9, 2)
    if kind != b"SIU":
        return "200", (
            f"MSH-9.1 message type {kind.decode('latin-1')!r} is not taken; this bridge takes SIU"
        )
    if event.decode("latin-1") not in SUPPORTED_EVENTS:
        return "201", (
            f"MSH-9.2 event {event.decode('latin-1')!r} is not taken; this bridge applies "
            f"SIU {', '.join(SUPPORTED_EVENTS)}"
        )
    processing = header.component(11, 1).decode("latin-1")
    if processing not in PROCESSING_IDS:
        return "202", f"MSH-11 processing id {processing!r} is not taken; send P, T or D"
    version = header.component(12, 1).decode("latin-1")
    if version not in SUPPORTED_VERSIONS:
        return "203", (
            f"MSH-12 version {version!r} is not supported; send 2.1 to 2.8.2 (for example 2.5.1)"
        )
    return None


def _encoding_characters(header: Header) -> bytes:
    """The sender's MSH-2 when it declares four distinct delimiters, else the standard ones
    (an ACK in delimiters no parser can read would reach no one)."""
    try:
        Encoding.from_msh("MSH" + (header.separator + header.field(2)).decode("latin-1"))
    except ParseError:
        return b"^~\\&"
    return header.field(2)


def _escape(text: str, header: Header) -> bytes:
    """Free text for ERR, with the message's own delimiters escaped."""
    try:
        enc = Encoding.from_msh("MSH" + (header.separator + header.field(2)).decode("latin-1"))
    except ParseError:
        enc = Encoding()
    return escape(text, enc).encode("latin-1", "replace")


def build_ack(
    header: Header,
    code: str,
    *,
    control_id: str,
    now: datetime,
    error: tuple[str, str] | None = None,
    location: str = "",
) -> bytes:
    """The ACK for ``header`` with acknowledgment ``code`` (AA, AE, AR or CA); ``error`` (HL7
    table 0357 code, words) becomes an ERR segment, ``location`` (``SCH-2``) its field: ERR-2
    (an ERL) from v2.5 on, ERR-1 (an ELD, with the code and words) before, where ERR has
    nothing else (v2.5.1 §2.15.5)."""
    sep = header.separator
    chars = _encoding_characters(header)
    comp = chars[:1]
    event = header.component(9, 2)
    msh = sep.join(
        [
            b"MSH",
            chars,
            header.field(5),
            header.field(6),
            header.field(3),
            header.field(4),
            now.strftime("%Y%m%d%H%M%S%z").encode(),
            b"",
            b"ACK" + comp + event + comp + b"ACK",
            control_id.encode(),
            header.field(11),
            header.field(12),
        ]
    )
    segments = [msh, sep.join([b"MSA", code.encode(), header.field(10)])]
    if error is not None:
        segments.append(_err(header, error, location))
    return b"\r".join(segments)


def _err(header: Header, error: tuple[str, str], location: str) -> bytes:
    sep = header.separator
    chars = _encoding_characters(header)
    comp, sub = chars[:1], chars[3:4]
    err_code, text = error
    words = _escape(text, header)
    segment, _, field = location.partition("-")
    where = [segment.encode(), b"1" if segment else b"", field.encode()]
    version = header.component(12, 1).decode("latin-1")
    if version in SUPPORTED_VERSIONS and SUPPORTED_VERSIONS.index(version) < _V25:
        code = sub.join([err_code.encode(), words.replace(sub, b""), b"HL70357"])
        return sep.join([b"ERR", comp.join([*where, code])])
    hl7_error = comp.join([err_code.encode(), b"", b"HL70357"])
    erl = comp.join(where) if segment else b""
    return sep.join([b"ERR", b"", erl, hl7_error, b"E", b"", b"", b"", words])
