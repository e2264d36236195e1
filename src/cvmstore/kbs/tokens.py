"""The KBS's signing key: attestation tokens, ledger answers and resource signatures.

One P-256 key (ES256) per KBS deployment, made at first start and kept sealed in the database,
so every replica signs with the same key. Guests pin it by its RFC 7638 thumbprint: a proxy on
the guest's network can forward requests, but cannot make an answer that verifies.
"""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cvmstore.kbs.jose import JoseError, ec_public_jwk, jwk_thumbprint, sign_jws, verify_jws
from cvmstore.kbs.repository import Repository
from cvmstore.kbs.sealing import Sealer

__all__ = ["ISSUER", "TOKEN_KEY_SECRET", "SigningKey"]

ISSUER = "cvmstore-kbs"
TOKEN_KEY_SECRET = "token-signing-key"
EAR_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"


class SigningKey:
    """The deployment's ES256 key, and everything it signs."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.jwk = {**ec_public_jwk(self.public_key), "alg": "ES256", "use": "sig"}
        self.thumbprint = jwk_thumbprint(ec_public_jwk(self.public_key))

    def __repr__(self) -> str:
        return f"SigningKey(thumbprint={self.thumbprint})"

    @classmethod
    def load_or_create(cls, repository: Repository, sealer: Sealer) -> SigningKey:
        """The key stored in `repository`, made (first writer wins) when there is none."""
        sealed = repository.get_secret(TOKEN_KEY_SECRET)
        if sealed is None:
            fresh = ec.generate_private_key(ec.SECP256R1())
            der = fresh.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            sealed = repository.put_secret_if_absent(
                TOKEN_KEY_SECRET, sealer.seal(TOKEN_KEY_SECRET, der)
            )
        key = serialization.load_der_private_key(sealer.unseal(TOKEN_KEY_SECRET, sealed), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("the stored token key is not an EC key")
        return cls(key)

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of `claims` (iss and iat added), with the public JWK in its header."""
        return sign_jws(
            {"iss": ISSUER, "iat": int(time.time()), **claims},
            self._key,
            headers={"jwk": self.jwk, "kid": self.thumbprint},  # computed once, not per JWS
        )

    def verify(self, token: object, *, require: tuple[str, ...] = ("iat",)) -> dict[str, object]:
        """The claims of a token this key signed.

        Raises:
            JoseError: not signed by this key, expired, or malformed.
        """
        claims = verify_jws(token, self.public_key, require=require)
        if claims.get("iss") != ISSUER:
            raise JoseError("the token was not issued by this KBS")
        return claims

    def attestation_token(self, session_id: str, lifetime: float, claims: dict[str, Any]) -> str:
        """An EAR-style attestation token (Trustee's claim layout) for an attested session."""
        now = int(time.time())
        return self.sign(
            {
                "jti": session_id,
                "exp": now + int(lifetime),
                "eat_profile": EAR_PROFILE,
                "ear.verifier-id": {"developer": "cvmstore", "build": "cvmstore-kbs"},
                "submods": {
                    "cpu0": {
                        "ear.status": "affirming",
                        "ear.appraisal-policy-id": "default",
                        "ear.veraison.annotated-evidence": claims,
                    }
                },
            }
        )
