"""How evidence binds the guest's fresh key and the KBS nonce: the REPORT_DATA dialects.

- `trustee` (Trustee KBS 0.4.0, guest-components): SHA-384 over the RFC 8785 canonical JSON of
  {"nonce", "tee-pubkey", "additional-evidence"}, zero-padded to the 64 bytes of REPORT_DATA.
- `svsm` (today's COCONUT-SVSM and its aproxy): SHA-512 over the EC key's raw x and y, then the
  nonce's bytes, in the order the negotiation advertised (EcPublicKeyBytes, Challenge).

Which dialects a guest may use is set by policy (`bindings`): accepting the SVSM one is a
deliberate choice, since it hashes raw bytes rather than a self-describing document.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, cast

import rfc8785

from cvmstore.kbs.jose import TeePublicKey, b64url_decode

__all__ = ["BINDINGS", "svsm_binding", "trustee_digest", "trustee_report_data"]

BINDINGS = ("trustee", "svsm")


def trustee_digest(nonce: str, tee_pubkey: dict[str, str], additional_evidence: str) -> bytes:
    """The 48-byte SHA-384 binding digest of Trustee's protocol 0.4.0."""
    document = {
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
        "additional-evidence": additional_evidence,
    }
    return hashlib.sha384(rfc8785.dumps(cast(Any, document))).digest()


def trustee_report_data(nonce: str, tee_pubkey: dict[str, str], additional_evidence: str) -> bytes:
    """REPORT_DATA for the `trustee` dialect: the digest, zero-padded to 64 bytes."""
    return trustee_digest(nonce, tee_pubkey, additional_evidence).ljust(64, b"\0")


def svsm_binding(nonce: str, key: TeePublicKey) -> bytes | None:
    """REPORT_DATA for the `svsm` dialect, or None when it cannot apply.

    It cannot for an RSA key, or a nonce that is not standard base64.
    """
    if key.jwk.get("kty") != "EC":
        return None
    try:
        nonce_bytes = base64.b64decode(nonce, validate=True)
    except (binascii.Error, ValueError):
        return None
    x = b64url_decode(key.jwk["x"], "x")
    y = b64url_decode(key.jwk["y"], "y")
    return hashlib.sha512(x + y + nonce_bytes).digest()
