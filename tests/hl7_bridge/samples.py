"""SIU messages shaped like those of several EMR vendors' interfaces, not one idealised sample.

Each shape copies habits seen in real feeds: which version, which terminator, where the time
is (SCH-11, TQ1, AIS), offsets or none, which segments come in which order, Z-segments, empty
``""`` fields, escape sequences and character sets. The clinic is the demo clinic (Dr Smith,
NPI 1234567893, at Main Street Clinic / loc-main, America/New_York).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

NY = ZoneInfo("America/New_York")


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment with ``fields`` at their standard positions (no counting of bars by hand)."""
    last = max(fields)
    if name == "MSH":
        values = [fields.get(n, "") for n in range(3, last + 1)]
        return "MSH|^~\\&|" + "|".join(values)
    return "|".join([name, *(fields.get(n, "") for n in range(1, last + 1))])


def hl7_time(t: datetime, *, offset: bool = True) -> str:
    local = t.astimezone(NY)
    return local.strftime("%Y%m%d%H%M%S") + (local.strftime("%z") if offset else "")


@dataclass(frozen=True)
class Expected:
    family: str
    given: str
    start: datetime  # UTC
    end: datetime


def epic_like(control: str, start: datetime, *, event: str = "S12", key: str = "98765") -> bytes:
    """2.5.1, CR, SCH-11 TQ with offsets, durations on AIS, AIG beside AIP, a Z-segment."""
    end = start + timedelta(minutes=30)
    s, e = hl7_time(start), hl7_time(end)
    return "\r".join(
        [
            f"MSH|^~\\&|EPIC|MSFP|FHIRSCHED|MSFP|{hl7_time(start - timedelta(days=2))}||"
            f"SIU^{event}^SIU_S12|{control}|P|2.5.1",
            f"SCH|12345^EPC|{key}^EPC||||FU^Follow up|^Follow-up visit|OFFICE^Office visit|30|MIN|"
            f"^^30^{s}^{e}||||||||||||||Booked",
            "ZSC|1|DEPT 100|Y",
            "PID|1||E1001^^^EPI^MR~123-45-6789^^^SSA^SS||DOE^JANE^A||19800115|F|||"
            "1 Elm St^^Springfield^MA^01101||(413)555-0101",
            "PV1|1|O|MSFP^^^MSFP||||1234567893^SMITH^ALICE",
            "RGS|1|A",
            f"AIS|1|A|FOLLOW-UP^Follow-up visit^EPCVT|{s}|0|MIN|30|MIN",
            "AIG|1|A|1234567893^SMITH^ALICE|PROV",
            f"AIL|1|A|MAIN STREET CLINIC^^^MSFP|||{s}|0|MIN|30|MIN",
            f"AIP|1|A|1234567893^SMITH^ALICE^^^^^^NPI|ATTENDING||{s}|0|MIN|30|MIN",
        ]
    ).encode()


def cerner_like(control: str, start: datetime) -> bytes:
    """2.3, LF terminators, only a filler id, offset-less local times, NTE before PID."""
    end = start + timedelta(minutes=45)
    s, e = hl7_time(start, offset=False), hl7_time(end, offset=False)
    return "\n".join(
        [
            f"MSH|^~\\&|CERNER|MSFP|FHIRSCHED|MSFP|{hl7_time(start, offset=False)}||SIU^S12|"
            f"{control}|P|2.3",
            f"SCH||CER778899||||NEWPT^New patient|New patient visit||||^^45^{s}^{e}||||||||||||||"
            "Booked",
            "NTE|1||Patient requests\\.br\\an interpreter",
            "PID|1|C5550001|C5550001^^^CERNERMRN^MRN||SMITH^JOHN^^JR||19751202|M",
            "RGS|1",
            "AIS|1||new-patient^New patient visit",
            "AIP|1||1234567893^SMITH^ALICE",
            "AIL|1||loc-main",
            "",
        ]
    ).encode()


def athena_like(control: str, start: datetime) -> bytes:
    """2.3.1, CRLF, PID before SCH, the time only on AIS-4, SCH-9/10 "30^MINUTES", ""."""
    s = hl7_time(start)
    return "\r\n".join(
        [
            f"MSH|^~\\&|ATHENA|12345|FHIRSCHED|MSFP|{hl7_time(start)}||SIU^S12|{control}|P|2.3.1",
            'PID|1||A77^^^ATHENA||LEE^KIM||19900304|F|||""||""',
            "SCH|A-555|A-555|||||||30|MINUTES^Minutes||||||||||||||BOOKED",
            "ZAT|custom|fields",
            "RGS|1",
            f"AIS|1||FOLLOW-UP^Follow-up visit|{s}",
            "AIP|1||1234567893^SMITH^ALICE",
            "AIL|1||Main Street Clinic",
        ]
    ).encode()


