"""Key ring, AES-256-GCM envelope encryption and keyed blind indexes.

Every resource version is sealed with its own random 256-bit data key (DEK) under AES-256-GCM
with a fresh 96-bit nonce and AAD ``type|id|version``; the DEK is wrapped by a key-encryption key
(KEK) with AAD naming the row and the KEK id.  Rotating the KEK rewraps only the 60-byte wrapped
DEKs, never the bodies.  Blind-index keys are derived with HKDF from a separate index secret, so
rotating KEKs never changes a search digest and no index key is ever an encryption key.

A key ring built from a file looks at the file (one ``stat``) before every seal and reloads it
when it changed, so once ``fhir-sched keys rotate`` has replaced the file no transaction that
starts afterwards seals under the old KEK; see :mod:`resources.rotation` for why that matters.
Changes to the file (create, rotate, retire) are serialised by an ``flock`` on ``<file>.lock``.

Key file format (JSON, mode 0600)::

    {"version": 1,
     "active": "k-20261122-ab12",
     "keks": {"k-20261122-ab12": "<base64 32 bytes>", ...},
     "index_secret": "<base64 32 bytes>"}
"""

from __future__ import annotations

import base64
import fcntl
import hmac
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "DecryptionError",
    "KeyRing",
    "Sealed",
    "generate_key_material",
    "load_keyring",
    "retire_key",
    "rotate_key_file",
    "write_key_file",
]

NONCE_BYTES = 12
KEY_BYTES = 32
DIGEST_BYTES = 16


class DecryptionError(Exception):
    """A sealed value did not open: wrong key, wrong row, or tampered bytes."""


@dataclass(frozen=True, slots=True)
class Sealed:
    """What is stored for one sealed body."""

    kek_id: str
    wrapped_key: bytes  # nonce || AESGCM(kek).encrypt(dek)
    nonce: bytes
    ciphertext: bytes


def _b64d(value: str) -> bytes:
    raw = base64.b64decode(value)
    if len(raw) != KEY_BYTES:
        raise ValueError("every key in the key file must be 32 bytes (base64)")
    return raw


