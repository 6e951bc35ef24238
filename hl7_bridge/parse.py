"""Inbound HL7 v2 text: bytes → normalised text → checked message → fields by position.

Real senders differ, so this is lenient where the standard allows it and strict where a guess
would change meaning:

* the character set comes from MSH-18 (ASCII, ISO 8859-n, UTF-8, …); without one, UTF-8 is
  tried and Windows-1252 (a superset of Latin-1, what undeclared senders mostly use) is the
  fallback;
* segment terminators CR, LF or CRLF all become CR, blank lines are dropped, other control
  characters (a stray NUL) are removed;
* delimiters are read from MSH-1 and MSH-2, never assumed;
* segment names and the version are checked against hl7apy's definitions (2.7 and 2.7.1 as
  2.8, see ``_HL7APY_VERSION``); a segment the message's version does not define (SCH, AIS or
  AIP in a 2.1 or 2.2 message, TQ1 in a 2.3 one) falls back to the newest version's generic
  definition, since fields are read by position anyway; Z-segments pass, a segment no version
  defines is set aside (named in :attr:`Message.ignored`) rather than refusing the whole
  message; segment order is not enforced;
* values are read from the normalised text with the message's own delimiters and unescaped
  here (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\Xhh\\`` in the message's charset, ``\\.br\\``):
  hl7apy re-escapes sequences it does not know when it writes a field back, so its field
  text is not what the sender meant; ``""`` (explicit null) reads as empty.

See HL7 v2.5.1 chapter 2 (2.7 message construction, 2.7.4 escape sequences, 2.15.9 MSH-18).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache

from hl7apy import check_version, load_reference
from hl7apy.exceptions import HL7apyException, UnsupportedVersion

__all__ = [
    "Encoding",
    "Message",
    "ParseError",
    "Segment",
    "decode",
    "escape",
    "parse",
    "parse_dtm",
    "unescape",
]

_TERMINATORS = re.compile(r"\r\n|\n\r|\r|\n")
# C0 controls other than the terminators (and DEL): no HL7 value holds one, and PostgreSQL
# text cannot store NUL; a sender's stray byte is dropped rather than refusing the message
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")

# HL7 table 0211 (MSH-18) → Python codec
CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "ISO IR192": "utf-8",
    "ISO IR100": "iso8859-1",
    "ISO IR101": "iso8859-2",
    "ISO IR109": "iso8859-3",
    "ISO IR110": "iso8859-4",
    "ISO IR144": "iso8859-5",
    "ISO IR127": "iso8859-6",
    "ISO IR126": "iso8859-7",
    "ISO IR138": "iso8859-8",
    "ISO IR148": "iso8859-9",
    "BIG-5": "big5",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc-kr",
    "WINDOWS-1252": "cp1252",
}
CHARSETS.update({f"8859/{n}": f"iso8859-{n}" for n in range(1, 16) if n != 12})

# hl7apy has no 2.7.1 library, and its 2.7 one cannot read a TQ1 segment; 2.8 is a compatible
# superset for every segment SIU uses, so both are checked as 2.8
_HL7APY_VERSION = {"2.7": "2.8", "2.7.1": "2.8"}
_NEWEST = "2.8.2"


class ParseError(ValueError):
    """The bytes are not an HL7 v2 message this bridge can read, or the message leaves
    nothing to apply; ``location`` names the field (``SCH-1``) for the ERR segment."""

    def __init__(self, message: str, *, location: str = "") -> None:
        super().__init__(message)
        self.location = location


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None  # 2.7+: MSH-2 may carry a fifth character

    @classmethod
    def from_msh(cls, segment: str) -> Encoding:
        if not segment.startswith("MSH") or len(segment) < 8:
            raise ParseError("the message does not start with an MSH segment")
        sep = segment[3]
        chars = segment[4:].split(sep, 1)[0]
        odd = any(c.isalnum() or c.isspace() or not c.isprintable() for c in chars + sep)
        if len(chars) not in (4, 5) or odd or len(set(chars + sep)) != len(chars) + 1:
            raise ParseError(
                f"MSH-2 {chars!r} does not declare four distinct delimiters; send ^~\\& "
                "(component, repetition, escape, subcomponent)",
                location="MSH-2",
            )
        extra = chars[4] if len(chars) > 4 else None
        return cls(sep, chars[0], chars[1], chars[2], chars[3], extra)


_STANDARD = Encoding()


def unescape(text: str, enc: Encoding, charset: str = "utf-8") -> str:
    """Decode HL7 escape sequences (v2.5.1 §2.7.4); ``""`` is an explicit null, read as ''."""
    if text == '""':
        return ""
    esc = enc.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        end = text.find(esc, i + 1) if ch == esc else -1
        if end < 0:
            out.append(ch)
            i += 1
            continue
        body = text[i + 1 : end]
        out.append(_sequence(body, enc, charset, text[i : end + 1]))
        i = end + 1
    return "".join(out)


def escape(text: str, enc: Encoding = _STANDARD) -> str:
    """Free text made safe inside a field: the delimiters become escape sequences (v2.5.1
    §2.7.4) and line breaks spaces (a CR would end the segment)."""
    esc = enc.escape
    out = text.replace(esc, f"{esc}E{esc}")
    pairs = [(enc.field, "F"), (enc.component, "S"), (enc.subcomponent, "T"), (enc.repetition, "R")]
    for char, code in pairs:
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def _sequence(body: str, enc: Encoding, charset: str, literal: str) -> str:
    simple = {
        "F": enc.field,
        "S": enc.component,
        "T": enc.subcomponent,
        "R": enc.repetition,
        "E": enc.escape,
        "P": enc.truncation or "",
        "H": "",  # start/end highlighting: no meaning in our data
        "N": "",
    }
    if body in simple:
        return simple[body]
    if body.startswith("X") and len(body) > 1 and len(body) % 2 == 1:
        try:
            return bytes.fromhex(body[1:]).decode(charset, errors="replace")
        except ValueError:
            return literal
    if body in (".br", ".sp"):
        return "\n"
    if body[:1] in ("C", "M", "Z") or body.startswith("."):
        return ""  # character-set switches, locally defined escapes, formatting: dropped
    return literal


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment's fields by standard number: ``get(3, 1)`` is component 1 of field 3."""

    name: str
    fields: tuple[str, ...]  # fields[n] is field n, raw (still escaped); fields[0] = name
    enc: Encoding
    charset: str

    def raw(self, n: int) -> str:
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def repetitions(self, n: int) -> list[str]:
        raw = self.raw(n)
        if self.name == "MSH" and n == 2:
            return [raw]
        return raw.split(self.enc.repetition) if raw else []

    def get(self, n: int, comp: int = 1, sub: int = 1, rep: int = 0) -> str:
        reps = self.repetitions(n)
        if rep >= len(reps):
            return ""
        comps = reps[rep].split(self.enc.component)
        if comp > len(comps):
            return ""
        subs = comps[comp - 1].split(self.enc.subcomponent)
        return self._value(subs[sub - 1]) if sub <= len(subs) else ""

    def text(self, n: int, rep: int = 0) -> str:
        """The whole field (one repetition), unescaped, components kept with their separator."""
        reps = self.repetitions(n)
        return self._value(reps[rep]) if rep < len(reps) else ""

    def _value(self, raw: str) -> str:
        return unescape(raw, self.enc, self.charset).strip()


