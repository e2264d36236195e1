"""JOSE as the Trustee KBS speaks it (protocol 0.4.0): TEE keys, resource JWEs, ES256 tokens.

Low-level: the KBS server and the guest client use this module; nothing else should need it.

- **TEE public key** (RFC 7517 JWK, `runtime-data.tee-pubkey`): EC `{"kty": "EC", "crv",
  "alg": "ECDH-ES+A256KW", "x", "y"}` on P-256, P-384 or P-521, or RSA `{"kty": "RSA", "alg":
  "RSA-OAEP-256" | "RSA1_5", "n", "e"}`. Its `alg` chooses how resources are encrypted to it.
  Trustee itself accepts EC only on P-256 and P-521; P-384 is accepted here because the JWA
  algorithm is defined for it and the clients we test against handle it.
- **Resource response** (RFC 7516 flattened JSON, as Trustee's `kbs/src/jwe/mod.rs` writes
  it): `{"protected", "encrypted_key", "iv", "ciphertext", "tag"}`, base64url without padding,
  no `aad` and no unprotected `header`. `enc` is always A256GCM with a random 32-byte CEK and
  12-byte IV; the AAD is the ASCII of the base64url protected header. For ECDH-ES+A256KW (RFC
  7518 section 4.6) the ephemeral key `epk` sits in the *protected* header, because Trustee's
  clients (guest-components, aproxy, SVSM) look for it nowhere else; Python JOSE libraries
  put it in the unprotected `header` when they write flattened JSON, which those clients
  cannot read. The Concat KDF uses SHA-256, AlgorithmID `ECDH-ES+A256KW`, empty PartyUInfo and
  PartyVInfo, and keydatalen 256; the CEK is wrapped with AES-KW (RFC 3394) into 40 bytes.
- **Tokens** (RFC 7515/7519 compact JWS): ES256 only, signed and verified through PyJWT; the
  time claims are checked here so that tests can pass the clock.

Every primitive comes from `cryptography` or PyJWT. Anything malformed or unverifiable raises
`JoseError`, whose message names the member at fault and never contains key or plaintext bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from cvmstore.attest._json import strict_json
from cvmstore.errors import FormatError

__all__ = [
    "JoseError",
    "TeePublicKey",
    "b64url_decode",
    "b64url_encode",
    "ec_public_jwk",
    "ec_public_key_from_jwk",
    "jwe_decrypt",
    "jwe_digest",
    "jwe_encrypt",
    "jwk_thumbprint",
    "parse_tee_jwk",
    "sign_jws",
    "tee_jwk",
    "verify_jws",
]

_ECDH_ES_A256KW = "ECDH-ES+A256KW"
_RSA_OAEP_256 = "RSA-OAEP-256"
_RSA1_5 = "RSA1_5"
_A256GCM = "A256GCM"
_ES256 = "ES256"

#: JWK crv -> (curve class, coordinate size in bytes).
_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_CRV_OF_CURVE = {curve.name: crv for crv, (curve, _) in _CURVES.items()}
#: Members that only a private (or symmetric) JWK has (RFC 7518 section 6).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_RSA_MIN_BITS = 2048
# Far above any real TEE key; it bounds the work a hostile JWK can make the KBS do.
_RSA_MAX_BITS = 16384
_CEK_SIZE = 32
_IV_SIZE = 12
_TAG_SIZE = 16
_WRAPPED_CEK_SIZE = _CEK_SIZE + 8  # AES-KW adds one 64-bit block
_JWE_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
#: RFC 7638 section 3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
_TIME_CLAIMS = ("exp", "nbf", "iat")

_U32 = struct.Struct(">I")
# RFC 7518 section 4.6.2 OtherInfo: AlgorithmID, PartyUInfo, PartyVInfo (each a u32be length
# and its bytes; the two parties are empty as in Trustee), then SuppPubInfo = keydatalen.
_KDF_OTHER_INFO = (
    _U32.pack(len(_ECDH_ES_A256KW))
    + _ECDH_ES_A256KW.encode("ascii")
    + _U32.pack(0)
    + _U32.pack(0)
    + _U32.pack(_CEK_SIZE * 8)
)
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_JWS = jwt.PyJWS()


class JoseError(ValueError):
    """A malformed or unverifiable JOSE object (the message says what, never secret bytes)."""


@dataclass(frozen=True, slots=True)
class TeePublicKey:
    """A validated TEE public key: what a resource JWE is encrypted to.

    Attributes:
        jwk: the JWK members exactly as received (the REPORT_DATA binding hashes these).
        alg: the key management algorithm: "ECDH-ES+A256KW", "RSA-OAEP-256" or "RSA1_5".
        key: the public key itself.
    """

    jwk: dict[str, str]
    alg: str
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _show(value: object) -> str:
    """A short repr of an untrusted, non-secret value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- base64url


