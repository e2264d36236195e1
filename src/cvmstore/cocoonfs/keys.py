"""CocoonFs format v1 key derivation: TCG TPM2 `KDFa` and the root key / subkey scheme.

Low-level: the reader in `cvmstore.cocoonfs.image` is the user of this module.

Spec: `cocoonfs-format.md`, section "Key derivation" with "Root key derivation" and "Subkey
derivation"; `KDFa` is TPM 2.0 Library Part 1, section 11.4.10.2 (SP 800-108 counter mode
with HMAC). Each output block i (from 1) is

    HMAC(key, BE32(i) || label || 0x00 || context || BE32(bits))

and the result is cut to `bits` (always a whole number of bytes here). CocoonFs labels are a
single purpose byte, so the terminating zero the TPM appends is always added.

Root key = KDFa(SHA-512, external key material, label 1 (derivation), context = `COCOONFS`
|| version byte || BE16 KDF, root HMAC, node, data HMAC, pre-auth HMAC hash ids || BE16
cipher mode id (TPM_ALG_CBC, 0x0042) || BE16 cipher id || BE16 key bits || salt length byte
|| salt, bits = digest size of the *KDF hash* of the layout). Binding every algorithm id
means a header rewritten to weaker algorithms yields another root key.

The specification followed is the one shipped in the crate cocoon-tpm-storage 0.1.5 (the
storage code of cocoonfs-cli 0.1.3). The copy at cocoon-tpm git 1064bc3 is older and differs
here: it has no cipher mode id in the context, a 512-bit root key, and the two inode key
subdomains swapped. The 0.1.5 text matches the tool's images.

Subkey(purpose, domain, subdomain) = KDFa(kdf_hash, root key, purpose byte, LE64 domain ||
LE32 subdomain, bits sized for the purpose). The domain is normally an inode number.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from cryptography.hazmat.decrepit.ciphers.algorithms import Camellia
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, algorithms

from cvmstore.cocoonfs.layout import FORMAT_VERSION, MAGIC, CipherAlg, HashAlg, ImageLayout

__all__ = [
    "InodeKeySubdomain",
    "KeyPurpose",
    "cipher_algorithm",
    "derive_root_key",
    "derive_subkey",
    "hash_algorithm",
    "hmac_digest",
    "kdfa",
]


#: TCG id of the CBC mode, the only cipher mode of format v1 (bound into the root key).
TPM_ALG_CBC = 0x0042


class KeyPurpose(IntEnum):
    """KDFa labels (section "Key derivation")."""

    DERIVATION = 1
    AUTH_ROOT = 2
    AUTH_DATA = 3
    PREAUTH_CCA_PROTECTION_AUTH = 4
    ENCRYPTION = 5


class InodeKeySubdomain(IntEnum):
    """Subdomains of inode keys (section "Subkey derivation"); the auth tree keys use 0."""

    AUTH_TREE = 0
    EXTENTS_LIST = 1
    DATA = 2


_HASHES: dict[HashAlg, type[hashes.HashAlgorithm]] = {
    HashAlg.SHA1: hashes.SHA1,
    HashAlg.SHA256: hashes.SHA256,
    HashAlg.SHA384: hashes.SHA384,
    HashAlg.SHA512: hashes.SHA512,
    HashAlg.SM3_256: hashes.SM3,
    HashAlg.SHA3_256: hashes.SHA3_256,
    HashAlg.SHA3_384: hashes.SHA3_384,
    HashAlg.SHA3_512: hashes.SHA3_512,
}


def cipher_algorithm(alg: CipherAlg, key: bytes) -> BlockCipherAlgorithm:
    """The `cryptography` block cipher for a TCG cipher id (Camellia from `decrepit`)."""
    if alg is CipherAlg.AES:
        return algorithms.AES(key)
    if alg is CipherAlg.SM4:
        return algorithms.SM4(key)
    return Camellia(key)


def hash_algorithm(alg: HashAlg) -> hashes.HashAlgorithm:
    """The `cryptography` hash for a TCG hash id."""
    return _HASHES[alg]()


def hmac_digest(alg: HashAlg, key: bytes, *parts: bytes) -> bytes:
    """HMAC over the concatenation of `parts`."""
    mac = hmac.HMAC(key, hash_algorithm(alg))
    for part in parts:
        mac.update(part)
    return mac.finalize()


def kdfa(alg: HashAlg, key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    """TCG TPM2 `KDFa` for a whole number of output bytes.

    Args:
        alg: the HMAC hash.
        key: the input key.
        label: the label, without its terminating zero byte (appended here).
        context: the context.
        bits: output length in bits; a positive multiple of 8.
    """
    if bits <= 0 or bits % 8:
        raise ValueError("KDFa output must be a positive whole number of bytes")
    out = bytearray()
    counter = 1
    suffix = label + b"\x00" + context + bits.to_bytes(4, "big")
    while len(out) * 8 < bits:
        out += hmac_digest(alg, key, counter.to_bytes(4, "big"), suffix)
        counter += 1
    return bytes(out[: bits // 8])


def derive_root_key(key_material: bytes, layout: ImageLayout, salt: bytes) -> bytes:
    """The root key from the external key material (section "Root key derivation")."""
    if len(salt) > 255:
        raise ValueError("salt longer than 255 bytes")
    context = (
        MAGIC
        + bytes([FORMAT_VERSION])
        + struct.pack(
            ">5H3H",
            layout.kdf_hash_alg,
            layout.auth_tree_root_hmac_hash_alg,
            layout.auth_tree_node_hash_alg,
            layout.auth_tree_data_hmac_hash_alg,
            layout.preauth_cca_protection_hmac_hash_alg,
            TPM_ALG_CBC,
            layout.block_cipher_alg,
            layout.block_cipher_key_bits,
        )
        + bytes([len(salt)])
        + salt
    )
    bits = layout.kdf_hash_alg.digest_len * 8
    return kdfa(HashAlg.SHA512, key_material, bytes([KeyPurpose.DERIVATION]), context, bits)


def _purpose_bits(purpose: KeyPurpose, layout: ImageLayout) -> int:
    alg = {
        KeyPurpose.DERIVATION: layout.kdf_hash_alg,
        KeyPurpose.AUTH_ROOT: layout.auth_tree_root_hmac_hash_alg,
        KeyPurpose.AUTH_DATA: layout.auth_tree_data_hmac_hash_alg,
        KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH: layout.preauth_cca_protection_hmac_hash_alg,
    }.get(purpose)
    return layout.block_cipher_key_bits if alg is None else alg.digest_len * 8


def derive_subkey(
    root_key: bytes, layout: ImageLayout, purpose: KeyPurpose, domain: int, subdomain: int
) -> bytes:
    """A subkey for (purpose, domain, subdomain) (section "Subkey derivation")."""
    context = struct.pack("<QI", domain, subdomain)
    bits = _purpose_bits(purpose, layout)
    return kdfa(layout.kdf_hash_alg, root_key, bytes([purpose]), context, bits)