def _b64e(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def new_kek_id() -> str:
    return f"k-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def generate_key_material() -> dict[str, Any]:
    """A fresh key document: one KEK (active) and one index secret."""
    kek_id = new_kek_id()
    return {
        "version": 1,
        "active": kek_id,
        "keks": {kek_id: _b64e(AESGCM.generate_key(bit_length=256))},
        "index_secret": _b64e(secrets.token_bytes(KEY_BYTES)),
    }


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever the key file is replaced (a new inode, mtime and usually size)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class KeyRing:
    """KEKs by id, the active one, and the blind-index secret.

    If built from a file, the ring follows the file: it is re-read before a seal whenever it
    changed on disk, and on an unknown KEK id, so a server keeps sealing under the active key
    and opening rows rewrapped by ``fhir-sched keys rotate`` running in another process.
    """

    keks: dict[str, bytes]
    active: str
    index_secret: bytes
    path: Path | None = None
    _signature: tuple[int, int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _index_keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    _aead: dict[str, AESGCM] = field(default_factory=dict, repr=False)

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> KeyRing:
        keks = {str(k): _b64d(str(v)) for k, v in dict(doc["keks"]).items()}
        active = str(doc["active"])
        if active not in keks:
            raise ValueError(f"active key {active!r} is not among the key file's keks")
        return cls(keks=keks, active=active, index_secret=_b64d(str(doc["index_secret"])))

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        """A ring that follows ``path``."""
        signature = _signature(path)
        ring = cls.from_document(json.loads(path.read_text()))
        ring.path = path
        ring._signature = signature
        return ring

    def to_document(self) -> dict[str, Any]:
        return {
            "version": 1,
            "active": self.active,
            "keks": {k: _b64e(v) for k, v in self.keks.items()},
            "index_secret": _b64e(self.index_secret),
        }

    # -- reload -----------------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the key file if it changed on disk. Returns True if anything was loaded."""
        with self._lock:
            return self._reload(force=force)

    def _reload(self, *, force: bool) -> bool:
        # Called with the lock held: the signature check and the load are one step, so two
        # threads cannot interleave and leave an older document in place of a newer one.
        if self.path is None:
            return False
        signature = _signature(self.path)
        if signature is None or (not force and signature == self._signature):
            return False
        # The index secret is kept as loaded at start: changing it would orphan every digest.
        fresh = KeyRing.from_document(json.loads(self.path.read_text()))
        self.keks, self.active, self._signature = fresh.keks, fresh.active, signature
        self._aead = {}
        return True

    def _active_kek(self) -> tuple[str, AESGCM]:
        """The active KEK as the key file has it now (one ``stat`` per call)."""
        with self._lock:
            self._reload(force=False)
            kek_id = self.active
            return kek_id, self._kek_locked(kek_id)

    def _kek(self, kek_id: str) -> AESGCM:
        with self._lock:
            return self._kek_locked(kek_id)

    def _kek_locked(self, kek_id: str) -> AESGCM:
        aead = self._aead.get(kek_id)
        if aead is None:
            key = self.keks.get(kek_id)
            if key is None and self._reload(force=True):
                key = self.keks.get(kek_id)
            if key is None:
                raise DecryptionError(f"key {kek_id} is not in the key ring")
            aead = AESGCM(key)
            self._aead[kek_id] = aead
        return aead

    # -- envelope encryption ------------------------------------------------------------------
    def seal(self, plaintext: bytes, *, aad: bytes) -> Sealed:
        """Encrypt ``plaintext`` under a fresh DEK wrapped by the active KEK."""
        return self.seal_many([(plaintext, aad)])[0]

    def seal_many(self, items: list[tuple[bytes, bytes]]) -> list[Sealed]:
        """:meth:`seal` for a batch of ``(plaintext, aad)``: one look at the key file and one
        DEK for the batch, with its own nonce per item and the DEK wrapped for each item's
        AAD, so every row still opens (and rewraps) on its own."""
        kek_id, kek = self._active_kek()
        key = AESGCM.generate_key(bit_length=256)
        dek = AESGCM(key)
        out = []
        for plaintext, aad in items:
            nonce = os.urandom(NONCE_BYTES)
            ciphertext = dek.encrypt(nonce, plaintext, aad)
            out.append(Sealed(kek_id, _wrap(kek, key, kek_id=kek_id, aad=aad), nonce, ciphertext))
        return out

    def open(self, sealed: Sealed, *, aad: bytes) -> bytes:
        """Decrypt; raises :class:`DecryptionError` if the row, key or bytes do not match."""
        dek = self._unwrap(sealed.wrapped_key, kek_id=sealed.kek_id, aad=aad)
        try:
            return AESGCM(dek).decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag as exc:
            raise DecryptionError("sealed body does not open for this row") from exc

    def rewrap(self, wrapped_key: bytes, *, kek_id: str, aad: bytes) -> tuple[str, bytes]:
        """Re-encrypt a wrapped DEK under the active KEK. Returns (new kek id, wrapped key)."""
        dek = self._unwrap(wrapped_key, kek_id=kek_id, aad=aad)
        active, kek = self._active_kek()
        return active, _wrap(kek, dek, kek_id=active, aad=aad)

    def _unwrap(self, wrapped: bytes, *, kek_id: str, aad: bytes) -> bytes:
        try:
            return self._kek(kek_id).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad + b"|" + kek_id.encode()
            )
        except InvalidTag as exc:
            raise DecryptionError("data key does not unwrap for this row") from exc

    # -- blind indexes ----------------------------------------------------------------------
    def index_key(self, purpose: str) -> bytes:
        """HKDF-SHA256 key for one index purpose (e.g. ``Patient.name``)."""
        key = self._index_keys.get(purpose)
        if key is None:
            key = HKDF(
                algorithm=hashes.SHA256(),
                length=KEY_BYTES,
                salt=b"fhir-sched blind index v1",
                info=purpose.encode(),
            ).derive(self.index_secret)
            self._index_keys[purpose] = key
        return key

    def blind(self, purpose: str, value: str) -> bytes:
        """Keyed digest (HMAC-SHA256, truncated to 16 bytes) of a normalised value."""
        return hmac.digest(self.index_key(purpose), value.encode(), "sha256")[:DIGEST_BYTES]


def _wrap(kek: AESGCM, dek: bytes, *, kek_id: str, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + kek.encrypt(nonce, dek, aad + b"|" + kek_id.encode())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise changes to the key file across processes (two rotations must not race)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_key_file(path: Path, doc: dict[str, Any]) -> None:
    """Write the key document atomically with mode 0600."""
    with _locked(path):
        _write(path, doc)


def create_secret_file_once(path: Path, make: Callable[[], dict[str, Any]]) -> None:
    """Create ``path`` (mode 0600) with ``make()`` unless it exists; two first runs at once
    must not each make their own secrets, so the check and the write happen under a lock."""
    if not path.exists():
        with _locked(path):
            if not path.exists():
                _write(path, make())


def load_keyring(*, key_file: Path, keys_json: str | None) -> KeyRing:
    """Keys from the environment if given, else from the key file (created on first run).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "keys.json"
    >>> ring = load_keyring(key_file=path, keys_json=None)
    >>> oct(path.stat().st_mode & 0o777), ring.active in ring.keks
    ('0o600', True)
    """
    if keys_json:
        return KeyRing.from_document(json.loads(keys_json))
    create_secret_file_once(key_file, generate_key_material)
    return KeyRing.from_file(key_file)


def rotate_key_file(path: Path) -> str:
    """Add a fresh KEK to the key file and make it active. Returns its id."""
    with _locked(path):
        doc = json.loads(path.read_text())
        kek_id = new_kek_id()
        while kek_id in doc["keks"]:
            kek_id = new_kek_id()
        doc["keks"][kek_id] = _b64e(AESGCM.generate_key(bit_length=256))
        doc["active"] = kek_id
        _write(path, doc)
    return kek_id


def retire_key(path: Path, kek_id: str) -> None:
    """Remove a KEK that is not active (the caller checks no row still uses it)."""
    with _locked(path):
        doc = json.loads(path.read_text())
        if doc["active"] == kek_id:
            raise ValueError("the active key cannot be retired; rotate first")
        if kek_id not in doc["keks"]:
            raise ValueError(f"no key {kek_id} in the key file")
        del doc["keks"][kek_id]
        _write(path, doc)