def b64url_encode(data: bytes) -> str:
    """Encode `data` as base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object, what: str = "value") -> bytes:
    """Decode strict base64url: a `str`, the URL-safe alphabet, no padding, canonical.

    Canonical means the unused low bits of the last character are zero, so every byte string
    has exactly one accepted encoding.

    Raises:
        JoseError: naming `what`, if `text` is anything else.
    """
    if not isinstance(text, str):
        raise JoseError(f"{what}: expected a base64url string, got {type(text).__name__}")
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise JoseError(f"{what}: not base64url without padding")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:
        raise JoseError(f"{what}: not canonical base64url (nonzero trailing bits)")
    return data


# ---------------------------------------------------------------- JWKs


def _jwk_members(obj: object, what: str) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise JoseError(f"{what}: a JWK must be a JSON object, got {type(obj).__name__}")
    private = sorted(str(name) for name in _PRIVATE_MEMBERS.intersection(obj))
    if private:
        raise JoseError(f"{what}: a private key was sent (members {', '.join(private)})")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise JoseError(f"{what}: member {_show(name)} must be a string")
    return dict(obj)


def _member(jwk: Mapping[str, str], name: str, what: str) -> str:
    value = jwk.get(name)
    if value is None:
        raise JoseError(f"{what}: the {name!r} member is missing")
    return value


def _ec_key(jwk: Mapping[str, str], what: str) -> ec.EllipticCurvePublicKey:
    crv = _member(jwk, "crv", what)
    if crv not in _CURVES:
        raise JoseError(f"{what}: unsupported crv {_show(crv)} (want P-256, P-384 or P-521)")
    curve, size = _CURVES[crv]
    coords = []
    for name in ("x", "y"):
        coord = b64url_decode(_member(jwk, name, what), f"{what}: {name}")
        if len(coord) != size:
            raise JoseError(f"{what}: {name} has {len(coord)} bytes, {crv} needs {size}")
        coords.append(coord)
    try:
        # Decoding the uncompressed point makes OpenSSL check that it lies on the curve.
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + b"".join(coords))
    except ValueError:
        raise JoseError(f"{what}: the point is not on {crv}") from None


def _rsa_key(jwk: Mapping[str, str], what: str) -> rsa.RSAPublicKey:
    n_bytes = b64url_decode(_member(jwk, "n", what), f"{what}: n")
    e_bytes = b64url_decode(_member(jwk, "e", what), f"{what}: e")
    for name, raw in (("n", n_bytes), ("e", e_bytes)):
        # RFC 7518 section 6.3.1: the minimal big-endian octets, so one key has one JWK.
        if not raw or raw[0] == 0:
            raise JoseError(f"{what}: {name} is empty or has a leading zero byte")
    n = int.from_bytes(n_bytes, "big")
    e = int.from_bytes(e_bytes, "big")
    if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS:
        raise JoseError(
            f"{what}: the modulus has {n.bit_length()} bits "
            f"(want {_RSA_MIN_BITS} to {_RSA_MAX_BITS})"
        )
    if e < 3 or e % 2 == 0 or e >= n or e.bit_length() > 64:
        # OpenSSL encrypts only to exponents of at most 64 bits: refuse the key here, at
        # /attest, rather than fail to release a resource to it later.
        raise JoseError(f"{what}: the public exponent must be odd, 3 to 2^64, and below n")
    if n % 2 == 0:
        raise JoseError(f"{what}: the modulus is even")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise JoseError(f"{what}: not a usable RSA public key") from None


def parse_tee_jwk(obj: object, *, allow_rsa1_5: bool = False) -> TeePublicKey:
    """Validate the TEE public key a client sent (`runtime-data.tee-pubkey`).

    Args:
        obj: the parsed JSON value.
        allow_rsa1_5: accept `alg` RSA1_5 (RSAES-PKCS1-v1_5, deprecated; off by default).

    Raises:
        JoseError: not an object, a non-string member, a private member, an unknown or
            missing kty/crv/alg, bad base64url, a point off the curve or of the wrong size,
            an RSA modulus under 2048 bits, a bad exponent, or RSA1_5 while it is disabled.
    """
    what = "TEE public key"
    jwk = _jwk_members(obj, what)
    kty = _member(jwk, "kty", what)
    alg = _member(jwk, "alg", what)
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    if kty == "EC":
        if alg != _ECDH_ES_A256KW:
            raise JoseError(f"{what}: alg {_show(alg)} does not fit an EC key ({_ECDH_ES_A256KW})")
        key = _ec_key(jwk, what)
    elif kty == "RSA":
        if alg == _RSA1_5 and not allow_rsa1_5:
            raise JoseError(f"{what}: alg RSA1_5 is disabled (use {_RSA_OAEP_256})")
        if alg not in (_RSA_OAEP_256, _RSA1_5):
            raise JoseError(f"{what}: alg {_show(alg)} does not fit an RSA key")
        key = _rsa_key(jwk, what)
    else:
        raise JoseError(f"{what}: unsupported kty {_show(kty)} (want EC or RSA)")
    return TeePublicKey(jwk=jwk, alg=alg, key=key)


def _crv_of(curve: ec.EllipticCurve) -> str:
    crv = _CRV_OF_CURVE.get(curve.name)
    if crv is None:
        raise ValueError(f"curve {curve.name} is not P-256, P-384 or P-521")
    return crv


def ec_public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK `{"kty", "crv", "x", "y"}` of a P-256, P-384 or P-521 key (no `alg`).

    Raises:
        ValueError: the key is on another curve.
    """
    crv = _crv_of(public_key.curve)
    size = _CURVES[crv][1]
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url_encode(numbers.x.to_bytes(size, "big")),
        "y": b64url_encode(numbers.y.to_bytes(size, "big")),
    }


