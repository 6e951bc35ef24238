"""The key ring for the configured database, from ``FHIRSCHED_KEYS`` or the key file.

A key file is created on first run, for a database that holds nothing yet. If the file is
missing but the database already holds data, the configuration points at the wrong file (a
typo, another working directory): creating a fresh key there would seal new rows and audit
records under a key the old ones do not share, and the audit chain would no longer verify. So
every command and the server refuse, in one line, instead.
"""

from __future__ import annotations

from fhir_server.settings import Settings
from resources.sql.engine import Database, holds_data
from security.crypto import KeyRing, load_keyring

__all__ = ["KeysMissing", "open_keys"]


class KeysMissing(ValueError):
    """The database holds data and no key file is where the configuration says."""


def open_keys(settings: Settings, database: Database) -> KeyRing:
    """The key ring for ``database`` (migrated); :class:`KeysMissing` rather than a new key
    file for a database that already holds data."""
    if settings.keys is not None:
        return load_keyring(key_file=settings.key_file, keys_json=settings.keys.get_secret_value())
    if not settings.key_file.exists() and holds_data(database):
        raise KeysMissing(
            f"no key file at {settings.key_file}, but the database already holds data sealed "
            "under one: set FHIRSCHED_KEY_FILE to this database's key file (or FHIRSCHED_KEYS)"
        )
    return load_keyring(key_file=settings.key_file, keys_json=None)
