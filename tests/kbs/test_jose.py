"""JOSE for the KBS: TEE JWKs, the Trustee-shaped flattened JWE, thumbprints, ES256 tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from cvmstore.kbs.jose import (
    JoseError,
    TeePublicKey,
    b64url_decode,
    b64url_encode,
    ec_public_jwk,
    ec_public_key_from_jwk,
    jwe_decrypt,
    jwe_encrypt,
    jwk_thumbprint,
    parse_tee_jwk,
    sign_jws,
    tee_jwk,
    verify_jws,
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
NOW = 1_800_000_000.0
CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
SIZES = {"P-256": 32, "P-384": 48, "P-521": 66}
#: Recipient kind -> (key factory, JWK alg).
KINDS: dict[str, tuple[Callable[[], PrivateKey], str]] = {
    "P-256": (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDH-ES+A256KW"),
    "P-384": (lambda: ec.generate_private_key(ec.SECP384R1()), "ECDH-ES+A256KW"),
    "P-521": (lambda: ec.generate_private_key(ec.SECP521R1()), "ECDH-ES+A256KW"),
    "RSA-OAEP-256-2048": (lambda: rsa.generate_private_key(65537, 2048), "RSA-OAEP-256"),
    "RSA-OAEP-256-3072": (lambda: rsa.generate_private_key(65537, 3072), "RSA-OAEP-256"),
    "RSA1_5-2048": (lambda: rsa.generate_private_key(65537, 2048), "RSA1_5"),
}


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {kind: make() for kind, (make, _) in KINDS.items()}


def recipient(keys: dict[str, PrivateKey], kind: str) -> tuple[TeePublicKey, PrivateKey]:
    private = keys[kind]
    jwk = tee_jwk(private.public_key(), KINDS[kind][1])
    return parse_tee_jwk(jwk, allow_rsa1_5=True), private


def header_of(jwe: dict[str, str]) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(b64url_decode(jwe["protected"]))
    return header


def with_header(jwe: dict[str, str], header: dict[str, Any]) -> dict[str, str]:
    protected = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    return {**jwe, "protected": protected}


def flip_last_byte(text: str) -> str:
    data = bytearray(b64url_decode(text))
    data[-1] ^= 0x01
    return b64url_encode(bytes(data))


# ---------------------------------------------------------------- base64url


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xfb\xff", b"\xff\xfe\xfd", bytes(range(256))])
def test_b64url_round_trip_without_padding(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert "+" not in text
    assert "/" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b"AAAA", id="bytes"),
        pytest.param(None, id="none"),
        pytest.param(1234, id="int"),
        pytest.param("AA==", id="padding"),
        pytest.param("AAA=", id="one-pad"),
        pytest.param("+/8", id="standard-alphabet"),
        pytest.param("AA AA", id="space"),
        pytest.param("AAAA\n", id="newline"),
        pytest.param("A", id="impossible-length"),
        pytest.param("AB", id="nonzero-trailing-bits"),
        pytest.param("AAB", id="nonzero-trailing-bits-3"),
        pytest.param("ÀÀÀÀ", id="non-ascii"),
    ],
)
def test_b64url_decode_is_strict(text: object) -> None:
    with pytest.raises(JoseError, match=r"^thing: "):
        b64url_decode(text, "thing")


# ---------------------------------------------------------------- JWE round trips


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("plaintext", [b"", b"root secret \x00\xff" * 100])
def test_jwe_round_trip(keys: dict[str, PrivateKey], kind: str, plaintext: bytes) -> None:
    key, private = recipient(keys, kind)
    jwe = jwe_encrypt(key, plaintext)
    assert jwe_decrypt(jwe, private, allow_rsa1_5=True) == plaintext


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_jwe_shape_is_trustee_flattened(keys: dict[str, PrivateKey], kind: str) -> None:
    key, private = recipient(keys, kind)
    jwe = jwe_encrypt(key, b"secret")
    assert set(jwe) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    for value in jwe.values():
        b64url_decode(value)  # every member is unpadded base64url
    header = header_of(jwe)
    assert header["alg"] == KINDS[kind][1]
    assert header["enc"] == "A256GCM"
    assert len(b64url_decode(jwe["iv"])) == 12
    assert len(b64url_decode(jwe["tag"])) == 16
    assert len(b64url_decode(jwe["ciphertext"])) == len(b"secret")
    if isinstance(private, ec.EllipticCurvePrivateKey):
        assert set(header) == {"alg", "enc", "epk"}
        assert set(header["epk"]) == {"crv", "kty", "x", "y"}
        assert header["epk"]["crv"] == kind
        assert len(b64url_decode(jwe["encrypted_key"])) == 40
    else:
        assert set(header) == {"alg", "enc"}
        assert len(b64url_decode(jwe["encrypted_key"])) == private.key_size // 8


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_jwe_is_fresh_every_call(keys: dict[str, PrivateKey], kind: str) -> None:
    key, _ = recipient(keys, kind)
    first, second = jwe_encrypt(key, b"same"), jwe_encrypt(key, b"same")
    for name in ("protected", "encrypted_key", "iv", "ciphertext", "tag"):
        if name == "protected" and "epk" not in header_of(first):
            continue  # an RSA header has nothing random in it
        assert first[name] != second[name], name


@pytest.mark.parametrize("kind", ["P-256", "P-384", "P-521"])
def test_ecdh_kdf_matches_rfc7518_by_hand(keys: dict[str, PrivateKey], kind: str) -> None:
    """Derive the KEK with hashlib (one Concat KDF round) and open the JWE without jose.py."""
    key, private = recipient(keys, kind)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    jwe = jwe_encrypt(key, b"by hand")
    epk = header_of(jwe)["epk"]
    point = b"\x04" + b64url_decode(epk["x"]) + b64url_decode(epk["y"])
    peer = ec.EllipticCurvePublicKey.from_encoded_point(CURVES[kind], point)
    z = private.exchange(ec.ECDH(), peer)
    alg = b"ECDH-ES+A256KW"
    other = len(alg).to_bytes(4, "big") + alg + bytes(4) + bytes(4) + (256).to_bytes(4, "big")
    kek = hashlib.sha256((1).to_bytes(4, "big") + z + other).digest()
    cek = aes_key_unwrap(kek, b64url_decode(jwe["encrypted_key"]))
    sealed = b64url_decode(jwe["ciphertext"]) + b64url_decode(jwe["tag"])
    aad = jwe["protected"].encode("ascii")
    assert AESGCM(cek).decrypt(b64url_decode(jwe["iv"]), sealed, aad) == b"by hand"


# ---------------------------------------------------------------- JWE tampering


@pytest.mark.parametrize("kind", ["P-256", "P-521", "RSA-OAEP-256-2048", "RSA1_5-2048"])
@pytest.mark.parametrize("member", ["encrypted_key", "iv", "ciphertext", "tag"])
def test_jwe_tampered_member_fails(keys: dict[str, PrivateKey], kind: str, member: str) -> None:
    key, private = recipient(keys, kind)
    jwe = jwe_encrypt(key, b"do not touch")
    jwe[member] = flip_last_byte(jwe[member])
    with pytest.raises(JoseError, match="cannot decrypt"):
        jwe_decrypt(jwe, private, allow_rsa1_5=True)


@pytest.mark.parametrize("kind", ["P-256", "RSA-OAEP-256-2048"])
def test_jwe_tampered_protected_bytes_fail(keys: dict[str, PrivateKey], kind: str) -> None:
    key, private = recipient(keys, kind)
    jwe = jwe_encrypt(key, b"aad")
    header = header_of(jwe)
    # Same meaning, other bytes (a harmless extra member, whitespace): the AAD differs.
    for changed in (
        with_header(jwe, {**header, "kid": "x"}),
        {**jwe, "protected": b64url_encode(json.dumps(header, indent=1).encode())},
    ):
        with pytest.raises(JoseError, match="cannot decrypt"):
            jwe_decrypt(changed, private)
    with pytest.raises(JoseError):
        jwe_decrypt({**jwe, "protected": flip_last_byte(jwe["protected"])}, private)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"alg": "ECDH-ES"}, "does not fit", id="alg"),
        pytest.param({"alg": "RSA-OAEP-256"}, "does not fit", id="alg-rsa"),
        pytest.param({"enc": "A128GCM"}, "enc 'A128GCM' is not supported", id="enc"),
        pytest.param({"epk": "other"}, "cannot decrypt", id="epk"),
        pytest.param({"epk": "P-384"}, "curve of the key", id="epk-curve"),
        pytest.param({"epk": None}, "no 'epk'", id="epk-gone"),
    ],
)
def test_jwe_tampered_header_values_fail(
    keys: dict[str, PrivateKey], change: dict[str, Any], message: str
) -> None:
    key, private = recipient(keys, "P-256")
    jwe = jwe_encrypt(key, b"header")
    header = {**header_of(jwe), **change}
    if header["epk"] == "other":
        header["epk"] = ec_public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    elif header["epk"] == "P-384":
        header["epk"] = ec_public_jwk(ec.generate_private_key(ec.SECP384R1()).public_key())
    elif header["epk"] is None:
        del header["epk"]
    with pytest.raises(JoseError, match=message):
        jwe_decrypt(with_header(jwe, header), private)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        pytest.param("P-256", "cannot decrypt", id="same-curve"),
        pytest.param("P-384", "curve of the key", id="other-curve"),
        pytest.param("RSA-OAEP-256-2048", "does not fit an RSA key", id="rsa-key"),
    ],
)
def test_jwe_wrong_private_key_fails(keys: dict[str, PrivateKey], wrong: str, message: str) -> None:
    key, _ = recipient(keys, "P-256")
    other = ec.generate_private_key(ec.SECP256R1()) if wrong == "P-256" else keys[wrong]
    with pytest.raises(JoseError, match=message):
        jwe_decrypt(jwe_encrypt(key, b"not yours"), other)


@pytest.mark.parametrize("kind", ["RSA-OAEP-256-2048", "RSA1_5-2048"])
def test_jwe_wrong_rsa_key_fails(keys: dict[str, PrivateKey], kind: str) -> None:
    key, _ = recipient(keys, kind)
    other = rsa.generate_private_key(65537, 2048)
    with pytest.raises(JoseError, match="cannot decrypt"):
        jwe_decrypt(jwe_encrypt(key, b"not yours"), other, allow_rsa1_5=True)


def test_rsa1_5_bad_padding_looks_like_a_bad_tag(keys: dict[str, PrivateKey]) -> None:
    """RFC 7516 section 11.5: no Bleichenbacher oracle; both failures read the same."""
    key, private = recipient(keys, "RSA1_5-2048")
    jwe = jwe_encrypt(key, b"oracle")
    garbage = {**jwe, "encrypted_key": b64url_encode(b"\x01" * 256)}
    bad_tag = {**jwe, "tag": flip_last_byte(jwe["tag"])}
    messages = []
    for case in (garbage, bad_tag):
        with pytest.raises(JoseError) as info:
            jwe_decrypt(case, private, allow_rsa1_5=True)
        messages.append(str(info.value))
    assert messages == ["JWE: cannot decrypt", "JWE: cannot decrypt"]


def test_rsa1_5_is_disabled_by_default_when_decrypting(keys: dict[str, PrivateKey]) -> None:
    key, private = recipient(keys, "RSA1_5-2048")
    with pytest.raises(JoseError, match="RSA1_5 is disabled"):
        jwe_decrypt(jwe_encrypt(key, b"old"), private)


def _shape_cases() -> list[Any]:
    def header(**changes: Any) -> Callable[[dict[str, str]], object]:
        def make(jwe: dict[str, str]) -> object:
            base = header_of(jwe)
            base.update(changes)
            return with_header(jwe, {k: v for k, v in base.items() if v is not None})

        return make

    def member(**changes: Any) -> Callable[[dict[str, str]], object]:
        return lambda jwe: {k: v for k, v in {**jwe, **changes}.items() if v is not None}

    def raw_protected(text: bytes) -> Callable[[dict[str, str]], object]:
        return lambda jwe: {**jwe, "protected": b64url_encode(text)}

    return [
        pytest.param(lambda jwe: [jwe], "expected a JSON object", id="not-a-dict"),
        pytest.param(lambda jwe: json.dumps(jwe), "expected a JSON object", id="a-string"),
        pytest.param(member(tag=None), "'tag' member is missing", id="missing-tag"),
        pytest.param(member(protected=None), "'protected' member is missing", id="no-protected"),
        pytest.param(member(aad="x"), "'aad' member is not supported", id="aad"),
        pytest.param(member(header={}), "'header' member is not supported", id="header"),
        pytest.param(member(recipients=[]), "unknown members", id="unknown-member"),
        pytest.param(member(iv=12), "'iv' member is missing or not a string", id="iv-int"),
        pytest.param(member(iv="AAAA"), "12-byte iv", id="iv-short"),
        pytest.param(member(tag="AAAA"), "16-byte tag", id="tag-short"),
        pytest.param(member(encrypted_key="AAAA"), "want 40", id="wrapped-key-short"),
        pytest.param(member(ciphertext="AA=="), "ciphertext: not base64url", id="padded"),
        pytest.param(raw_protected(b"not json"), "not valid JSON", id="protected-not-json"),
        pytest.param(raw_protected(b"[1]"), "not a JSON object", id="protected-array"),
        pytest.param(
            raw_protected(b'{"alg":"ECDH-ES+A256KW","alg":"RSA1_5","enc":"A256GCM"}'),
            "appears twice",
            id="protected-duplicate-key",
        ),
        pytest.param(header(alg=None), "no 'alg'", id="no-alg"),
        pytest.param(header(enc=None), "no 'enc'", id="no-enc"),
        pytest.param(header(enc=256), "no 'enc'", id="enc-int"),
        pytest.param(header(crit=["exp"]), "'crit' is not supported", id="crit"),
        pytest.param(header(zip="DEF"), "'zip' is not supported", id="zip"),
        pytest.param(header(apu="QWxpY2U"), "'apu' is not supported", id="apu"),
        pytest.param(header(epk="P-256"), "curve of the key", id="epk-string"),
        pytest.param(
            lambda jwe: with_header(
                jwe, {**header_of(jwe), "epk": {**header_of(jwe)["epk"], "d": "AA"}}
            ),
            "a private key was sent",
            id="epk-private",
        ),
        pytest.param(
            lambda jwe: with_header(
                jwe,
                {**header_of(jwe), "epk": {**header_of(jwe)["epk"], "x": b64url_encode(bytes(32))}},
            ),
            "not on P-256",
            id="epk-off-curve",
        ),
    ]


@pytest.mark.parametrize(("mutate", "message"), _shape_cases())
def test_jwe_malformed_is_refused(
    keys: dict[str, PrivateKey], mutate: Callable[[dict[str, str]], object], message: str
) -> None:
    key, private = recipient(keys, "P-256")
    with pytest.raises(JoseError, match=message):
        jwe_decrypt(mutate(jwe_encrypt(key, b"shape")), private)


def test_jwe_encrypt_refuses_a_mismatched_key(keys: dict[str, PrivateKey]) -> None:
    ec_key, _ = recipient(keys, "P-256")
    with pytest.raises(ValueError, match="does not fit"):
        jwe_encrypt(TeePublicKey(jwk=ec_key.jwk, alg="RSA-OAEP-256", key=ec_key.key), b"x")


# ---------------------------------------------------------------- TEE JWKs


EC_JWK = tee_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
RSA_KEY = rsa.generate_private_key(65537, 2048).public_key()
RSA_JWK = tee_jwk(RSA_KEY)
N = RSA_KEY.public_numbers().n


def _int_b64(value: int, size: int | None = None) -> str:
    return b64url_encode(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


def _bad_jwks() -> list[Any]:
    p256 = 2**256 - 2**224 + 2**192 + 2**96 - 1
    y = int.from_bytes(b64url_decode(EC_JWK["y"]), "big")
    small = rsa.generate_private_key(65537, 1024).public_key().public_numbers().n
    key_int: dict[object, str] = {1: "x"}
    return [
        pytest.param([EC_JWK], "must be a JSON object", id="list"),
        pytest.param(json.dumps(EC_JWK), "must be a JSON object", id="string"),
        pytest.param(None, "must be a JSON object", id="none"),
        pytest.param({**EC_JWK, "x": 5}, "member 'x' must be a string", id="x-int"),
        pytest.param({**EC_JWK, "kid": 7}, "member 'kid' must be a string", id="kid-int"),
        pytest.param({**EC_JWK, "alg": None}, "'alg' must be a string", id="alg-null"),
        pytest.param(key_int | EC_JWK, "member 1 must be a string", id="key-int"),
        pytest.param({**EC_JWK, "d": "AAAA"}, "a private key was sent", id="ec-d"),
        pytest.param({**RSA_JWK, "d": "AA", "p": "AA"}, "a private key was sent", id="rsa-d-p"),
        pytest.param({**RSA_JWK, "oth": [{}]}, "a private key was sent", id="rsa-oth"),
        pytest.param({**EC_JWK, "kty": "OKP"}, "unsupported kty 'OKP'", id="kty-okp"),
        pytest.param({**EC_JWK, "kty": "oct"}, "unsupported kty", id="kty-oct"),
        pytest.param({**EC_JWK, "kty": "ec"}, "unsupported kty", id="kty-lowercase"),
        pytest.param({k: v for k, v in EC_JWK.items() if k != "kty"}, "'kty'", id="no-kty"),
        pytest.param({k: v for k, v in EC_JWK.items() if k != "alg"}, "'alg'", id="ec-no-alg"),
        pytest.param({k: v for k, v in RSA_JWK.items() if k != "alg"}, "'alg'", id="rsa-no-alg"),
        pytest.param({k: v for k, v in EC_JWK.items() if k != "crv"}, "'crv'", id="no-crv"),
        pytest.param({k: v for k, v in EC_JWK.items() if k != "x"}, "'x'", id="no-x"),
        pytest.param({k: v for k, v in EC_JWK.items() if k != "y"}, "'y'", id="no-y"),
        pytest.param({k: v for k, v in RSA_JWK.items() if k != "n"}, "'n'", id="no-n"),
        pytest.param({k: v for k, v in RSA_JWK.items() if k != "e"}, "'e'", id="no-e"),
        pytest.param({**EC_JWK, "crv": "P-192"}, "unsupported crv", id="crv-p192"),
        pytest.param({**EC_JWK, "crv": "secp256k1"}, "unsupported crv", id="crv-k1"),
        pytest.param({**EC_JWK, "alg": "ECDH-ES"}, "does not fit an EC key", id="ec-alg-direct"),
        pytest.param({**EC_JWK, "alg": "RSA-OAEP-256"}, "does not fit an EC key", id="ec-alg-rsa"),
        pytest.param({**RSA_JWK, "alg": "RSA-OAEP"}, "does not fit an RSA key", id="rsa-oaep-sha1"),
        pytest.param({**RSA_JWK, "alg": "ECDH-ES+A256KW"}, "does not fit an RSA", id="rsa-alg-ec"),
        pytest.param({**RSA_JWK, "alg": "RSA1_5"}, "RSA1_5 is disabled", id="rsa1_5-disabled"),
        pytest.param({**EC_JWK, "x": EC_JWK["x"] + "="}, "x: not base64url", id="x-padding"),
        pytest.param({**EC_JWK, "x": "+" + EC_JWK["x"][1:]}, "x: not base64url", id="x-std"),
        pytest.param({**EC_JWK, "y": EC_JWK["y"][:-1] + "B"}, "y: not canonical", id="y-bits"),
        pytest.param({**EC_JWK, "x": _int_b64(1, 31)}, "x has 31 bytes", id="x-short"),
        pytest.param({**EC_JWK, "y": _int_b64(y, 33)}, "y has 33 bytes", id="y-zero-padded"),
        pytest.param({**EC_JWK, "crv": "P-384"}, "P-384 needs 48", id="p256-point-as-p384"),
        pytest.param({**EC_JWK, "y": _int_b64(y ^ 1, 32)}, "not on P-256", id="off-curve"),
        pytest.param({**EC_JWK, "x": _int_b64(p256, 32)}, "not on P-256", id="x-is-p"),
        pytest.param({**EC_JWK, "x": _int_b64(0, 32)}, "not on P-256", id="x-zero"),
        pytest.param({**RSA_JWK, "n": _int_b64(small)}, "1024 bits", id="rsa-1024"),
        pytest.param({**RSA_JWK, "n": _int_b64((1 << 16400) | 1)}, "16401 bits", id="rsa-huge"),
        pytest.param({**RSA_JWK, "n": "AA" + RSA_JWK["n"]}, "leading zero", id="n-leading-zero"),
        pytest.param({**RSA_JWK, "e": "AAEAAQ"}, "leading zero", id="e-leading-zero"),
        pytest.param({**RSA_JWK, "e": ""}, "empty", id="e-empty"),
        pytest.param({**RSA_JWK, "e": _int_b64(65536)}, "must be odd", id="e-even"),
        pytest.param({**RSA_JWK, "e": _int_b64(1)}, "3 to 2\\^64", id="e-one"),
        pytest.param({**RSA_JWK, "e": _int_b64(N + 2)}, "below n", id="e-above-n"),
        pytest.param({**RSA_JWK, "e": _int_b64((1 << 64) + 1)}, "3 to 2\\^64", id="e-65-bits"),
        pytest.param({**RSA_JWK, "n": _int_b64(N + 1)}, "modulus is even", id="n-even"),
    ]


@pytest.mark.parametrize(("jwk", "message"), _bad_jwks())
def test_malformed_tee_jwk_is_refused(jwk: object, message: str) -> None:
    with pytest.raises(JoseError, match=message):
        parse_tee_jwk(jwk)


@pytest.mark.parametrize("crv", sorted(CURVES))
def test_tee_jwk_ec_round_trip(crv: str) -> None:
    public = ec.generate_private_key(CURVES[crv]).public_key()
    jwk = tee_jwk(public)
    assert set(jwk) == {"kty", "crv", "alg", "x", "y"}
    assert jwk["crv"] == crv
    assert len(b64url_decode(jwk["x"])) == SIZES[crv]
    parsed = parse_tee_jwk(jwk)
    assert parsed.alg == "ECDH-ES+A256KW"
    assert parsed.key == public
    assert ec_public_key_from_jwk(ec_public_jwk(public)) == public


@pytest.mark.parametrize("alg", ["RSA-OAEP-256", "RSA1_5"])
def test_tee_jwk_rsa_round_trip(alg: str) -> None:
    jwk = tee_jwk(RSA_KEY, alg)
    assert jwk == {**RSA_JWK, "alg": alg}
    assert jwk["e"] == "AQAB"
    parsed = parse_tee_jwk(jwk, allow_rsa1_5=True)
    assert parsed.alg == alg
    assert parsed.key == RSA_KEY


def test_parse_tee_jwk_keeps_the_members_as_received() -> None:
    jwk = {**EC_JWK, "kid": "tee-1", "use": "enc"}
    parsed = parse_tee_jwk(jwk)
    assert parsed.jwk == jwk
    assert parsed.jwk is not jwk  # a copy: later changes to the request do not leak in


@pytest.mark.parametrize(
    ("make", "alg"),
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), "RSA-OAEP-256", id="ec-rsa"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), "ECDH-ES+A256KW", id="rsa-ec"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), "RSA-OAEP", id="rsa-oaep"),
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), None, id="rsa-1024"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), None, id="secp256k1"),
    ],
)
def test_tee_jwk_refuses_what_the_kbs_would_refuse(
    make: Callable[[], PrivateKey], alg: str | None
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        tee_jwk(make().public_key(), alg)


def test_ec_public_key_from_jwk_refuses_rsa() -> None:
    with pytest.raises(JoseError, match="kty 'RSA' is not EC"):
        ec_public_key_from_jwk(RSA_JWK)


# ---------------------------------------------------------------- thumbprints

RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY3"
    "68QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4"
    "lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def test_thumbprint_rfc7638_example() -> None:
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_ec_by_hand_ignores_order_and_extras() -> None:
    text = '{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'.format(**EC_JWK)
    expected = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
    shuffled = dict(reversed(list({**EC_JWK, "kid": "ignored"}.items())))
    assert jwk_thumbprint(shuffled) == expected.decode()
    assert jwk_thumbprint(EC_JWK) == expected.decode()


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param({"kty": "oct", "k": "AAAA"}, id="oct"),
        pytest.param({"crv": "P-256", "x": "AA", "y": "AA"}, id="no-kty"),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "AA"}, id="no-y"),
        pytest.param({"kty": "RSA", "n": "AA", "e": 3}, id="e-int"),
    ],
)
def test_thumbprint_refuses_incomplete_jwks(jwk: dict[str, str]) -> None:
    with pytest.raises(JoseError, match="JWK thumbprint"):
        jwk_thumbprint(jwk)


# ---------------------------------------------------------------- JWS

SIGNER = ec.generate_private_key(ec.SECP256R1())


def _b64json(value: object) -> str:
    return b64url_encode(json.dumps(value).encode())


def test_jws_round_trip_with_kid_and_headers() -> None:
    claims = {"iat": int(NOW), "exp": int(NOW) + 300, "sub": "volume", "nested": {"a": [1]}}
    token = sign_jws(claims, SIGNER, headers={"typ": "EAR"})
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["typ"] == "EAR"
    assert header["kid"] == jwk_thumbprint(ec_public_jwk(SIGNER.public_key()))
    assert verify_jws(token, SIGNER.public_key(), now=NOW) == claims


def test_jws_tampered_payload_fails() -> None:
    head, _, sig = sign_jws({"iat": NOW, "role": "guest"}, SIGNER).split(".")
    forged = ".".join([head, _b64json({"iat": NOW, "role": "admin"}), sig])
    with pytest.raises(JoseError, match="signature does not verify"):
        verify_jws(forged, SIGNER.public_key(), now=NOW)


def test_jws_tampered_signature_fails() -> None:
    head, body, sig = sign_jws({"iat": NOW}, SIGNER).split(".")
    with pytest.raises(JoseError, match="signature does not verify"):
        verify_jws(f"{head}.{body}.{flip_last_byte(sig)}", SIGNER.public_key(), now=NOW)
    short = b64url_encode(b64url_decode(sig)[:-1])
    with pytest.raises(JoseError, match="signature does not verify"):
        verify_jws(f"{head}.{body}.{short}", SIGNER.public_key(), now=NOW)


def test_jws_wrong_key_fails() -> None:
    token = sign_jws({"iat": NOW}, SIGNER)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(JoseError, match="signature does not verify"):
        verify_jws(token, other, now=NOW)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        pytest.param({"iat": NOW - 600, "exp": NOW - 31}, "expired", id="expired"),
        pytest.param({"iat": NOW - 600, "exp": NOW - 30}, "expired", id="expired-at-leeway"),
        pytest.param({"iat": NOW + 31}, "issued in the future", id="future-iat"),
        pytest.param({"iat": NOW, "nbf": NOW + 31}, "not valid yet", id="future-nbf"),
        pytest.param({"iat": "now"}, "'iat' claim is not a number", id="iat-string"),
        pytest.param({"iat": True}, "'iat' claim is not a number", id="iat-bool"),
        pytest.param({"iat": NOW, "exp": None}, "'exp' claim is not a number", id="exp-null"),
        pytest.param({"sub": "x"}, "'iat' claim is missing", id="missing-iat"),
    ],
)
def test_jws_bad_claims_fail(claims: dict[str, object], message: str) -> None:
    with pytest.raises(JoseError, match=message):
        verify_jws(sign_jws(claims, SIGNER), SIGNER.public_key(), now=NOW)


def test_jws_time_claims_inside_leeway_pass() -> None:
    claims = {"iat": NOW + 30, "nbf": NOW + 30, "exp": NOW - 29}
    assert verify_jws(sign_jws(claims, SIGNER), SIGNER.public_key(), now=NOW) == claims
    strict = sign_jws({"iat": NOW + 1}, SIGNER)
    with pytest.raises(JoseError, match="future"):
        verify_jws(strict, SIGNER.public_key(), now=NOW, leeway=0)


def test_jws_require_is_configurable() -> None:
    token = sign_jws({"sub": "x"}, SIGNER)
    assert verify_jws(token, SIGNER.public_key(), require=(), now=NOW) == {"sub": "x"}
    with pytest.raises(JoseError, match="'exp' claim is missing"):
        verify_jws(sign_jws({"iat": NOW}, SIGNER), SIGNER.public_key(), require=["exp"], now=NOW)


def test_jws_alg_none_is_refused() -> None:
    token = f"{_b64json({'alg': 'none', 'typ': 'JWT'})}.{_b64json({'iat': NOW})}."
    with pytest.raises(JoseError, match="alg 'none' is not allowed"):
        verify_jws(token, SIGNER.public_key(), now=NOW)


def test_jws_hs256_with_the_public_key_as_secret_is_refused() -> None:
    """The classic confusion: an HMAC keyed with the verifier's public key bytes."""
    secret = SIGNER.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64json({'alg': 'HS256'})}.{_b64json({'iat': NOW})}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(JoseError, match="alg 'HS256' is not allowed"):
        verify_jws(f"{signing_input}.{b64url_encode(mac)}", SIGNER.public_key(), now=NOW)


