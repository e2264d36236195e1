"""Cross-check `cvmstore.kbs.jose` with jwcrypto, an independent JOSE implementation.

Both directions: jwcrypto opens our Trustee-shaped flattened JWEs, and we open jwcrypto's.
jwcrypto writes `epk` into the unprotected per-recipient `header` when it serialises flattened
JSON, which Trustee's clients (and `jwe_decrypt`) do not read; its compact form puts `epk` in
the protected header, so that form, split into the five members, is what we decrypt. A test
pins the refusal of jwcrypto's own flattened form so the difference stays visible.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwe, jwk, jws  # type: ignore[import-untyped]  # test-only, no stubs

from cvmstore.kbs.jose import (
    JoseError,
    ec_public_jwk,
    jwe_decrypt,
    jwe_encrypt,
    jwk_thumbprint,
    parse_tee_jwk,
    sign_jws,
    tee_jwk,
    verify_jws,
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
NOW = 1_800_000_000
#: jwcrypto leaves RSA1_5 out of its defaults; every case names what it uses.
ALLOWED = ["ECDH-ES+A256KW", "RSA-OAEP-256", "RSA1_5", "A256GCM"]
CASES: dict[str, tuple[Callable[[], PrivateKey], str]] = {
    "P-256": (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDH-ES+A256KW"),
    "P-384": (lambda: ec.generate_private_key(ec.SECP384R1()), "ECDH-ES+A256KW"),
    "P-521": (lambda: ec.generate_private_key(ec.SECP521R1()), "ECDH-ES+A256KW"),
    "RSA-OAEP-256": (lambda: rsa.generate_private_key(65537, 2048), "RSA-OAEP-256"),
    "RSA1_5": (lambda: rsa.generate_private_key(65537, 2048), "RSA1_5"),
}
PLAINTEXT = b"volume root secret \x00\x01\xfe\xff"


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {name: make() for name, (make, _) in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_jwcrypto_decrypts_our_jwe(keys: dict[str, PrivateKey], case: str) -> None:
    private = keys[case]
    key = parse_tee_jwk(tee_jwk(private.public_key(), CASES[case][1]), allow_rsa1_5=True)
    ours = jwe_encrypt(key, PLAINTEXT)
    token = jwe.JWE()
    token.allowed_algs = ALLOWED
    token.deserialize(json.dumps(ours), key=jwk.JWK.from_pyca(private))
    assert token.payload == PLAINTEXT
    assert token.jose_header["alg"] == CASES[case][1]


def _jwcrypto_compact(private: PrivateKey, alg: str) -> str:
    token = jwe.JWE(PLAINTEXT, protected=json.dumps({"alg": alg, "enc": "A256GCM"}))
    token.allowed_algs = ALLOWED
    token.add_recipient(jwk.JWK.from_pyca(private.public_key()))
    compact: str = token.serialize(compact=True)
    return compact


@pytest.mark.parametrize("case", sorted(CASES))
def test_we_decrypt_jwcrypto_jwe(keys: dict[str, PrivateKey], case: str) -> None:
    private = keys[case]
    parts = _jwcrypto_compact(private, CASES[case][1]).split(".")
    flattened = dict(
        zip(("protected", "encrypted_key", "iv", "ciphertext", "tag"), parts, strict=True)
    )
    assert jwe_decrypt(flattened, private, allow_rsa1_5=True) == PLAINTEXT


def test_jwcrypto_flattened_json_puts_epk_where_trustee_clients_do_not_look(
    keys: dict[str, PrivateKey],
) -> None:
    private = keys["P-256"]
    token = jwe.JWE(PLAINTEXT, protected=json.dumps({"alg": "ECDH-ES+A256KW", "enc": "A256GCM"}))
    token.add_recipient(jwk.JWK.from_pyca(private.public_key()))
    flattened = json.loads(token.serialize())
    assert "epk" in flattened["header"]
    with pytest.raises(JoseError, match="'header' member is not supported"):
        jwe_decrypt(flattened, private)


def test_jwcrypto_jws_verifies_with_us() -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    claims = {"iat": NOW, "exp": NOW + 300, "eat_profile": "tag:example,2026:test"}
    token = jws.JWS(json.dumps(claims))
    token.add_signature(jwk.JWK.from_pyca(signer), alg="ES256", protected={"alg": "ES256"})
    compact = token.serialize(compact=True)
    assert verify_jws(compact, signer.public_key(), now=NOW) == claims
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(JoseError, match="signature does not verify"):
        verify_jws(compact, other, now=NOW)


def test_our_jws_verifies_with_jwcrypto() -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    claims = {"iat": NOW, "sub": "volume"}
    compact = sign_jws(claims, signer)
    public = jwk.JWK.from_pyca(signer.public_key())
    token = jws.JWS()
    token.deserialize(compact)
    token.verify(public, alg="ES256")
    assert json.loads(token.payload) == claims
    assert token.jose_header["kid"] == public.thumbprint()


@pytest.mark.parametrize("case", sorted(CASES))
def test_thumbprints_agree_with_jwcrypto(keys: dict[str, PrivateKey], case: str) -> None:
    public = keys[case].public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        members = ec_public_jwk(public)
    else:
        members = tee_jwk(public)
    assert jwk_thumbprint(members) == jwk.JWK.from_pyca(public).thumbprint()
