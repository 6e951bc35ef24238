"""Sealing a backup under a passphrase: scrypt for the key, AES-256-GCM for the files.

A backup directory leaves the machine (another disk, another site), so nothing in it may be
readable without the passphrase: the key file and the signing key above all, and the database
too, whose index tables say who booked what and when even though its bodies are sealed
(README, "What the search index reveals").

- The master key is scrypt(passphrase, salt, n, r=8, p=1), 32 bytes; the salt and the cost
  are kept in the manifest. See RFC 7914.
- Every use has its own HKDF-SHA256 subkey: ``check`` (a value in the manifest that tells a
  wrong passphrase apart from damaged files), ``manifest`` (an HMAC over the manifest) and one
  key per file, salted with 16 random bytes from the file's header and bound to its name, so
  a file put in another's place does not open.
- A sealed file is ``MAGIC || salt`` then chunks of at most ``CHUNK`` plaintext bytes, each
  ``u32 length || AES-GCM(ciphertext)`` with the nonce ``u88 counter || final flag`` and the
  header as AAD: chunks cannot be reordered, and a file cut at a chunk boundary fails on its
  missing final chunk (the STREAM construction, Hoang, Reyhanitabar, Rogaway, Vizár 2015).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["BackupKey", "SealError", "WrongPassphrase", "open_file", "seal_file"]

MAGIC = b"FSBKSEAL"
SALT_BYTES = 16
CHUNK = 1024 * 1024
# 128 * n * r bytes = 32 MiB and about 0.1 s on the test machine; restore refuses more
# than MAX_N, so a manifest cannot make it allocate without bound.
SCRYPT_N = 2**15
MAX_N = 2**20
_LENGTH = struct.Struct(">I")
_CHECK = b"fhir-sched backup v1"


class SealError(Exception):
    """A sealed file or the manifest does not open: damaged, cut short or swapped."""


class WrongPassphrase(SealError):
    """The passphrase is not the one the backup was sealed under."""


def _subkey(master: bytes, purpose: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=purpose).derive(master)


@dataclass(frozen=True, slots=True)
class BackupKey:
    """The master key of one backup and the KDF parameters that made it."""

    master: bytes
    salt: bytes
    n: int

    @classmethod
    def new(cls, passphrase: str, *, n: int = SCRYPT_N) -> BackupKey:
        return cls.derive(passphrase, salt=os.urandom(SALT_BYTES), n=n)

    @classmethod
    def derive(cls, passphrase: str, *, salt: bytes, n: int) -> BackupKey:
        if not passphrase:
            raise ValueError("the passphrase is empty")
        if not 2 <= n <= MAX_N or n & (n - 1):
            raise SealError(f"scrypt cost n={n} is not a power of two up to {MAX_N}")
        master = Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase.encode())
        return cls(master, salt, n)

    @classmethod
    def from_kdf(cls, passphrase: str, kdf: dict[str, Any]) -> BackupKey:
        """The key a manifest's ``kdf`` entry describes."""
        if kdf.get("name") != "scrypt" or kdf.get("r") != 8 or kdf.get("p") != 1:
            raise SealError("the backup names a key derivation this version does not know")
        return cls.derive(passphrase, salt=base64.b64decode(str(kdf["salt"])), n=int(kdf["n"]))

    def kdf(self) -> dict[str, Any]:
        return {"name": "scrypt", "n": self.n, "r": 8, "p": 1, "salt": _b64(self.salt)}

    def check_value(self) -> str:
        return hmac.digest(_subkey(self.master, b"check"), _CHECK, "sha256").hex()

    def check(self, value: str) -> None:
        """Raise :class:`WrongPassphrase` unless ``value`` is this key's check value."""
        if not hmac.compare_digest(self.check_value(), value):
            raise WrongPassphrase("wrong passphrase")

    def mac(self, body: bytes) -> str:
        return hmac.digest(_subkey(self.master, b"manifest"), body, "sha256").hex()

    def file_key(self, name: str, salt: bytes) -> AESGCM:
        return AESGCM(_subkey(self.master, b"file|" + name.encode(), salt))


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _nonce(counter: int, final: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def seal_file(key: BackupKey, name: str, source: IO[bytes], target: IO[bytes]) -> str:
    """Seal what ``source`` holds, to its end, into ``target`` as the file ``name``.
    Returns the SHA-256 (hex) of the bytes written."""
    header = MAGIC + os.urandom(SALT_BYTES)
    aead = key.file_key(name, header[len(MAGIC) :])
    digest = hashlib.sha256(header)
    target.write(header)
    counter = 0
    chunk = source.read(CHUNK)
    while True:
        following = source.read(CHUNK) if chunk else b""
        final = not following
        sealed = aead.encrypt(_nonce(counter, final), chunk, header)
        frame = _LENGTH.pack(len(sealed)) + sealed
        target.write(frame)
        digest.update(frame)
        if final:
            return digest.hexdigest()
        counter += 1
        chunk = following


def _exactly(source: IO[bytes], size: int) -> bytes:
    data = source.read(size)
    if len(data) != size:
        raise SealError("the sealed file is cut short")
    return data


def open_file(key: BackupKey, name: str, source: IO[bytes], target: IO[bytes]) -> None:
    """Open the sealed file ``name`` from ``source`` into ``target``; :class:`SealError` if it
    was altered, cut short or is another file's."""
    header = _exactly(source, len(MAGIC) + SALT_BYTES)
    if not header.startswith(MAGIC):
        raise SealError("not a sealed backup file")
    aead = key.file_key(name, header[len(MAGIC) :])
    counter = 0
    while True:
        (size,) = _LENGTH.unpack(_exactly(source, _LENGTH.size))
        if size > CHUNK + 16:
            raise SealError("the sealed file is damaged")
        sealed = _exactly(source, size)
        for final in (False, True):
            try:
                chunk = aead.decrypt(_nonce(counter, final), sealed, header)
            except InvalidTag:
                continue
            break
        else:
            raise SealError("the sealed file does not open (damaged, or not this file)")
        target.write(chunk)
        if final:
            if source.read(1):
                raise SealError("the sealed file has bytes after its end")
            return
        counter += 1