def test_jws_other_alg_header_is_refused_before_verifying() -> None:
    _, body, sig = sign_jws({"iat": NOW}, SIGNER).split(".")
    token = f"{_b64json({'alg': 'ES384'})}.{body}.{sig}"
    with pytest.raises(JoseError, match="alg 'ES384' is not allowed"):
        verify_jws(token, SIGNER.public_key(), now=NOW)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        pytest.param(b"a.b.c", "expected a compact string", id="bytes"),
        pytest.param("not a token", "malformed", id="garbage"),
        pytest.param("a.b", "malformed", id="two-parts"),
        pytest.param(f"{_b64json([1])}.{_b64json({})}.", "malformed", id="header-array"),
    ],
)
def test_jws_malformed_is_refused(token: object, message: str) -> None:
    with pytest.raises(JoseError, match=message):
        verify_jws(token, SIGNER.public_key(), now=NOW)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param({"crit": ["exp"]}, "Unsupported critical extension", id="crit-unknown"),
        pytest.param({"crit": ["b64"], "b64": True}, "critical header", id="crit-b64"),
        pytest.param({"b64": True}, "critical header", id="b64"),
    ],
)
def test_jws_critical_extensions_are_refused(headers: dict[str, object], message: str) -> None:
    _, body, sig = sign_jws({"iat": NOW}, SIGNER).split(".")
    token = f"{_b64json({'alg': 'ES256', **headers})}.{body}.{sig}"
    with pytest.raises(JoseError, match=message):
        verify_jws(token, SIGNER.public_key(), now=NOW)


def test_jws_claims_must_be_an_object() -> None:
    token = jwt.PyJWS().encode(b"[1, 2]", SIGNER, algorithm="ES256")
    with pytest.raises(JoseError, match="not a JSON object"):
        verify_jws(token, SIGNER.public_key(), now=NOW)
    duplicate = jwt.PyJWS().encode(b'{"iat": 1, "iat": 2}', SIGNER, algorithm="ES256")
    with pytest.raises(JoseError, match="appears twice"):
        verify_jws(duplicate, SIGNER.public_key(), now=NOW)


def test_jws_needs_a_p256_key() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        sign_jws({"iat": NOW}, p384)
    with pytest.raises(ValueError, match="P-256"):
        verify_jws(sign_jws({"iat": NOW}, SIGNER), p384.public_key(), now=NOW)
    with pytest.raises(ValueError, match="ES256 only"):
        sign_jws({"iat": NOW}, SIGNER, headers={"alg": "HS256"})
