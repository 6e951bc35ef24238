"""`fhir-sched hl7 listen` as a process: an independent MLLP client (python-hl7) sends SIU over a
real socket; staff list what failed, fix the cause, replay it and read it back."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hl7
from hl7.mllp import open_hl7_connection

from fhir_server.demo import DEMO_CLINIC as DEMO
from tests.hl7_bridge.samples import NY, hl7_time, seg
from tests.integration.test_demo_command import free_port

EXE = Path(sys.executable).with_name("fhir-sched")


def _message(
    control: str, status: str, hour: int, *, minutes: str = "30", event: str = "S12", ids: str = ""
) -> bytes:
    day = datetime.now(NY).date() + timedelta(days=8)
    while day.weekday() != 1:  # a Tuesday
        day += timedelta(days=1)
    start = datetime(day.year, day.month, day.day, hour, tzinfo=NY).astimezone(UTC)
    return "\r".join(
        [
            seg(
                "MSH",
                {3: "EMR", 4: "MSFP", 7: hl7_time(start), 9: f"SIU^{event}", 10: control}
                | {11: "P", 12: "2.5.1"},
            ),
            seg(
                "SCH",
                {1: f"P{ids or control}", 2: f"F{ids or control}", 9: minutes, 10: "min"}
                | {25: status},
            ),
            seg("TQ1", {1: "1", 7: hl7_time(start)}),
            seg("PID", {1: "1", 3: "MRN77^^^MSFP^MR", 5: "STONE^EMMA", 7: "19900101"}),
            seg("AIS", {1: "1", 3: "consult^Consultation"}),
            seg("AIP", {1: "1", 3: "1234567893^SMITH^ALICE"}),
            seg("AIL", {1: "1", 3: "loc-main"}),
        ]
    ).encode()


async def _send(port: int, *messages: bytes) -> list[tuple[str, str]]:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    out = []
    try:
        for message in messages:
            writer.writeblock(message)
            await writer.drain()
            ack = hl7.parse((await asyncio.wait_for(reader.readblock(), 10)).decode())
            out.append((str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])))
    finally:
        writer.close()
        await writer.wait_closed()
    return out


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_listen_review_and_replay(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FHIRSCHED_DATABASE_URL": f"sqlite:///{tmp_path}/hl7.db",
        "FHIRSCHED_KEY_FILE": str(tmp_path / "keys.json"),
        "FHIRSCHED_CLINIC_FILE": str(DEMO),
        "FHIRSCHED_HL7_PORT": str(port),
    }
    assert _run(env, "clinic", "load", str(DEMO), "--weeks", "3").returncode == 0
    proc = subprocess.Popen([str(EXE), "hl7", "listen"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        acks: list[tuple[str, str]] = []
        while time.monotonic() < deadline and not acks:
            try:
                acks = asyncio.run(
                    _send(
                        port,
                        _message("1", "Booked", 9),
                        _message("2", "Confirmed", 10, minutes=""),  # no length: AE
                        _message("3", "1^SCH", 11),  # a local status: applied, with a warning
                        _message("4", "Booked", 14),
                        _message("5", "Cancelled", 14, event="S15", ids="4"),
                    )
                )
            except OSError:
                time.sleep(0.2)
        assert acks == [("AA", "1"), ("AE", "2"), ("AA", "3"), ("AA", "4"), ("AA", "5")]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"MLLP listening on 127.0.0.1:{port}" in err
    assert "STONE" not in err and "MRN77" not in err  # no PHI in the logs

    listing = _run(env, "hl7", "messages", "--status", "failed")
    assert listing.returncode == 0
    [line] = listing.stdout.splitlines()
    message_id = line.split()[0]
    assert "EMR.MSFP" in line and "AE" in line and "STONE" not in line

    shown = _run(env, "hl7", "show", message_id)
    assert "SCH|P2|F2" in shown.stdout
    assert "AIS-3 'consult' is no visit type of the clinic file" in shown.stdout

    warned = _run(env, "hl7", "messages", "--warnings")
    assert warned.returncode == 0
    [row, total, count] = warned.stdout.splitlines()
    assert row.split()[-1] == "status-unknown" and "  3  " in row
    assert (total, count.strip()) == ("1 message(s) with warnings", "status-unknown: 1")
    why = _run(env, "hl7", "show", row.split()[0]).stdout
    assert "warning: SCH-25 filler status '1^SCH' is in no status table" in why

    assert _run(env, "hl7", "replay", "--all-failed").returncode == 1  # still failing
    clinic = tmp_path / "clinic.yaml"
    clinic.write_text(
        DEMO.read_text().replace(
            "visit_types:\n",
            "visit_types:\n  - {code: consult, display: Consultation, minutes: 45}\n",
        )
    )
    env["FHIRSCHED_CLINIC_FILE"] = str(clinic)
    fixed = _run(env, "hl7", "replay", "--all-failed")
    assert fixed.returncode == 0 and f"{message_id}: applied" in fixed.stdout
    applied = _run(env, "hl7", "messages", "--status", "applied")
    assert len(applied.stdout.splitlines()) == 5
    # the EMR's cancellation, applied by the listener's own process, freed time for the
    # waitlist job of the server (the demo clinic keeps a waitlist)
    with sqlite3.connect(tmp_path / "hl7.db") as conn:
        assert conn.execute("SELECT count(*) FROM waitlist_freed").fetchone() == (1,)
