"""AMD's certificates: loading them, reading a VEK's extensions, and checking each link.

The chain is ARK (self-signed root, RSA-4096) -> ASK (or ASVK for VLEKs) -> VCEK (or VLEK,
an ECDSA P-384 key that signs reports). Every link is RSASSA-PSS with SHA-384, MGF1-SHA-384
and a 48-byte salt. Roots are trusted by the SHA-256 of their SubjectPublicKeyInfo, so the
product ships facts (`AMD_ARK_PINS`), not files.

Two oddities of real AMD certificates are handled here, in one place: VCEK and VLEK serial
numbers are 0 (which `cryptography` loads with a deprecation warning, silenced here), and
VCEKs carry no authority or subject key identifiers, so each link is verified by its
signature rather than by an RFC 5280 path builder.
"""

from __future__ import annotations

import enum
import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from cvmstore.attest.tcb import Product
from cvmstore.errors import CertificateChainError, FormatError

__all__ = [
    "AMD_ARK_PINS",
    "CertRole",
    "VekInfo",
    "check_signed_by",
    "check_validity",
    "common_name",
    "load_certificates",
    "role_of",
    "spki_sha256",
    "vek_info",
]

#: SHA-256 of each AMD root's DER SubjectPublicKeyInfo (the same roots trustee, virtee and
#: go-sev-guest pin).
AMD_ARK_PINS: dict[Product, str] = {
    Product.MILAN: "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    Product.GENOA: "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    Product.TURIN: "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
}

_ARC = "1.3.6.1.4.1.3704.1"
_OID_PRODUCT = x509.ObjectIdentifier(f"{_ARC}.2")
_OID_SPL = {
    "bootloader": x509.ObjectIdentifier(f"{_ARC}.3.1"),
    "tee": x509.ObjectIdentifier(f"{_ARC}.3.2"),
    "snp": x509.ObjectIdentifier(f"{_ARC}.3.3"),
    "microcode": x509.ObjectIdentifier(f"{_ARC}.3.8"),
    "fmc": x509.ObjectIdentifier(f"{_ARC}.3.9"),
}
_OID_HWID = x509.ObjectIdentifier(f"{_ARC}.4")
_OID_CSP = x509.ObjectIdentifier(f"{_ARC}.5")
_T = TypeVar("_T")
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


class CertRole(enum.Enum):
    """The place of a certificate in an AMD chain, from its subject common name."""

    ARK = "ARK"
    ASK = "ASK"
    ASVK = "ASVK"
    VCEK = "VCEK"
    VLEK = "VLEK"


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in `data`: one DER certificate, or any number of PEM blocks.

    Raises:
        FormatError: the bytes hold no certificate.
    """
    with warnings.catch_warnings():
        # AMD's VCEK and VLEK have serial number 0; cryptography warns but loads them.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
            # Parse the lazily parsed parts now, while the warning is silenced, so that a
            # malformed one is a FormatError here rather than a ValueError during verification.
            for cert in certs:
                _ = cert.serial_number, cert.extensions, cert.subject, cert.issuer
                cert.public_key()
        except (
            ValueError,
            TypeError,  # a malformed TLSFeature extension
            KeyError,  # an unknown TLSFeature value
            x509.InvalidVersion,
            x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType,
            UnsupportedAlgorithm,
        ) as exc:
            raise FormatError(f"not a certificate (DER or PEM): {exc}") from None
    return certs


def common_name(cert: x509.Certificate) -> str:
    """The subject's common name ('' when there is none)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


Role = tuple[CertRole, Product | None]
_ROLES: dict[int, tuple[x509.Certificate, Role | None]] = {}
_SPKIS: dict[int, tuple[x509.Certificate, str]] = {}
_MEMO_SIZE = 256


def _memo(
    table: Mapping[int, tuple[x509.Certificate, _T]], cert: x509.Certificate
) -> tuple[bool, _T | None]:
    """(found, value) for `cert` in an identity memo.

    Each entry holds the certificate itself, so its id cannot be reused by another object
    while the entry exists.
    """
    entry = table.get(id(cert))
    if entry is not None and entry[0] is cert:
        return True, entry[1]
    return False, None


def _remember(
    table: dict[int, tuple[x509.Certificate, _T]], cert: x509.Certificate, value: _T
) -> None:
    if len(table) >= _MEMO_SIZE:
        table.clear()
    table[id(cert)] = (cert, value)


def role_of(cert: x509.Certificate) -> Role | None:
    """(role, product) from the subject CN: ARK-Milan, SEV-Milan, SEV-VLEK-Genoa, SEV-VCEK..."""
    found, role = _memo(_ROLES, cert)
    if found:
        return role
    role = _role_from_name(common_name(cert))
    _remember(_ROLES, cert, role)
    return role


def _role_from_name(name: str) -> Role | None:
    if name == "SEV-VCEK":
        return CertRole.VCEK, None
    if name == "SEV-VLEK":
        return CertRole.VLEK, None
    for product in Product:
        if name == f"ARK-{product.value}":
            return CertRole.ARK, product
        if name == f"SEV-VLEK-{product.value}":
            return CertRole.ASVK, product
        if name == f"SEV-{product.value}":
            return CertRole.ASK, product
    return None


def spki_sha256(cert: x509.Certificate) -> str:
    """SHA-256 (hex) of the certificate's DER SubjectPublicKeyInfo: what roots are pinned by."""
    found, digest = _memo(_SPKIS, cert)
    if found and digest is not None:
        return digest
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(spki).hexdigest()
    _remember(_SPKIS, cert, digest)
    return digest


