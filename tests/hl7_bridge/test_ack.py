"""ACKs: MSA-2 is the inbound MSH-10 byte for byte; sender and receiver swapped; version
echoed; a fresh control id; AR with ERR for what the bridge does not take."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from hl7_bridge.ack import build_ack, read_header, refusal

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _inbound(
    kind: str = "SIU^S12^SIU_S12", version: str = "2.5.1", control: str = "MSG-0001", sep: str = "|"
) -> bytes:
    f = sep
    return (
        f"MSH{f}^~\\&{f}EPICADT{f}CLINIC-A{f}FHIRSCHED{f}HOSP{f}20261123085959{f}{f}{kind}{f}"
        f"{control}{f}P{f}{version}\rSCH{f}123"
    ).encode("latin-1")


@pytest.mark.parametrize(
    "control",
    ["MSG-0001", "  spaced id ", "Ünïcode-ish\xe9", "a\\T\\b"],
    ids=["plain", "spaces", "latin-1", "escape"],
)
def test_msa2_echoes_msh10_byte_for_byte(control: str) -> None:
    raw = _inbound(control=control)
    ack = build_ack(read_header(raw), "AA", control_id="ACK-1", now=NOW)
    msa = ack.split(b"\r")[1]
    assert msa.split(b"|")[2] == control.encode("latin-1")


def test_sender_receiver_swapped_version_echoed_fresh_id() -> None:
    ack = hl7.parse(
        build_ack(read_header(_inbound(version="2.3")), "AA", control_id="X9", now=NOW).decode()
    )
    msh = ack.segment("MSH")
    assert (str(msh[3]), str(msh[4]), str(msh[5]), str(msh[6])) == (
        "FHIRSCHED",
        "HOSP",
        "EPICADT",
        "CLINIC-A",
    )
    assert str(msh[12]) == "2.3" and str(msh[10]) == "X9" and str(msh[9]) == "ACK^S12^ACK"


def test_other_delimiters_are_kept() -> None:
    raw = _inbound(sep="#")
    ack = build_ack(read_header(raw), "AA", control_id="A", now=NOW)
    assert ack.startswith(b"MSH#^~\\&#FHIRSCHED#HOSP#EPICADT#")


@pytest.mark.parametrize(
    ("kind", "version", "code"),
    [
        ("ADT^A01", "2.5.1", "200"),
        ("SIU^S99", "2.5.1", "201"),
        ("SIU^S12", "2.0", "203"),
        ("SIU^S12", "2.9", "203"),
        ("SIU^S12", "3.0", "203"),
    ],
    ids=["message type", "event", "too old", "not yet", "too new"],
)
def test_unsupported_is_rejected_with_err(kind: str, version: str, code: str) -> None:
    header = read_header(_inbound(kind=kind, version=version))
    why = refusal(header)
    assert why is not None and why[0] == code
    ack = hl7.parse(build_ack(header, "AR", control_id="R1", now=NOW, error=why).decode())
    assert str(ack.segment("MSA")[1]) == "AR"
    assert str(ack.segment("ERR")[3][0][0]) == code


def test_supported_versions_pass() -> None:
    for version in ("2.1", "2.2", "2.3", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.2"):
        assert refusal(read_header(_inbound(version=version))) is None


def test_error_text_is_escaped() -> None:
    header = read_header(_inbound())
    ack = build_ack(header, "AE", control_id="E1", now=NOW, error=("207", "bad | field ^ here"))
    err = ack.split(b"\r")[2]
    assert b"bad \\F\\ field \\S\\ here" in err


@pytest.mark.parametrize("version", ["2.3", "2.5.1"])
def test_err_names_the_field_in_the_form_the_version_knows(version: str) -> None:
    header = read_header(_inbound(version=version))
    words = "no appointment id: SCH-1 and SCH-2 are both empty"
    ack = build_ack(header, "AE", control_id="E2", now=NOW, error=("101", words), location="SCH-2")
    err = hl7.parse(ack.decode()).segment("ERR")
    if version == "2.3":  # ERR-1, an ELD: segment^sequence^field^code&words&table
        assert str(err[1]) == f"SCH^1^2^101&{words}&HL70357"
        assert len(err) == 2
    else:  # ERR-2 an ERL, ERR-3 the code, ERR-8 the words
        assert (str(err[2]), str(err[3]), str(err[4]), str(err[8])) == (
            "SCH^1^2",
            "101^^HL70357",
            "E",
            words,
        )
