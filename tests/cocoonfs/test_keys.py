"""TCG KDFa and the CocoonFs key schedule."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from cvmstore.cocoonfs.keys import KeyPurpose, derive_root_key, derive_subkey, kdfa
from cvmstore.cocoonfs.layout import CipherAlg, HashAlg, ImageLayout

LAYOUT = ImageLayout(
    0, 2, 1, 2, 2, 0, 0,
    HashAlg.SHA256, HashAlg.SHA256, HashAlg.SHA256, HashAlg.SHA256, HashAlg.SHA256,
    CipherAlg.AES, 128,
)  # fmt: skip


@pytest.mark.parametrize(
    ("alg", "hash_cls"),
    [
        (HashAlg.SHA256, hashes.SHA256),
        (HashAlg.SHA512, hashes.SHA512),
        (HashAlg.SM3_256, hashes.SM3),
    ],
)
@pytest.mark.parametrize("bits", [128, 256, 512, 1024 + 64])
def test_kdfa_is_sp800_108_counter_mode(alg: HashAlg, hash_cls: type, bits: int) -> None:
    """KDFa equals SP 800-108 counter mode with a 32-bit counter before label || 0 || context
    || L32, here computed by `cryptography`'s own KBKDF as an independent implementation."""
    key, label, context = b"k" * 40, b"\x05", b"context bytes"
    reference = KBKDFHMAC(
        algorithm=hash_cls(),
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    ).derive(key)
    assert kdfa(alg, key, label, context, bits) == reference


def test_kdfa_rejects_partial_bytes() -> None:
    with pytest.raises(ValueError, match="whole number"):
        kdfa(HashAlg.SHA256, b"k", b"\x01", b"", 12)


def test_root_key_binds_every_algorithm_and_the_salt() -> None:
    base = derive_root_key(b"secret", LAYOUT, b"salt")
    assert len(base) == 32  # as long as a kdf_hash_alg digest
    variants = [
        dataclasses.replace(LAYOUT, auth_tree_node_hash_alg=HashAlg.SHA384),
        dataclasses.replace(LAYOUT, auth_tree_data_hmac_hash_alg=HashAlg.SHA384),
        dataclasses.replace(LAYOUT, auth_tree_root_hmac_hash_alg=HashAlg.SHA384),
        dataclasses.replace(LAYOUT, preauth_cca_protection_hmac_hash_alg=HashAlg.SHA384),
        dataclasses.replace(LAYOUT, block_cipher_alg=CipherAlg.CAMELLIA),
        dataclasses.replace(LAYOUT, block_cipher_key_bits=256),
    ]
    derived = {derive_root_key(b"secret", v, b"salt") for v in variants}
    derived.add(derive_root_key(b"secret", LAYOUT, b"salu"))
    derived.add(derive_root_key(b"secres", LAYOUT, b"salt"))
    assert base not in derived
    assert len(derived) == len(variants) + 2
    sha512 = dataclasses.replace(LAYOUT, kdf_hash_alg=HashAlg.SHA512)
    assert len(derive_root_key(b"secret", sha512, b"salt")) == 64


def test_subkeys_are_separated_and_sized() -> None:
    root = derive_root_key(b"secret", LAYOUT, b"salt")
    keys = {
        derive_subkey(root, LAYOUT, purpose, domain, sub)
        for purpose in KeyPurpose
        for domain in (1, 2, 3, 16)
        for sub in (0, 1, 2)
    }
    assert len(keys) == len(KeyPurpose) * 4 * 3
    assert len(derive_subkey(root, LAYOUT, KeyPurpose.ENCRYPTION, 16, 2)) == 16
    assert len(derive_subkey(root, LAYOUT, KeyPurpose.AUTH_ROOT, 1, 0)) == 32