def ec_public_key_from_jwk(jwk: object) -> ec.EllipticCurvePublicKey:
    """Validate a public EC JWK on P-256, P-384 or P-521 (any `alg`, or none) and load it.

    Raises:
        JoseError: as for `parse_tee_jwk`, or `kty` is not EC.
    """
    what = "EC public key"
    members = _jwk_members(jwk, what)
    if _member(members, "kty", what) != "EC":
        raise JoseError(f"{what}: kty {_show(members['kty'])} is not EC")
    return _ec_key(members, what)


def tee_jwk(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, alg: str | None = None
) -> dict[str, str]:
    """The JWK a client sends as its TEE public key, checked as the KBS will check it.

    Args:
        public_key: the client's key: EC (P-256, P-384, P-521) or RSA (2048 bits or more).
        alg: ECDH-ES+A256KW for EC (the default); RSA-OAEP-256 (the default) or RSA1_5 for RSA.

    Raises:
        ValueError: an unsupported key or algorithm.
    """
    jwk: dict[str, str]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        alg = _ECDH_ES_A256KW if alg is None else alg
        point = ec_public_jwk(public_key)
        jwk = {"kty": "EC", "crv": point["crv"], "alg": alg, "x": point["x"], "y": point["y"]}
    elif isinstance(public_key, rsa.RSAPublicKey):
        alg = _RSA_OAEP_256 if alg is None else alg
        numbers = public_key.public_numbers()
        jwk = {
            "kty": "RSA",
            "alg": alg,
            "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        }
    else:
        raise TypeError(f"expected an EC or RSA public key, got {type(public_key).__name__}")
    try:
        parse_tee_jwk(jwk, allow_rsa1_5=True)
    except JoseError as exc:
        raise ValueError(f"this key cannot serve as a TEE key: {exc}") from None
    return jwk


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC or RSA public JWK.

    Raises:
        JoseError: an unsupported kty, or a required member missing or not a string.
    """
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise JoseError(f"JWK thumbprint: unsupported kty {_show(kty)}")
    required = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise JoseError(f"JWK thumbprint: the {name!r} member is missing or not a string")
        required[name] = value
    text = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(text.encode("utf-8"))
    return b64url_encode(digest.finalize())


# ---------------------------------------------------------------- JWE


def _kek(private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    shared = private_key.exchange(ec.ECDH(), peer)  # Z: the shared point's x, full length
    kdf = ConcatKDFHash(hashes.SHA256(), length=_CEK_SIZE, otherinfo=_KDF_OTHER_INFO)
    return kdf.derive(shared)


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def jwe_encrypt(key: TeePublicKey, plaintext: bytes) -> dict[str, str]:
    """Encrypt `plaintext` to a TEE key as the flattened JWE a Trustee KBS sends.

    A fresh CEK, IV and (for EC) ephemeral key are drawn from the OS on every call.

    Raises:
        ValueError: `key.alg` does not fit `key.key`.
    """
    cek = os.urandom(_CEK_SIZE)
    header: dict[str, object] = {"alg": key.alg, "enc": _A256GCM}
    if key.alg == _ECDH_ES_A256KW and isinstance(key.key, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(key.key.curve)
        header["epk"] = ec_public_jwk(ephemeral.public_key())
        encrypted_key = aes_key_wrap(_kek(ephemeral, key.key), cek)
    elif key.alg == _RSA_OAEP_256 and isinstance(key.key, rsa.RSAPublicKey):
        encrypted_key = key.key.encrypt(cek, _oaep())
    elif key.alg == _RSA1_5 and isinstance(key.key, rsa.RSAPublicKey):
        encrypted_key = key.key.encrypt(cek, padding.PKCS1v15())
    else:
        raise ValueError(f"alg {_show(key.alg)} does not fit a {type(key.key).__name__}")
    protected = b64url_encode(json.dumps(header, separators=(",", ":")).encode("ascii"))
    iv = os.urandom(_IV_SIZE)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    return {
        "protected": protected,
        "encrypted_key": b64url_encode(encrypted_key),
        "iv": b64url_encode(iv),
        "ciphertext": b64url_encode(sealed[:-_TAG_SIZE]),
        "tag": b64url_encode(sealed[-_TAG_SIZE:]),
    }


def _jwe_parts(jwe: object) -> dict[str, str]:
    if not isinstance(jwe, dict):
        raise JoseError(f"JWE: expected a JSON object, got {type(jwe).__name__}")
    for name in ("aad", "header", "unprotected"):
        if name in jwe:
            raise JoseError(f"JWE: the {name!r} member is not supported")
    unknown = [_show(name) for name in jwe if name not in _JWE_MEMBERS]
    if unknown:
        raise JoseError(f"JWE: unknown members {', '.join(unknown)}")
    parts = {}
    for name in _JWE_MEMBERS:
        value = jwe.get(name)
        if not isinstance(value, str):
            raise JoseError(f"JWE: the {name!r} member is missing or not a string")
        parts[name] = value
    return parts


def _jwe_header(protected: str) -> dict[str, object]:
    try:
        header = strict_json(b64url_decode(protected, "JWE: protected"), "JWE protected header")
    except FormatError as exc:
        raise JoseError(str(exc)) from None
    if not isinstance(header, dict):
        raise JoseError("JWE: the protected header is not a JSON object")
    for name in ("alg", "enc"):
        if not isinstance(header.get(name), str):
            raise JoseError(f"JWE: the protected header has no {name!r} string")
    if header["enc"] != _A256GCM:
        raise JoseError(f"JWE: enc {_show(header['enc'])} is not supported (only {_A256GCM})")
    # We understand no extension, compress nothing, and (like Trustee) derive with empty
    # PartyUInfo/PartyVInfo: refuse rather than silently misread any of these.
    for name in ("crit", "zip", "apu", "apv"):
        if name in header:
            raise JoseError(f"JWE: the header parameter {name!r} is not supported")
    return header


def _ecdh_cek(
    header: Mapping[str, object], encrypted_key: bytes, private_key: ec.EllipticCurvePrivateKey
) -> bytes:
    if header["alg"] != _ECDH_ES_A256KW:
        raise JoseError(f"JWE: alg {_show(header['alg'])} does not fit an EC key")
    epk = header.get("epk")
    if epk is None:
        raise JoseError("JWE: the protected header has no 'epk'")
    crv = _crv_of(private_key.curve)
    if not isinstance(epk, dict) or epk.get("crv") != crv:
        raise JoseError(f"JWE: epk is not a JWK on {crv}, the curve of the key")
    try:
        peer = ec_public_key_from_jwk(epk)
    except JoseError as exc:
        raise JoseError(f"JWE: epk: {exc}") from None
    if len(encrypted_key) != _WRAPPED_CEK_SIZE:
        raise JoseError(
            f"JWE: encrypted_key has {len(encrypted_key)} bytes, want {_WRAPPED_CEK_SIZE}"
        )
    try:
        return aes_key_unwrap(_kek(private_key, peer), encrypted_key)
    except InvalidUnwrap:
        raise JoseError("JWE: cannot decrypt") from None


def _rsa_cek(
    alg: object, encrypted_key: bytes, private_key: rsa.RSAPrivateKey, allow_rsa1_5: bool
) -> bytes:
    if alg == _RSA1_5 and not allow_rsa1_5:
        raise JoseError("JWE: alg RSA1_5 is disabled")
    if alg not in (_RSA_OAEP_256, _RSA1_5):
        raise JoseError(f"JWE: alg {_show(alg)} does not fit an RSA key")
    size = (private_key.key_size + 7) // 8
    if len(encrypted_key) != size:
        raise JoseError(f"JWE: encrypted_key has {len(encrypted_key)} bytes, want {size}")
    if alg == _RSA_OAEP_256:
        try:
            return private_key.decrypt(encrypted_key, _oaep())
        except ValueError:
            raise JoseError("JWE: cannot decrypt") from None
    # RFC 7516 section 11.5: a bad PKCS#1 v1.5 block must fail exactly like a bad tag, or the
    # difference is a Bleichenbacher oracle. So carry on with a random CEK; the tag then fails.
    try:
        cek = private_key.decrypt(encrypted_key, padding.PKCS1v15())
    except ValueError:
        cek = b""
    return cek if len(cek) == _CEK_SIZE else os.urandom(_CEK_SIZE)


def jwe_decrypt(
    jwe: object,
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    allow_rsa1_5: bool = False,
) -> bytes:
    """Check and decrypt a flattened JWE from a KBS with the TEE's private key.

    The JWE must have exactly the members `jwe_encrypt` writes; `epk` is read only from the
    protected header and must be on the private key's curve.

    Raises:
        JoseError: a malformed JWE, an algorithm that does not fit the key, RSA1_5 while it is
            disabled, or authentication failure ("cannot decrypt").
    """
    parts = _jwe_parts(jwe)
    header = _jwe_header(parts["protected"])
    encrypted_key = b64url_decode(parts["encrypted_key"], "JWE: encrypted_key")
    iv = b64url_decode(parts["iv"], "JWE: iv")
    ciphertext = b64url_decode(parts["ciphertext"], "JWE: ciphertext")
    tag = b64url_decode(parts["tag"], "JWE: tag")
    if len(iv) != _IV_SIZE or len(tag) != _TAG_SIZE:
        raise JoseError(f"JWE: A256GCM needs a {_IV_SIZE}-byte iv and a {_TAG_SIZE}-byte tag")
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        cek = _ecdh_cek(header, encrypted_key, private_key)
    elif isinstance(private_key, rsa.RSAPrivateKey):
        cek = _rsa_cek(header["alg"], encrypted_key, private_key, allow_rsa1_5)
    else:
        raise TypeError(f"expected an EC or RSA private key, got {type(private_key).__name__}")
    try:
        return AESGCM(cek).decrypt(iv, ciphertext + tag, parts["protected"].encode("ascii"))
    except InvalidTag:
        raise JoseError("JWE: cannot decrypt") from None


# ---------------------------------------------------------------- JWS


def _require_p256(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        raise TypeError(f"ES256 needs an EC key, got {type(key).__name__}")
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"ES256 needs a P-256 key, not {key.curve.name}")


def sign_jws(
    claims: Mapping[str, object],
    private_key: ec.EllipticCurvePrivateKey,
    *,
    headers: Mapping[str, object] | None = None,
) -> str:
    """Sign `claims` as a compact ES256 JWS (a JWT).

    The header carries `kid`, the RFC 7638 thumbprint of the public key, unless `headers`
    gives another; `headers` adds members but cannot change `alg`.

    Raises:
        ValueError: the key is not a P-256 key, or `headers` sets another `alg`.
    """
    _require_p256(private_key)
    extra = dict(headers or {})
    if extra.get("alg", _ES256) != _ES256:
        raise ValueError("sign_jws signs with ES256 only")
    if "kid" not in extra:
        extra["kid"] = jwk_thumbprint(ec_public_jwk(private_key.public_key()))
    merged = extra
    return jwt.encode(dict(claims), private_key, algorithm=_ES256, headers=merged)


def jwe_digest(jwe: Mapping[str, object]) -> str:
    """base64url SHA-256 of a flattened JWE's five members joined by newlines, in order.

    What the KBS's resource signature covers (`Cvmstore-Signature`, claim `jwe-sha256`).
    """
    joined = "\n".join(str(jwe.get(name, "")) for name in _JWE_MEMBERS)
    return b64url_encode(hashlib.sha256(joined.encode()).digest())


def _check_times(claims: Mapping[str, object], now: float, leeway: float) -> None:
    for name in _TIME_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise JoseError(f"JWS: the {name!r} claim is not a number")
        if name == "exp" and value <= now - leeway:
            raise JoseError("JWS: the token has expired")
        if name == "nbf" and value > now + leeway:
            raise JoseError("JWS: the token is not valid yet (nbf)")
        if name == "iat" and value > now + leeway:
            raise JoseError("JWS: the token was issued in the future (iat)")


def verify_jws(
    token: object,
    public_key: ec.EllipticCurvePublicKey,
    *,
    require: Sequence[str] = ("iat",),
    leeway: float = 30.0,
    now: float | None = None,
) -> dict[str, object]:
    """Verify a compact ES256 JWS and return its claims.

    Args:
        token: the compact JWS.
        public_key: the P-256 key it must be signed with.
        require: claims that must be present.
        leeway: seconds of clock skew allowed for `exp`, `nbf` and `iat`.
        now: the current UNIX time (default: the system clock).

    `aud` and `iss` are not checked here; a caller that uses them checks them.

    Raises:
        JoseError: not a JWS, an algorithm other than ES256, a critical extension, a bad
            signature, claims that are not a JSON object, a missing required claim, or a
            token that has expired, is not yet valid, or was issued in the future.
        ValueError: `public_key` is not a P-256 key.
    """
    _require_p256(public_key)
    if not isinstance(token, str):
        raise JoseError(f"JWS: expected a compact string, got {type(token).__name__}")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise JoseError(f"JWS: malformed token: {exc}") from None
    # Checked before PyJWT sees the token, so "none" and HMAC tokens never reach a verifier.
    if header.get("alg") != _ES256:
        raise JoseError(f"JWS: alg {_show(header.get('alg'))} is not allowed (only ES256)")
    if "crit" in header or "b64" in header:
        raise JoseError("JWS: critical header extensions are not supported")
    try:
        decoded = _JWS.decode_complete(token, public_key, algorithms=[_ES256])
    except jwt.InvalidSignatureError:
        raise JoseError("JWS: signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise JoseError(f"JWS: malformed token: {exc}") from None
    try:
        claims = strict_json(decoded["payload"], "JWS claims")
    except FormatError as exc:
        raise JoseError(str(exc)) from None
    if not isinstance(claims, dict):
        raise JoseError("JWS: the claims are not a JSON object")
    for name in require:
        if name not in claims:
            raise JoseError(f"JWS: the {name!r} claim is missing")
    _check_times(claims, time.time() if now is None else now, leeway)
    return claims