@dataclass(frozen=True)
class Message:
    text: str  # normalised: segments joined by CR
    enc: Encoding
    charset: str
    segments: tuple[Segment, ...]
    version: str
    ignored: tuple[str, ...] = field(default_factory=tuple)  # segment names set aside
    notes: tuple[tuple[str, str], ...] = ()  # what was read with a caveat: (code, words)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]


def _charset_of(raw: bytes) -> str | None:
    """The codec MSH-18 declares (read from the header's bytes, which are ASCII), or None."""
    first = _TERMINATORS.split(raw.lstrip(b"\r\n").decode("latin-1"), maxsplit=1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return None
    parts = first.split(first[3])
    declared = parts[17].split(first[4:5] or "^")[0].strip().upper() if len(parts) > 17 else ""
    if not declared:
        return None
    return CHARSETS.get(declared, "?")  # "?": declared but unknown, read as undeclared


def decode(raw: bytes) -> tuple[str, str]:
    """The message as text (terminators normalised to CR) and the codec used (``?utf-8``
    or ``?cp1252`` when MSH-18 names a character set we do not know)."""
    codec = _charset_of(raw)
    if codec == "?":
        text, used = decode(_without_charset(raw))
        return text, "?" + used
    if codec:
        text = raw.decode(codec, errors="replace")
    else:
        try:
            text, codec = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, codec = raw.decode("cp1252", errors="replace"), "cp1252"
    text = _CONTROLS.sub("", text.lstrip("\ufeff"))
    lines = [line for line in _TERMINATORS.split(text) if line.strip()]
    return "\r".join(lines), codec


def _without_charset(raw: bytes) -> bytes:
    """``raw`` with MSH-18 emptied, read as an undeclared message would be."""
    head, sep, rest = raw.partition(b"\r")
    parts = head.split(head[3:4])
    if len(parts) > 17:
        parts[17] = b""
    return head[3:4].join(parts) + sep + rest


def parse(raw: bytes) -> Message:
    """Read and check one inbound message; :class:`ParseError` says what is wrong."""
    text, charset = decode(raw)
    notes: list[tuple[str, str]] = []
    if charset.startswith("?"):
        charset = charset[1:]
        notes.append(
            (
                "charset-unknown",
                f"MSH-18 names a character set this bridge does not know; read as {charset}",
            )
        )
    lines = text.split("\r")
    enc = Encoding.from_msh(lines[0])
    head = lines[0].split(enc.field)
    version = head[11].split(enc.component)[0] if len(head) > 11 else ""
    ignored, strays = _check(lines, enc, version)
    if strays:
        notes.append(
            (
                "line-ignored",
                f"{strays} line(s) that start no segment were set aside (a line break inside a "
                "field? send it as \\.br\\)",
            )
        )
    segments = []
    for line in lines:
        name = line[:3]
        if name in ignored or not _starts_segment(line, enc):
            continue
        if name == "MSH":
            # MSH-1 is the separator itself: number the rest so that fields[n] is MSH-n
            fields = ("MSH", enc.field, *line[4:].split(enc.field))
        else:
            fields = tuple(line.split(enc.field))
        segments.append(Segment(name, fields, enc, charset))
    return Message(
        text, enc, charset, tuple(segments), version, tuple(sorted(ignored)), tuple(notes)
    )


def _starts_segment(line: str, enc: Encoding) -> bool:
    name = line[:3]
    return bool(_SEGMENT_NAME.fullmatch(name)) and (len(line) == 3 or line[3] == enc.field)


def _check(lines: list[str], enc: Encoding, version: str) -> tuple[list[str], int]:
    """Segment names checked against hl7apy's definitions; returns those set aside, and how
    many lines start no segment at all (a sender's raw line break inside a field).

    A Z-segment is local by definition and passes; a segment defined by the message's version,
    or by a later one (a TQ1 in a 2.3 message), is read; anything else is set aside. hl7apy's
    full parse is not used here: it builds a tree of every field (about 10 ms a message) that
    nothing reads, since values come from the text with the message's own delimiters.
    """
    checked = _HL7APY_VERSION.get(version, version)
    try:
        check_version(checked)
    except UnsupportedVersion as exc:
        raise ParseError(f"unsupported HL7 version {version!r}") from exc
    unknown: list[str] = []
    strays = 0
    for line in lines[1:]:
        name = line[:3]
        if not _starts_segment(line, enc):
            strays += 1
            continue
        if name[0] == "Z" or name in unknown or _known(name, checked):
            continue
        unknown.append(name)
    return unknown, strays


@lru_cache(maxsize=512)
def _known(name: str, version: str) -> bool:
    for v in (version, _NEWEST):
        try:
            if load_reference(name, "Segment", v):
                return True
        except HL7apyException:
            continue
    return False


# -- HL7 date/time (DTM, and the older TS) -------------------------------------------------

_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<f>\d{1,4}))?(?P<tz>[+-]\d{4})?$"
)