def meditech_like(control: str, start: datetime) -> bytes:
    """2.4, ISO 8859-1 declared in MSH-18 (a name with umlauts), escape sequences in NTE,
    SCH-11.3 duration as "M30"."""
    s = hl7_time(start)
    return "\r".join(
        [
            seg(
                "MSH",
                {3: "MEDITECH", 4: "MSFP", 5: "FHIRSCHED", 6: "MSFP", 7: hl7_time(start)}
                | {9: "SIU^S12", 10: control, 11: "P", 12: "2.4", 18: "8859/1"},
            ),
            seg("SCH", {1: "M100", 2: "M100", 11: f"^^M30^{s}", 25: "Booked"}),
            "NTE|1||Bring \\T\\ show card; gate \\F\\ entrance B",
            "PID|1||M900^^^MT^MR||MÜLLER^ZOË||19661010|F",
            "AIP|1||1234567893^SMITH^ALICE",
            "AIL|1||loc-main",
        ]
    ).encode("iso8859-1")


def nextgen_like(control: str, start: datetime) -> bytes:
    """2.5.1, TQ1 start with a CQ duration and no end, offset-less times, PV1, Z-segment."""
    s = hl7_time(start, offset=False)
    return "\r".join(
        [
            f"MSH|^~\\&|NEXTGEN|MSFP|FHIRSCHED|MSFP|{s}||SIU^S12^SIU_S12|{control}|P|2.5.1",
            'SCH|NG-42^NG|NG-42^NG||||||||||||||||||||||""|Booked',
            seg("TQ1", {1: "1", 6: "30^min&minutes&UCUM", 7: s}),
            "PID|1||NG9^^^NGMRN^MR||PATEL^ANIL||19850707|M",
            "PV1|1|O",
            "ZNG|x",
            "RGS|1",
            "AIP|1||1234567893^SMITH^ALICE",
            "AIL|1||loc-main",
        ]
    ).encode()


def modern_like(control: str, start: datetime, version: str = "2.8") -> bytes:
    """2.7.1/2.8, UTF-8 declared, TQ1 start and end with offsets."""
    end = start + timedelta(minutes=30)
    return "\r".join(
        [
            seg(
                "MSH",
                {3: "MODERN", 4: "MSFP", 5: "FHIRSCHED", 6: "MSFP", 7: hl7_time(start)}
                | {9: "SIU^S12^SIU_S12", 10: control, 11: "P", 12: version, 18: "UNICODE UTF-8"},
            ),
            "SCH|MD-1^MD|MD-1^MD||||||||||||||||||||||||Booked",
            seg("TQ1", {1: "1", 7: hl7_time(start), 8: hl7_time(end)}),
            "PID|1||MD7^^^MODERN^MR||GARCÍA^JOSÉ||19700101|M",
            "AIP|1||1234567893^SMITH^ALICE",
            "AIL|1||loc-main",
        ]
    ).encode("utf-8")


def vendor_samples(
    start: datetime,
) -> list[tuple[str, bytes, Expected]]:
    """(name, message, what it should produce) for each shape, all at ``start`` (UTC)."""
    utc = start.astimezone(UTC)
    m30, m45 = timedelta(minutes=30), timedelta(minutes=45)
    return [
        ("epic", epic_like("E1", utc), Expected("DOE", "JANE", utc, utc + m30)),
        ("cerner", cerner_like("C1", utc), Expected("SMITH", "JOHN", utc, utc + m45)),
        ("athena", athena_like("A1", utc), Expected("LEE", "KIM", utc, utc + m30)),
        ("meditech", meditech_like("M1", utc), Expected("MÜLLER", "ZOË", utc, utc + m30)),
        ("nextgen", nextgen_like("N1", utc), Expected("PATEL", "ANIL", utc, utc + m30)),
        ("v2.7.1", modern_like("V1", utc, "2.7.1"), Expected("GARCÍA", "JOSÉ", utc, utc + m30)),
        ("v2.8", modern_like("V2", utc, "2.8"), Expected("GARCÍA", "JOSÉ", utc, utc + m30)),
    ]
