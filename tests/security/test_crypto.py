"""KeyRing: envelope encryption, AAD binding, rotation, blind-index keys."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from fhir_server.settings import Settings
from security.crypto import (
    DecryptionError,
    KeyRing,
    Sealed,
    generate_key_material,
    load_keyring,
    retire_key,
    rotate_key_file,
)

AAD = b"Patient|p1|1"


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.from_document(generate_key_material())


def test_round_trip_and_fresh_nonces(ring: KeyRing) -> None:
    one = ring.seal(b'{"a":1}', aad=AAD)
    two = ring.seal(b'{"a":1}', aad=AAD)
    assert ring.open(one, aad=AAD) == b'{"a":1}'
    assert len(one.nonce) == 12
    assert one.nonce != two.nonce
    assert one.ciphertext != two.ciphertext
    assert one.wrapped_key != two.wrapped_key
    assert b'"a"' not in one.ciphertext


def test_a_batch_sealed_together_opens_row_by_row(ring: KeyRing) -> None:
    items = [(f"body {n}".encode(), f"row|{n}".encode()) for n in range(3)]
    boxes = ring.seal_many(items)
    assert len({b.nonce for b in boxes}) == 3 and len({b.wrapped_key for b in boxes}) == 3
    for (body, aad), box in zip(items, boxes, strict=True):
        assert ring.open(box, aad=aad) == body
    with pytest.raises(DecryptionError):  # each DEK wrap is bound to its own row
        ring.open(replace(boxes[0], wrapped_key=boxes[1].wrapped_key), aad=items[0][1])


@pytest.mark.parametrize(
    "aad", [b"Patient|p2|1", b"Patient|p1|2", b"Slot|p1|1"], ids=["id", "version", "type"]
)
def test_sealed_body_is_bound_to_its_row(ring: KeyRing, aad: bytes) -> None:
    sealed = ring.seal(b"secret", aad=AAD)
    with pytest.raises(DecryptionError):
        ring.open(sealed, aad=aad)


def test_tampering_is_detected(ring: KeyRing) -> None:
    s = ring.seal(b"secret", aad=AAD)
    flipped = bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:]
    with pytest.raises(DecryptionError):
        ring.open(Sealed(s.kek_id, s.wrapped_key, s.nonce, flipped), aad=AAD)
    bad_wrap = s.wrapped_key[:-1] + bytes([s.wrapped_key[-1] ^ 1])
    with pytest.raises(DecryptionError):
        ring.open(Sealed(s.kek_id, bad_wrap, s.nonce, s.ciphertext), aad=AAD)


def test_wrong_or_unknown_kek(ring: KeyRing) -> None:
    other = KeyRing.from_document(generate_key_material())
    s = ring.seal(b"secret", aad=AAD)
    with pytest.raises(DecryptionError):
        other.open(s, aad=AAD)
    forged = Sealed(other.active, s.wrapped_key, s.nonce, s.ciphertext)
    ring.keks[other.active] = other.keks[other.active]
    with pytest.raises(DecryptionError):
        ring.open(forged, aad=AAD)


def test_rotation_rewraps_and_blind_digests_stay(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = load_keyring(key_file=path, keys_json=None)
    assert path.stat().st_mode & 0o777 == 0o600
    sealed = ring.seal(b"body", aad=AAD)
    digest = ring.blind("Patient.name", "p:smith")
    old = ring.active
    new = rotate_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    ring.refresh(force=True)
    assert ring.active == new
    kek, wrapped = ring.rewrap(sealed.wrapped_key, kek_id=sealed.kek_id, aad=AAD)
    assert kek == new
    moved = Sealed(kek, wrapped, sealed.nonce, sealed.ciphertext)
    assert ring.open(moved, aad=AAD) == b"body"
    assert ring.blind("Patient.name", "p:smith") == digest
    with pytest.raises(ValueError, match="active"):
        retire_key(path, new)
    retire_key(path, old)
    ring.refresh(force=True)
    assert old not in ring.keks
    assert ring.open(moved, aad=AAD) == b"body"
    with pytest.raises(DecryptionError):
        ring.open(sealed, aad=AAD)


def test_index_keys_are_not_encryption_keys(ring: KeyRing) -> None:
    keys = {ring.index_key("Patient.name"), ring.index_key("Patient.phone")}
    assert len(keys) == 2
    assert not keys & set(ring.keks.values())
    assert ring.index_secret not in keys
    assert ring.blind("Patient.name", "p:smith") != ring.blind("Patient.family", "p:smith")


def test_keys_from_environment_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = generate_key_material()
    monkeypatch.setenv("FHIRSCHED_KEYS", json.dumps(doc))
    monkeypatch.setenv("FHIRSCHED_KEY_FILE", str(tmp_path / "absent.json"))
    settings = Settings()
    assert settings.keys is not None
    ring = load_keyring(key_file=settings.key_file, keys_json=settings.keys.get_secret_value())
    assert ring.active == doc["active"]
    assert ring.path is None  # nothing on disk to follow
    assert ring.open(ring.seal(b"body", aad=AAD), aad=AAD) == b"body"
    assert not (tmp_path / "absent.json").exists()
    assert doc["index_secret"] not in repr(settings)


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.json"
    rings: list[KeyRing] = []
    threads = [
        threading.Thread(target=lambda: rings.append(load_keyring(key_file=path, keys_json=None)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.stat().st_mode & 0o777 == 0o600
    assert len({r.active for r in rings}) == 1  # every first run got the same keys
    assert len({r.index_secret for r in rings}) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys.json", "keys.json.lock"]


def test_concurrent_rotations_lose_no_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    load_keyring(key_file=path, keys_json=None)
    made: list[str] = []
    threads = [
        threading.Thread(target=lambda: made.append(rotate_key_file(path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = json.loads(path.read_text())
    assert set(made) <= set(doc["keks"])
    assert len(doc["keks"]) == 9
    assert doc["active"] in made


def test_ring_following_the_file_opens_rows_rewrapped_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server = load_keyring(key_file=path, keys_json=None)
    sealed = server.seal(b"body", aad=AAD)
    rotator = load_keyring(key_file=path, keys_json=None)
    new = rotate_key_file(path)
    rotator.refresh(force=True)
    kek, wrapped = rotator.rewrap(sealed.wrapped_key, kek_id=sealed.kek_id, aad=AAD)
    assert kek == new
    moved = Sealed(kek, wrapped, sealed.nonce, sealed.ciphertext)
    assert server.open(moved, aad=AAD) == b"body"
    assert server.seal(b"next", aad=AAD).kek_id == new