def parse_dtm(value: str, default_tz: tzinfo) -> datetime | None:
    """An HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``) as an aware datetime.

    A value without an offset is read in ``default_tz`` (the sender's configured zone). An
    empty value is None; anything else malformed raises :class:`ParseError`.
    """
    value = value.strip()
    if not value:
        return None
    m = _DTM.match(value.split("^")[0])
    if not m:
        raise ParseError(f"{value!r} is not an HL7 date/time (YYYYMMDDHHMM[SS][+/-ZZZZ])")
    g = m.groupdict()
    try:
        local = datetime(
            int(g["y"]),
            int(g["mo"] or 1),
            int(g["d"] or 1),
            int(g["h"] or 0),
            int(g["mi"] or 0),
            int(g["s"] or 0),
            int((g["f"] or "0").ljust(6, "0")[:6]),
        )
    except ValueError as exc:
        raise ParseError(f"{value!r} is not a valid date/time: {exc}") from exc
    if g["tz"]:
        sign = 1 if g["tz"][0] == "+" else -1
        offset = timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][3:5])) * sign
        return local.replace(tzinfo=timezone(offset))
    return local.replace(tzinfo=default_tz)


def parse_date(value: str) -> date | None:
    """An HL7 DT/DTM birth date, day precision."""
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None
