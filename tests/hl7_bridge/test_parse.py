"""Reading real-world HL7 text: terminators, delimiters, escapes, character sets, odd segments,
and HL7 date/times; then the SIU mapping's choices (status table, time sources, units)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from fhir_server.settings import Settings
from hl7_bridge.ack import SUPPORTED_VERSIONS
from hl7_bridge.parse import Encoding, ParseError, parse, parse_dtm, unescape
from hl7_bridge.siu_to_fhir import read_siu
from hl7_bridge.status import FILLER_STATUS_EXTENSION, check_status_map
from tests.hl7_bridge.samples import modern_like, seg

NY = ZoneInfo("America/New_York")
MSH = "MSH|^~\\&|EMR|FAC|FHIRSCHED|FAC|20261201090000||SIU^S12|1|P|2.5.1"


def test_terminators_cr_lf_crlf_and_blank_lines_read_alike() -> None:
    body = [MSH, "SCH|A|B", "PID|1||X"]
    texts = ["\r".join(body), "\n".join(body) + "\n", "\r\n".join(body) + "\r\n\r\n"]
    parsed = [parse(t.encode()) for t in texts]
    assert {p.text for p in parsed} == {"\r".join(body)}
    assert [s.name for s in parsed[0].segments] == ["MSH", "SCH", "PID"]


def test_delimiters_come_from_msh() -> None:
    text = "MSH#:*!@#EMR#FAC#X#Y#20261201##SIU:S12#7#P#2.4\rSCH#A!F!1:ns*B#F2"
    msg = parse(text.encode())
    assert msg.enc == Encoding("#", ":", "*", "!", "@")
    assert msg.msh.get(9, 2) == "S12" and msg.msh.raw(10) == "7"
    sch = msg.first("SCH")
    assert sch is not None
    assert sch.get(1, 1) == "A#1"  # \F\ with "!" as the escape character
    assert sch.get(1, 2) == "ns" and sch.get(1, 1, rep=1) == "B"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
        ("line one\\.br\\line two", "line one\nline two"),
        ("\\H\\bold\\N\\", "bold"),
        ("caf\\XC3A9\\", "café"),
        ('""', ""),
        ("no escapes", "no escapes"),
        ("dangling \\ escape", "dangling \\ escape"),
    ],
)
def test_escape_sequences(raw: str, text: str) -> None:
    assert unescape(raw, Encoding(), "utf-8") == text


def test_charset_from_msh18_and_undeclared_fallback() -> None:
    latin = (MSH + "||||||8859/1\rPID|1||X||MÜLLER^ZOË").encode("iso8859-1")
    msg = parse(latin)
    assert msg.charset == "iso8859-1" and msg.all("PID")[0].get(5) == "MÜLLER"
    undeclared = (MSH + "\rPID|1||X||CAFÉ").encode("cp1252")
    assert parse(undeclared).all("PID")[0].get(5) == "CAFÉ"
    utf8 = (MSH + "\rPID|1||X||GARCÍA").encode()
    assert parse(utf8).charset == "utf-8"
    # a character set we do not know is read as an undeclared one would be, with a note
    klingon = parse((MSH + "||||||KLINGON\rPID|1||X||GARCÍA").encode())
    assert klingon.charset == "utf-8" and klingon.all("PID")[0].get(5) == "GARCÍA"
    assert [code for code, _ in klingon.notes] == ["charset-unknown"]


def test_z_segments_pass_and_unknown_segments_are_set_aside() -> None:
    msg = parse((MSH + "\rZXY|custom\rSCH|A\rQQQ|what is this\rPID|1").encode())
    assert [s.name for s in msg.segments] == ["MSH", "ZXY", "SCH", "PID"]
    assert msg.ignored == ("QQQ",)
    # a raw line break inside a note leaves a line that starts no segment: set aside
    broken = parse((MSH + "\rSCH|A\rNTE|1||first half\nsecond half\rPID|1").encode())
    assert [s.name for s in broken.segments] == ["MSH", "SCH", "NTE", "PID"]
    assert [code for code, _ in broken.notes] == ["line-ignored"]


@pytest.mark.parametrize(
    "raw",
    [b"", b"PID|1||X", b"MSH", b"MSH|^~|x", b"MSH|^^\\&|EMR"],
    ids=["empty", "no MSH", "short MSH", "three delimiters", "repeated delimiter"],
)
def test_unreadable_input_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse(raw)


def test_hl7_dates() -> None:
    assert parse_dtm("20261201093000-0500", NY) == datetime(
        2026, 12, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5))
    )
    assert parse_dtm("202612010930", NY) == datetime(2026, 12, 1, 9, 30, tzinfo=NY)
    assert parse_dtm("20260701093000.1234+0000", NY) == datetime(
        2026, 7, 1, 9, 30, 0, 123400, tzinfo=UTC
    )
    assert parse_dtm("", NY) is None
    for bad in ("2026-12-01", "20261341", "tomorrow"):
        with pytest.raises(ParseError):
            parse_dtm(bad, NY)


def _siu(*segments: str, event: str = "S12") -> bytes:
    return "\r".join([MSH.replace("SIU^S12", f"SIU^{event}"), *segments]).encode()


D = "20261201"
T9, T10, T945, T1045 = f"{D}090000", f"{D}100000", f"{D}094500", f"{D}104500"
TIME_CASES: list[
    tuple[str, list[str], tuple[int, int] | None, tuple[int, int] | None, list[str]]
] = [
    # (id, segments after MSH, start (h, m), end (h, m), warning codes); 1 December, New York
    ("TQ1 start and end", [seg("TQ1", {7: T9, 8: T945})], (9, 0), (9, 45), []),
    ("TQ1 CQ duration in hours", [seg("TQ1", {6: "0.75^h", 7: T9})], (9, 0), (9, 45), []),
    ("TQ1 CQ in UCUM", [seg("TQ1", {6: "45^min&minutes&UCUM", 7: T9})], (9, 0), (9, 45), []),
    (
        "SCH-11 ^^dur^start^end",
        [seg("SCH", {1: "A", 11: f"^^45^{T9}^{T945}"})],
        (9, 0),
        (9, 45),
        [],
    ),
    ("SCH-11 TQ duration M45", [seg("SCH", {1: "A", 11: f"^^M45^{T9}"})], (9, 0), (9, 45), []),
    (
        "SCH-11 a bare timestamp, SCH-9/10 minutes",
        [seg("SCH", {1: "A", 9: "45", 10: "min", 11: T9})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "SCH-11 before TQ1",
        [seg("SCH", {1: "A", 11: f"^^^{T9}^{T945}"}), seg("TQ1", {7: T10, 8: T1045})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "SCH-11 start only, then TQ1 complete",
        [seg("SCH", {1: "A", 11: f"^^^{T9}"}), seg("TQ1", {7: T10, 8: T1045})],
        (10, 0),
        (10, 45),
        [],
    ),
    (
        "SCH-10 MIN^MINUTES",
        [seg("SCH", {1: "A", 9: "45", 10: "MIN^MINUTES", 11: f"^^^{T9}"})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "AIS units in words",
        [seg("SCH", {1: "A"}), seg("AIS", {1: "1", 4: T9, 7: "45", 8: "minutes"})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "AIS seconds",
        [seg("SCH", {1: "A"}), seg("AIS", {1: "1", 4: T9, 7: "2700", 8: "s"})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "AIL m^Minutes",
        [seg("SCH", {1: "A"}), seg("AIL", {1: "1", 6: T9, 9: "45", 10: "m^Minutes"})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "AIG start and duration",
        [seg("SCH", {1: "A"}), seg("AIG", {1: "1", 8: T9, 11: "45", 12: "MIN"})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "AIP start with SCH-9/10",
        [seg("SCH", {1: "A", 9: "45", 10: "min"}), seg("AIP", {1: "1", 6: T9})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "junk units, explicit end: not needed",
        [seg("SCH", {1: "A", 9: "45", 10: "000000", 11: f"^^^{T9}^{T945}"})],
        (9, 0),
        (9, 45),
        [],
    ),
    (
        "junk units, a later source is complete",
        [
            seg("SCH", {1: "A", 9: "30", 10: "000000", 11: f"^^^{T9}"}),
            seg("AIP", {1: "1", 6: T9, 9: "45", 10: "MIN"}),
        ],
        (9, 0),
        (9, 45),
        ["unit-unknown"],
    ),
    (
        "junk units and nothing else: the caller's length",
        [seg("SCH", {1: "A", 9: "30", 10: "000000", 11: f"^^^{T9}"})],
        (9, 0),
        None,
        ["unit-unknown"],
    ),
    (
        "end before start, a duration instead",
        [seg("SCH", {1: "A"}), seg("TQ1", {6: "45^min", 7: T10, 8: T9})],
        (10, 0),
        (10, 45),
        ["end-before-start"],
    ),
    (
        "unreadable TQ1, AIS instead",
        [seg("SCH", {1: "A"}), seg("TQ1", {7: "tomorrow"}), seg("AIS", {1: "1", 4: T9, 7: "45"})],
        (9, 0),
        (9, 45),
        ["time-unreadable"],
    ),
    (
        "a date only, AIS has the time",
        [seg("SCH", {1: "A", 11: f"^^^{D}"}), seg("AIS", {1: "1", 4: T9, 7: "45", 8: "min"})],
        (9, 0),
        (9, 45),
        [],
    ),
    ("no time at all", [seg("SCH", {1: "A"})], None, None, []),
]


@pytest.mark.parametrize(
    ("segments", "start", "end", "warnings"),
    [c[1:] for c in TIME_CASES],
    ids=[c[0] for c in TIME_CASES],
)
def test_time_sources_and_units(
    segments: list[str],
    start: tuple[int, int] | None,
    end: tuple[int, int] | None,
    warnings: list[str],
) -> None:
    if not any(s.startswith("SCH") for s in segments):
        segments = [seg("SCH", {1: "A"}), *segments]
    change = read_siu(parse(_siu(*segments)), sender_tz=NY)

    def local(hm: tuple[int, int] | None) -> datetime | None:
        return datetime(2026, 12, 1, *hm, tzinfo=NY) if hm else None

    assert (change.start, change.end) == (local(start), local(end))
    assert [code for code, _ in change.warnings] == warnings
    assert not change.all_day


def test_a_date_alone_is_an_all_day_appointment_and_offsets_are_kept() -> None:
    change = read_siu(parse(_siu(seg("SCH", {1: "A", 11: f"^^^{D}"}))), sender_tz=NY)
    assert change.all_day
    assert (change.start, change.end) == (
        datetime(2026, 12, 1, tzinfo=NY),
        datetime(2026, 12, 2, tzinfo=NY),
    )
    [(code, words)] = change.warnings
    assert code == "date-only" and "all-day" in words
    pacific = seg("TQ1", {7: f"{T9}-0800", 8: f"{T945}-0800"})
    change = read_siu(parse(_siu(seg("SCH", {1: "A"}), pacific)), sender_tz=NY)
    assert change.start == datetime(2026, 12, 1, 9, tzinfo=timezone(timedelta(hours=-8)))
    # without an offset, the sender's configured zone
    bare = read_siu(parse(_siu(seg("SCH", {1: "A"}), seg("TQ1", {7: T9, 8: T945}))), sender_tz=UTC)
    assert bare.start == datetime(2026, 12, 1, 9, tzinfo=UTC)


MINE = {"EMR.FAC": {"1": "booked", "ARR": "arrived"}}
STATUS_CASES = [
    # (id, event, SCH-25, status map, Appointment.status, unknown)
    ("0278 code", "S12", "Complete", {}, "fulfilled", False),
    ("0278 lower case", "S12", "booked", {}, "booked", False),
    ("upper case", "S12", "BOOKED", {}, "booked", False),
    ("Scheduled", "S12", "Scheduled", {}, "booked", False),
    ("code with a local system", "S12", "Scheduled^^CSI", {}, "booked", False),
    ("Confirmed", "S13", "Confirmed", {}, "booked", False),
    ("Arrived", "S14", "Arrived", {}, "arrived", False),
    ("checked-in spelt out", "S14", "Checked In", {}, "checked-in", False),
    ("code unknown, text known", "S12", "Sch^Scheduled^SCHEDULING", {}, "booked", False),
    ("numeric local code", "S12", "1^SCH", {}, "booked", True),
    ("numeric code in the sender's table", "S12", "1^SCH", MINE, "booked", False),
    (
        "another sender's table does not apply",
        "S14",
        "ARR",
        {"X.Y": {"ARR": "arrived"}},
        None,
        True,
    ),
    ("sender's table", "S14", "arr", MINE, "arrived", False),
    ("global entry", "S12", "Zz", {"ZZ": "waitlist"}, "waitlist", False),
    ("S13 pending", "S13", "Pending", {}, "pending", False),
    ("S14 without SCH-25 keeps the status", "S14", "", {}, None, False),
    ("S14 unknown keeps the status", "S14", "Hmm", {}, None, True),
    ("S12 unknown is booked", "S12", "Hmm", {}, "booked", True),
    ("S15 is a cancellation", "S15", "Complete", {}, "cancelled", False),
    ("NOSHOW on an S15", "S15", "NOSHOW", {}, "noshow", False),
    ("No Show spelt out on an S15", "S15", "No Show", {}, "noshow", False),
    ("S15 unknown", "S15", "Gone", {}, "cancelled", True),
    ("S16", "S16", "", {}, "cancelled", False),
    ("S17", "S17", "Booked", {}, "entered-in-error", False),
    ("S26", "S26", "Booked", {}, "noshow", False),
]


@pytest.mark.parametrize(
    ("event", "sch25", "status_map", "status", "unknown"),
    [c[1:] for c in STATUS_CASES],
    ids=[c[0] for c in STATUS_CASES],
)
def test_status_comes_from_the_event_refined_by_sch25(
    event: str, sch25: str, status_map: dict[str, Any], status: str | None, unknown: bool
) -> None:
    change = read_siu(
        parse(_siu(seg("SCH", {1: "A", 25: sch25}), event=event)),
        sender_tz=NY,
        status_map=status_map,
    )
    assert change.status == status
    assert [code for code, _ in change.warnings] == (["status-unknown"] if unknown else [])
    assert change.filler_status is not None
    if sch25:
        sent = change.filler_status.extension()
        assert sent is not None and sent["url"] == FILLER_STATUS_EXTENSION
        assert sent["valueCoding"]["code"] == sch25.split("^")[0]
    else:
        assert change.filler_status.extension() is None


def test_an_unknown_status_warning_says_how_to_map_it() -> None:
    change = read_siu(parse(_siu(seg("SCH", {1: "A", 25: "1^SCH"}))), sender_tz=NY)
    [(_, words)] = change.warnings
    assert "'1^SCH'" in words and "EMR.FAC" in words and "FHIRSCHED_HL7_STATUS_MAP" in words


def test_a_status_map_must_name_appointment_statuses() -> None:
    assert check_status_map({"Confirmed": "booked", "EMR.FAC": {"1": "arrived"}})
    with pytest.raises(ValueError, match=r"'done' is not an Appointment\.status"):
        check_status_map({"Complete": "done"})
    with pytest.raises(ValueError, match="'1'"):
        check_status_map({"EMR.FAC": {"1": "scheduled"}})
    # FHIRSCHED_HL7_STATUS_MAP is checked when the settings are read
    mine = Settings(hl7_status_map={"Confirmed": "booked", "EMR.FAC": {"1": "arrived"}})
    assert mine.hl7_status_map["EMR.FAC"] == {"1": "arrived"}
    with pytest.raises(ValidationError, match=r"not an Appointment\.status"):
        Settings(hl7_status_map={"EMR.FAC": {"1": "scheduled"}})


def test_siu_needs_keys() -> None:
    with pytest.raises(ParseError, match="SCH segment"):
        read_siu(parse(_siu("PID|1")), sender_tz=NY)
    with pytest.raises(ParseError, match="SCH-1"):
        read_siu(parse(_siu("SCH||")), sender_tz=NY)


def test_patient_identifiers_and_demographics() -> None:
    pid = seg(
        "PID",
        {
            1: "1",
            3: "M1^^^MSFP^MR~999^^^&2.16.840.1.113883.4.1&ISO^SS",
            5: "O\\S\\BRIEN^SEAN^P^JR^MR",
            7: "19700102",
            8: "M",
            13: "^PRN^PH^^^413^5550101",
        },
    )
    change = read_siu(parse(_siu(seg("SCH", {1: "A"}), pid)), sender_tz=NY)
    patient = change.patient
    assert patient is not None
    assert [(i["system"], i["value"]) for i in patient["identifier"]] == [
        ("urn:fhir-sched:hl7:id:MSFP", "M1"),
        ("urn:oid:2.16.840.1.113883.4.1", "999"),
    ]
    assert patient["name"] == [
        {
            "use": "official",
            "family": "O^BRIEN",
            "given": ["SEAN", "P"],
            "prefix": ["MR"],
            "suffix": ["JR"],
        }
    ]
    assert patient["birthDate"] == "1970-01-02" and patient["gender"] == "male"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_supported_version_reads(version: str) -> None:
    raw = modern_like("V", datetime(2026, 12, 1, 15, tzinfo=UTC), version)
    message = parse(raw)
    assert message.version == version and message.ignored == ()
    change = read_siu(message, sender_tz=NY)
    assert change.start == datetime(2026, 12, 1, 15, tzinfo=UTC)
    assert change.patient is not None and change.patient["name"][0]["family"] == "GARCÍA"
