"""The key this server signs OpenID Connect id_tokens with (RS256), and its public JWKS.

The private key lives in its own file beside the key file (created 0600 on first run, like the
key file; or given as JSON in ``FHIRSCHED_SIGNING_KEY``). It signs identity assertions only:
access tokens are opaque and checked against the database.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from security.crypto import create_secret_file_once

__all__ = ["IdTokenSigner", "load_signer"]

ID_TOKEN_SECONDS = 3600


class IdTokenSigner:
    def __init__(self, key: RSAKey) -> None:
        self.key = key

    @property
    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "use": "sig", "alg": "RS256"}]}

    def id_token(
        self, *, issuer: str, subject: str, audience: str, fhir_user: str | None, nonce: str | None
    ) -> str:
        """An id_token (OpenID Connect Core §2) with SMART's ``fhirUser`` claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + ID_TOKEN_SECONDS,
        }
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if nonce:
            claims["nonce"] = nonce
        header = {"alg": "RS256", "kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=["RS256"])

    def read_hint(self, token: str, *, issuer: str) -> dict[str, Any] | None:
        """The claims of an id_token this server signed (``id_token_hint`` at sign-out), or
        None. An expired one is still a valid hint (OpenID RP-Initiated Logout §2)."""
        try:
            decoded = jwt.decode(token, self.key, algorithms=["RS256"])
        except (JoseError, ValueError):
            return None
        claims = dict(decoded.claims)
        if claims.get("iss") != issuer or not claims.get("sub") or not claims.get("aud"):
            return None
        return claims


def _new_signing_key() -> dict[str, Any]:
    key = RSAKey.generate_key(2048, parameters={"use": "sig"}, private=True)
    key.ensure_kid()
    return dict(key.as_dict(private=True))


def load_signer(*, path: Path, key_json: str | None) -> IdTokenSigner:
    """The signing key from the environment if given, else from ``path`` (made on first run)."""
    if key_json:
        return IdTokenSigner(RSAKey.import_key(json.loads(key_json)))
    create_secret_file_once(path, _new_signing_key)
    return IdTokenSigner(RSAKey.import_key(json.loads(path.read_text())))