def check_signed_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """Verify that `issuer` signed `cert` with RSASSA-PSS/SHA-384/salt 48.

    Raises:
        CertificateChainError: another algorithm, or a signature that does not verify.
    """
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CertificateChainError(f"{what}: the issuer's key is not RSA", check="chain")
    if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        raise CertificateChainError(f"{what}: not signed with RSASSA-PSS", check="chain")
    outer, inner = _signature_algorithms(cert)
    if outer != inner:
        # RFC 5280 4.1.1.2: the unsigned signatureAlgorithm must equal the signed one.
        raise CertificateChainError(
            f"{what}: the signature algorithm differs from the signed one", check="chain"
        )
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, _PSS, hashes.SHA384())
    except InvalidSignature:
        raise CertificateChainError(
            f"{what}: the signature does not verify under {common_name(issuer)}", check="chain"
        ) from None


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    """Raise `CertificateChainError` unless `now` lies within the certificate's validity."""
    if now < cert.not_valid_before_utc:
        raise CertificateChainError(
            f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            check="validity",
        )
    if now > cert.not_valid_after_utc:
        raise CertificateChainError(
            f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", check="validity"
        )


def _der_element(data: bytes, at: int) -> tuple[int, int]:
    """(start of the contents, end) of the DER element at `at` (the DER is known to parse)."""
    length = data[at + 1]
    start = at + 2
    if length & 0x80:
        start += length & 0x7F
        length = int.from_bytes(data[at + 2 : start], "big")
    return start, start + length


def _signature_algorithms(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """(signatureAlgorithm outside the signed part, signature inside it), as DER."""
    der = cert.public_bytes(serialization.Encoding.DER)
    tbs = cert.tbs_certificate_bytes
    outer_at = _der_element(der, 0)[0] + len(tbs)
    outer = der[outer_at : _der_element(der, outer_at)[1]]
    at = _der_element(tbs, 0)[0]
    if tbs[at] == 0xA0:  # [0] EXPLICIT version
        at = _der_element(tbs, at)[1]
    at = _der_element(tbs, at)[1]  # serialNumber
    inner = tbs[at : _der_element(tbs, at)[1]]
    return outer, inner


@dataclass(frozen=True, slots=True)
class VekInfo:
    """What a VCEK or VLEK certifies: the TCB it was derived for, and for a VCEK the chip."""

    role: CertRole
    product_name: str | None
    spl: dict[str, int]  # component -> security patch level
    hw_id: bytes | None  # VCEK only: 64 bytes (8 on Turin)
    csp_id: str | None  # VLEK only: the cloud provider it was issued to

    @property
    def product(self) -> Product | None:
        """The product named by the certificate ("Milan-B0" -> Milan), if any."""
        if not self.product_name:
            return None
        base = self.product_name.split("-", 1)[0]
        return next((p for p in Product if p.value == base), None)


def vek_info(cert: x509.Certificate) -> VekInfo:
    """Read the AMD extensions of a VCEK or VLEK.

    Raises:
        CertificateChainError: the certificate is not a VEK, its key is not P-384, or an
            extension is malformed.
    """
    role = role_of(cert)
    if role is None or role[0] not in (CertRole.VCEK, CertRole.VLEK):
        raise CertificateChainError(f"{common_name(cert)!r} is not a VCEK or VLEK", check="chain")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise CertificateChainError("the VEK's key is not ECDSA P-384", check="chain")
    values = {ext.oid: ext.value for ext in cert.extensions}

    def raw(oid: x509.ObjectIdentifier) -> bytes | None:
        value = values.get(oid)
        return value.value if isinstance(value, x509.UnrecognizedExtension) else None

    spl: dict[str, int] = {}
    for name, oid in _OID_SPL.items():
        found = raw(oid)
        if found is not None:
            spl[name] = _der_integer(found, name)
    for name in ("bootloader", "tee", "snp", "microcode"):
        if name not in spl:
            raise CertificateChainError(f"the VEK has no {name} SPL extension", check="chain")
    product = raw(_OID_PRODUCT)
    hw_id = raw(_OID_HWID)
    csp = raw(_OID_CSP)
    return VekInfo(
        role=role[0],
        product_name=_der_string(product) if product is not None else None,
        spl=spl,
        hw_id=_octets(hw_id) if hw_id is not None else None,
        csp_id=_der_string(csp) if csp is not None else None,
    )


def _der_integer(data: bytes, name: str) -> int:
    if len(data) < 3 or data[0] != 0x02 or data[1] != len(data) - 2 or data[1] > 8:
        raise CertificateChainError(f"the {name} SPL extension is not a DER INTEGER", check="chain")
    return int.from_bytes(data[2:], "big", signed=True)


def _der_string(data: bytes) -> str:
    """An IA5String / UTF8String / PrintableString value, or the bytes as text."""
    if len(data) >= 2 and data[0] in (0x16, 0x0C, 0x13) and data[1] == len(data) - 2:
        return data[2:].decode("ascii", errors="replace")
    return data.decode("ascii", errors="replace")


def _octets(data: bytes) -> bytes:
    """hwID: 64 raw bytes in older VCEKs, a DER OCTET STRING of 64 (or 8, Turin) in newer."""
    if len(data) in (66, 10) and data[0] == 0x04 and data[1] == len(data) - 2:
        return data[2:]
    return data
