"""Sealed backup files open only whole, in order, under their own name and passphrase."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import pytest

from security.backup_seal import CHUNK, BackupKey, SealError, WrongPassphrase, open_file, seal_file

KEY = BackupKey.new("a passphrase", n=2**10)  # cheap for tests; backups use SCRYPT_N
DATA = os.urandom(2 * CHUNK + 1234)  # three chunks, the last one short


def _sealed(data: bytes = DATA, name: str = "database.sqlite") -> bytes:
    out = io.BytesIO()
    seal_file(KEY, name, io.BytesIO(data), out)
    return out.getvalue()


def _open(sealed: bytes, name: str = "database.sqlite", key: BackupKey = KEY) -> bytes:
    out = io.BytesIO()
    open_file(key, name, io.BytesIO(sealed), out)
    return out.getvalue()


@pytest.mark.parametrize("data", [b"", b"short", DATA[:CHUNK], DATA], ids=len)
def test_round_trip(data: bytes) -> None:
    assert _open(_sealed(data)) == data


def test_the_same_passphrase_and_salt_make_the_same_key() -> None:
    again = BackupKey.from_kdf("a passphrase", KEY.kdf())
    again.check(KEY.check_value())
    assert _open(_sealed(), key=again) == DATA


def test_a_wrong_passphrase_is_told_apart() -> None:
    with pytest.raises(WrongPassphrase):
        BackupKey.from_kdf("another", KEY.kdf()).check(KEY.check_value())


FRAME = 4 + CHUNK + 16  # a full chunk's length prefix, ciphertext and tag
HEADER = 24


def _frame(sealed: bytes, n: int) -> bytes:
    return sealed[HEADER + n * FRAME : HEADER + (n + 1) * FRAME]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: HEADER + FRAME],  # cut at a chunk boundary
        lambda b: b[:-1],
        lambda b: b + b"\0",
        lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:],
        lambda b: b[:HEADER] + _frame(b, 1) + _frame(b, 0) + b[HEADER + 2 * FRAME :],
    ],
    ids=["cut-at-chunk", "cut-in-chunk", "appended", "flipped-bit", "reordered"],
)
def test_a_damaged_file_does_not_open(damage: Callable[[bytes], bytes]) -> None:
    with pytest.raises(SealError):
        _open(damage(_sealed()))


def test_a_file_does_not_open_under_another_name() -> None:
    with pytest.raises(SealError):
        _open(_sealed(name="keys.json"), name="database.sqlite")


def test_the_cost_a_manifest_may_ask_is_bounded() -> None:
    with pytest.raises(SealError):
        BackupKey.from_kdf("a passphrase", {**KEY.kdf(), "n": 2**30})
