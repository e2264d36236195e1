"""A software stand-in for the AMD secure processor: its own certificate chain, signed reports.

For tests and the demo only. A `Simulator` makes its own root (ARK, RSA-4096, self-signed), the
intermediate that certifies VCEKs (ASK) and, on request, the one that certifies VLEKs (ASVK),
then a VCEK (ECDSA P-384) for one chip at one TCB and optionally a VLEK. Certificates follow
the shape of AMD's (KDS specification 57230) closely enough that cvmstore's verifier and
go-sev-guest's accept them once told to trust the simulator's root (tests/interop checks
go-sev-guest; its v0.15.0 reads no Turin VEK, AMD's own included, as it refuses fmcSPL):

- subjects and issuers carry AMD's attributes (OU=Engineering, C=US, L=Santa Clara, ST=CA,
  O=Advanced Micro Devices) and AMD's common names (ARK-Milan, SEV-Milan, SEV-VLEK-Milan,
  SEV-VCEK, SEV-VLEK), because go-sev-guest requires exactly those on a VEK's subject and
  issuer; what marks them as not AMD's is an extra `description` attribute
  ("cvmstore simulator (NOT AMD)"), CRL links under the reserved `.invalid` domain, and
  above all their keys: no default `Trust` pins the simulator's root.
- every link is RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48, like AMD's.
- a VEK carries only AMD's extensions (go-sev-guest refuses any other): structVersion,
  productName, the SPLs of the chosen TCB (and the reserved ones), hwID (the chip ID, 64
  bytes; 8 on Turin, which also has fmcSPL and no spl4, like AMD's Turin VCEKs), cspId for a
  VLEK.

Reports are built with `AttestationReport.encode` and signed like the hardware does: ECDSA
P-384 with SHA-384 over bytes 0x000-0x29F, R and S little-endian in 72-byte fields. Signing is
deterministic (RFC 6979), so a seeded simulator gives the same report bytes for the same
arguments.

RSA-4096 keys take about a second to make; tests should build one simulator per product and
share it (a module- or session-scoped fixture).
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict, Unpack

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cvmstore.attest.report import (
    SIGNED_SIZE,
    AttestationReport,
    GuestPolicy,
    KeyInfo,
    PlatformInfo,
    SigningKey,
)
from cvmstore.attest.tcb import Product, TcbVersion
from cvmstore.attest.verify import Trust
from cvmstore.errors import FormatError

__all__ = [
    "DEFAULT_MEASUREMENT",
    "DEFAULT_TCB",
    "NOT_AMD",
    "ReportFields",
    "Simulator",
    "SimulatorRoot",
]

#: The text of the extra subject attribute that marks every simulator certificate.
NOT_AMD = "cvmstore simulator (NOT AMD)"
#: The MEASUREMENT of reports unless another is given (SHA-384 of a fixed text).
DEFAULT_MEASUREMENT = hashlib.sha384(b"cvmstore simulator: launch measurement").digest()
#: A plausible TCB per product, used when none is given.
DEFAULT_TCB: dict[Product, TcbVersion] = {
    Product.MILAN: TcbVersion.make(bootloader=4, tee=0, snp=23, microcode=213),
    Product.GENOA: TcbVersion.make(bootloader=9, tee=0, snp=23, microcode=72),
    Product.TURIN: TcbVersion.make(bootloader=1, tee=1, snp=3, microcode=71, fmc=1),
}

# CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP of each product (what go-sev-guest maps back, too).
_CPUID = {
    Product.MILAN: (0x19, 0x01, 1),
    Product.GENOA: (0x19, 0x11, 1),
    Product.TURIN: (0x1A, 0x02, 0),
}
# The productName extension of a VCEK: "<line>-<stepping>" as AMD's KDS issues it for Milan
# and Genoa; AMD's Turin VCEKs say just "Turin". VLEKs carry the product line only.
_VCEK_PRODUCT_NAME = {Product.MILAN: "Milan-B1", Product.GENOA: "Genoa-B1", Product.TURIN: "Turin"}

_ARC = "1.3.6.1.4.1.3704.1"
_OID_DESCRIPTION = x509.ObjectIdentifier("2.5.4.13")
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)
_YEAR = timedelta(days=365)
# Validity as AMD issues them: roots and intermediates 25 years, VCEKs 7, VLEKs 1.
_LIFETIME = {"ARK": 25 * _YEAR, "ASK": 25 * _YEAR, "ASVK": 25 * _YEAR, "VCEK": 7 * _YEAR}
_VLEK_LIFETIME = _YEAR
_FIRMWARE = (1, 55, 21)  # API major, minor, build
_NO_MIGRATION_AGENT = b"\xff" * 32  # REPORT_ID_MA when no migration agent is bound


class ReportFields(TypedDict, total=False):
    """The keyword arguments of `Simulator.report` (for `report_bytes`)."""

    measurement: bytes
    policy: int
    vmpl: int
    guest_svn: int
    host_data: bytes
    family_id: bytes
    image_id: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes | None
    report_id_ma: bytes
    signing_key: SigningKey
    version: int
    platform_info: int
    mask_chip_id: bool
    chip_id: bytes | None
    reported_tcb: TcbVersion | None
    current_tcb: TcbVersion | None
    committed_tcb: TcbVersion | None
    launch_tcb: TcbVersion | None
    firmware: tuple[int, int, int]
    committed_firmware: tuple[int, int, int] | None
    launch_mit_vector: int
    current_mit_vector: int


@dataclass(frozen=True, slots=True)
class _RsaCa:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate


@dataclass(frozen=True, slots=True)
class SimulatorRoot:
    """A simulator's root (ARK): its private key and self-signed certificate.

    Saved once (`to_pem`) and given back to later simulators (`Simulator(root=...)`), it makes
    every process's reports chain to one root, which a KBS can be told to trust. The PEM text
    holds the private key: it is a test credential, never an AMD one, but keep it private.
    """

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    def to_pem(self) -> bytes:
        """The private key (PKCS#8) and the certificate, PEM."""
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key + self.certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def from_pem(cls, data: bytes) -> SimulatorRoot:
        """Read what `to_pem` wrote.

        Raises:
            FormatError: not an RSA private key with one ARK certificate of that key.
        """
        try:
            key = serialization.load_pem_private_key(data, None)
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise FormatError(f"not a simulator root (key and certificate, PEM): {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey) or len(certificates) != 1:
            raise FormatError("a simulator root is one RSA private key and one certificate")
        certificate = certificates[0]
        if certificate.public_key() != key.public_key():
            raise FormatError("the simulator root's certificate is not of its key")
        return cls(key, certificate)


@dataclass(frozen=True, slots=True)
class _Vek:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


class Simulator:
    """A simulated AMD secure processor: one chip, one TCB, its own ARK.

    Args:
        product: the CPU generation (decides names, CPUID, TCB layout and hwID size).
        chip_id: the chip's ID: 64 bytes, or on Turin 8 bytes (or 64 whose last 56 are zero).
            Default: derived from the seed.
        tcb: the TCB the VEKs are certified for and reports carry (Turin layout, with `fmc`,
            on Turin only). Default: `DEFAULT_TCB[product]`.
        seed: makes the chip ID, VEK keys, serial numbers, REPORT_ID and therefore every report
            byte reproducible. The RSA keys of the ARK, ASK and ASVK are always fresh (making
            RSA-4096 keys from a seed in Python would take seconds), so a seed does not fix
            the root. Default: random.
        key_size: RSA key size of the ARK, ASK and ASVK (AMD's are 4096 bits).
        vlek: also make an ASVK and a VLEK.
        csp_id: the cspId extension of the VLEK (the cloud provider it is issued to).
        not_before: start of every validity period (default: one day ago). AMD's lifetimes
            follow: 25 years for the ARK, ASK and ASVK, 7 for the VCEK, 1 for the VLEK.
        root: a root made earlier (`Simulator.root`, `SimulatorRoot.from_pem`) instead of a
            fresh one, so that reports from many processes chain to one trusted root. Its
            certificate must name this product (ARK-Milan, ...).

    Raises:
        ValueError: a chip ID or TCB that does not fit the product, an unsupported key size.
    """

    def __init__(
        self,
        product: Product = Product.MILAN,
        chip_id: bytes | None = None,
        tcb: TcbVersion | None = None,
        *,
        seed: bytes | str | int | None = None,
        key_size: int = 4096,
        vlek: bool = False,
        csp_id: str = "CN=cvmstore-simulator.invalid",
        not_before: datetime | None = None,
        root: SimulatorRoot | None = None,
    ) -> None:
        if key_size not in (2048, 3072, 4096):
            raise ValueError(f"RSA key size {key_size} is not 2048, 3072 or 4096")
        self.product = product
        self._seed = product.value.encode() + b"/" + _seed_bytes(seed)
        self.tcb = _check_tcb(product, tcb or DEFAULT_TCB[product])
        self.chip_id = _check_chip_id(
            product, chip_id if chip_id is not None else self._default_chip_id()
        )
        self.csp_id = csp_id
        start = not_before or datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        self.not_before = start
        if root is not None:
            expected = self._name(f"ARK-{product.value}")
            if root.certificate.subject != expected:
                raise ValueError(
                    f"the root is {root.certificate.subject.rfc4514_string()}, not the"
                    f" {product.value} simulator's"
                )
            self._ark = _RsaCa(root.key, root.certificate)
        else:
            self._ark = self._make_ark(key_size)
        self._ask = self._make_intermediate("ASK", f"SEV-{product.value}", key_size)
        self._asvk = (
            self._make_intermediate("ASVK", f"SEV-VLEK-{product.value}", key_size) if vlek else None
        )
        self._vcek = self._make_vek(SigningKey.VCEK)
        self._vlek = self._make_vek(SigningKey.VLEK) if vlek else None

    # ------------------------------------------------------------------ certificates

    @property
    def root(self) -> SimulatorRoot:
        """This simulator's root, to save and hand to later simulators."""
        return SimulatorRoot(self._ark.key, self._ark.cert)

    @property
    def ark(self) -> x509.Certificate:
        """The simulator's root (CN=ARK-<product>), self-signed."""
        return self._ark.cert

    @property
    def ask(self) -> x509.Certificate:
        """The VCEK issuer (CN=SEV-<product>), signed by the ARK."""
        return self._ask.cert

    @property
    def vcek(self) -> x509.Certificate:
        """The chip's VCEK (CN=SEV-VCEK) for `tcb`, signed by the ASK."""
        return self._vcek.cert

    @property
    def asvk(self) -> x509.Certificate | None:
        """The VLEK issuer (CN=SEV-VLEK-<product>), when made with `vlek=True`."""
        return self._asvk.cert if self._asvk else None

    @property
    def vlek(self) -> x509.Certificate | None:
        """The VLEK (CN=SEV-VLEK) for `tcb`, signed by the ASVK, when made with `vlek=True`."""
        return self._vlek.cert if self._vlek else None

    @property
    def hw_id(self) -> bytes:
        """The VCEK's hwID: the chip ID, its first 8 bytes on Turin."""
        return self.chip_id[:8] if self.product is Product.TURIN else self.chip_id

    def chain(self) -> list[x509.Certificate]:
        """Every certificate: VCEK, ASK, then VLEK and ASVK if made, then the ARK."""
        certs = [self.vcek, self.ask]
        if self._vlek is not None and self._asvk is not None:
            certs += [self._vlek.cert, self._asvk.cert]
        return [*certs, self.ark]

    def trust(self) -> Trust:
        """AMD's roots plus this simulator's ARK for its product."""
        return Trust().with_root(self.ark, self.product)

    def with_tcb(self, tcb: TcbVersion) -> Simulator:
        """The same chip and chain after a firmware update: new VEKs certified for `tcb`.

        Like AMD's, the VEK keys depend on the TCB, so reports at the old and the new TCB are
        signed by different keys. Costs no RSA key generation.
        """
        other = object.__new__(Simulator)
        other.product = self.product
        other._seed = self._seed
        other.tcb = _check_tcb(self.product, tcb)
        other.chip_id = self.chip_id
        other.csp_id = self.csp_id
        other.not_before = self.not_before
        other._ark, other._ask, other._asvk = self._ark, self._ask, self._asvk
        other._vcek = other._make_vek(SigningKey.VCEK)
        other._vlek = other._make_vek(SigningKey.VLEK) if self._vlek is not None else None
        return other

    # ------------------------------------------------------------------ reports

    def report(
        self,
        report_data: bytes = b"",
        *,
        measurement: bytes = DEFAULT_MEASUREMENT,
        policy: int = 0x30000,
        vmpl: int = 0,
        guest_svn: int = 0,
        host_data: bytes = bytes(32),
        family_id: bytes = bytes(16),
        image_id: bytes = bytes(16),
        id_key_digest: bytes = bytes(48),
        author_key_digest: bytes = bytes(48),
        report_id: bytes | None = None,
        report_id_ma: bytes = _NO_MIGRATION_AGENT,
        signing_key: SigningKey = SigningKey.VCEK,
        version: int = 3,
        platform_info: int = 0x1,
        mask_chip_id: bool = False,
        chip_id: bytes | None = None,
        reported_tcb: TcbVersion | None = None,
        current_tcb: TcbVersion | None = None,
        committed_tcb: TcbVersion | None = None,
        launch_tcb: TcbVersion | None = None,
        firmware: tuple[int, int, int] = _FIRMWARE,
        committed_firmware: tuple[int, int, int] | None = None,
        launch_mit_vector: int = 0,
        current_mit_vector: int = 0,
    ) -> AttestationReport:
        """A signed attestation report, as the secure processor would return it.

        Args:
            report_data: the guest's 64 bytes (shorter input is padded with zeros).
            measurement: the launch digest (48 bytes).
            policy: the guest policy (bit 17 must be set).
            vmpl: the VMPL that asked for the report (0-3).
            guest_svn: the guest's security version number.
            host_data: HOST_DATA (32 bytes).
            family_id: FAMILY_ID from the ID block (16 bytes).
            image_id: IMAGE_ID from the ID block (16 bytes).
            id_key_digest: ID_KEY_DIGEST (48 bytes).
            author_key_digest: AUTHOR_KEY_DIGEST (48 bytes); non-zero sets AUTHOR_KEY_EN.
            report_id: REPORT_ID (32 bytes; default: fixed per simulator, like one guest's).
            report_id_ma: REPORT_ID_MA (32 bytes; default all 0xFF: no migration agent).
            signing_key: VCEK, VLEK (needs `vlek=True`) or NONE (an unsigned report).
            version: the report format, 2 to 5 (v2 has no CPUID bytes; v5 has the
                mitigation vectors).
            platform_info: PLATFORM_INFO (default: SMT enabled).
            mask_chip_id: set MASK_CHIP_KEY and report a zero CHIP_ID.
            chip_id: report another CHIP_ID than the simulator's (a lying host, for tests).
            reported_tcb: report another REPORTED_TCB than the VEK certifies (for tests).
            current_tcb: CURRENT_TCB (default: the simulator's TCB).
            committed_tcb: COMMITTED_TCB (default: the simulator's TCB).
            launch_tcb: LAUNCH_TCB (default: the simulator's TCB).
            firmware: the current firmware (major, minor, build).
            committed_firmware: the committed firmware (default: `firmware`).
            launch_mit_vector: LAUNCH_MIT_VECTOR (v5 only).
            current_mit_vector: CURRENT_MIT_VECTOR (v5 only).

        Raises:
            ValueError: a field of the wrong size or range, a VLEK report without a VLEK, a
                TCB in the other product's layout, or a report the format does not allow.
        """
        if len(report_data) > 64:
            raise ValueError(f"report_data is at most 64 bytes, not {len(report_data)}")
        if version not in range(2, 6):
            raise ValueError(f"report version {version} is not 2 to 5")
        if version < 5 and (launch_mit_vector or current_mit_vector):
            raise ValueError("mitigation vectors exist from report version 5 on")
        if not 0 <= vmpl <= 3:
            raise ValueError(f"VMPL {vmpl} is not 0 to 3")
        vek = self._signer(signing_key)
        reported = _check_tcb(self.product, reported_tcb or self.tcb)
        chip = self.chip_id if chip_id is None else _check_chip_id(self.product, chip_id)
        if mask_chip_id:
            chip = bytes(64)
        committed_fw = committed_firmware or firmware
        fam, mod, step = _CPUID[self.product] if version >= 3 else (0, 0, 0)
        key_info = int(any(author_key_digest)) | int(mask_chip_id) << 1 | signing_key.value << 2
        unsigned = AttestationReport(
            version=version,
            guest_svn=guest_svn,
            policy=GuestPolicy(policy),
            family_id=family_id,
            image_id=image_id,
            vmpl=vmpl,
            signature_algo=1,
            current_tcb=_check_tcb(self.product, current_tcb or self.tcb),
            platform_info=PlatformInfo(platform_info),
            key_info=KeyInfo(key_info),
            report_data=report_data.ljust(64, b"\0"),
            measurement=measurement,
            host_data=host_data,
            id_key_digest=id_key_digest,
            author_key_digest=author_key_digest,
            report_id=report_id if report_id is not None else self._derive("report-id", 32),
            report_id_ma=report_id_ma,
            reported_tcb=reported,
            cpuid_fam_id=fam,
            cpuid_mod_id=mod,
            cpuid_step=step,
            chip_id=chip,
            committed_tcb=_check_tcb(self.product, committed_tcb or self.tcb),
            current_build=firmware[2],
            current_minor=firmware[1],
            current_major=firmware[0],
            committed_build=committed_fw[2],
            committed_minor=committed_fw[1],
            committed_major=committed_fw[0],
            launch_tcb=_check_tcb(self.product, launch_tcb or self.tcb),
            launch_mit_vector=launch_mit_vector,
            current_mit_vector=current_mit_vector,
            signature_r=0,
            signature_s=0,
            product=self.product,
        )
        try:
            data = bytearray(unsigned.encode())
        except (OverflowError, ValueError, struct.error) as exc:
            raise ValueError(f"cannot encode the report: {exc}") from None
        if vek is not None:
            der = vek.key.sign(
                bytes(data[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384(), deterministic_signing=True)
            )
            r, s = decode_dss_signature(der)
            data[0x2A0 : 0x2A0 + 72] = r.to_bytes(72, "little")
            data[0x2E8 : 0x2E8 + 72] = s.to_bytes(72, "little")
        try:
            return AttestationReport.decode(bytes(data))
        except FormatError as exc:
            raise ValueError(f"the format does not allow this report: {exc}") from None

    def report_bytes(self, report_data: bytes = b"", **fields: Unpack[ReportFields]) -> bytes:
        """`report(...)` as its 0x4A0 bytes."""
        return self.report(report_data, **fields).encode()

    # ------------------------------------------------------------------ internals

    def _signer(self, signing_key: SigningKey) -> _Vek | None:
        if signing_key is SigningKey.NONE:
            return None
        if signing_key is SigningKey.VCEK:
            return self._vcek
        if self._vlek is None:
            raise ValueError("this simulator has no VLEK (make it with vlek=True)")
        return self._vlek

    def _derive(self, label: str, size: int) -> bytes:
        return hashlib.shake_256(self._seed + b"\0" + label.encode()).digest(size)

    def _default_chip_id(self) -> bytes:
        chip = self._derive("chip-id", 64)
        return chip[:8].ljust(64, b"\0") if self.product is Product.TURIN else chip

    def _serial(self, role: str) -> int:
        return int.from_bytes(self._derive(f"serial:{role}", 8), "big") >> 1 | 1

    def _name(self, common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
                x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(_OID_DESCRIPTION, NOT_AMD),
            ]
        )

    def _crl_link(self, vlek: bool) -> x509.CRLDistributionPoints:
        kind = "vlek" if vlek else "vcek"
        url = f"https://cvmstore-simulator.invalid/{kind}/v1/{self.product.value}/crl"
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        return x509.CRLDistributionPoints([point])

    def _builder(
        self,
        subject: x509.Name,
        issuer: x509.Name,
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        role: str,
        lifetime: timedelta,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(self._serial(role))
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_before + lifetime)
        )

    def _make_ark(self, key_size: int) -> _RsaCa:
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        name = self._name(f"ARK-{self.product.value}")
        builder = (
            self._builder(name, name, key.public_key(), "ARK", _LIFETIME["ARK"])
            .add_extension(_key_usage(crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(self._crl_link(vlek=False), critical=False)
        )
        return _RsaCa(key, builder.sign(key, hashes.SHA384(), rsa_padding=_PSS))

    def _make_intermediate(self, role: str, common_name: str, key_size: int) -> _RsaCa:
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        ark = self._ark
        builder = (
            self._builder(
                self._name(common_name), ark.cert.subject, key.public_key(), role, _LIFETIME[role]
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ark.key.public_key()), False
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(crl_sign=False), critical=True)
            .add_extension(self._crl_link(vlek=role == "ASVK"), critical=False)
        )
        return _RsaCa(key, builder.sign(ark.key, hashes.SHA384(), rsa_padding=_PSS))

    def _make_vek(self, which: SigningKey) -> _Vek:
        vlek = which is SigningKey.VLEK
        issuer = self._asvk if vlek else self._ask
        if issuer is None:
            raise RuntimeError("the ASVK must exist before the VLEK")
        label = f"{which.name.lower()}:{self.tcb.raw.hex()}"
        scalar = int.from_bytes(self._derive(label, 64), "big") % (_P384_ORDER - 1) + 1
        key = ec.derive_private_key(scalar, ec.SECP384R1())
        role = which.name
        builder = self._builder(
            self._name(f"SEV-{role}"),
            issuer.cert.subject,
            key.public_key(),
            f"{role}:{self.tcb.raw.hex()}",
            _VLEK_LIFETIME if vlek else _LIFETIME["VCEK"],
        )
        for oid, value in self._vek_extensions(vlek):
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        return _Vek(key, builder.sign(issuer.key, hashes.SHA384(), rsa_padding=_PSS))

    def _vek_extensions(self, vlek: bool) -> list[tuple[x509.ObjectIdentifier, bytes]]:
        """AMD's VEK extensions, in the order AMD's KDS writes them."""
        tcb = self.tcb
        turin = self.product is Product.TURIN
        name = self.product.value if vlek else _VCEK_PRODUCT_NAME[self.product]
        spl = {
            "3.1": tcb.bootloader,
            "3.2": tcb.tee,
            "3.4": 0,
            "3.5": 0,
            "3.6": 0,
            "3.7": 0,
            "3.3": tcb.snp,
            "3.8": tcb.microcode,
        }
        if turin:  # Turin: fmcSPL first, no spl4, snpSPL in numeric order
            del spl["3.4"]
            spl = {"3.9": tcb.fmc or 0, **dict(sorted(spl.items()))}
        out = [
            (_oid("1"), _der_integer(1 if turin else 0)),
            (_oid("2"), _der_ia5(name)),
            *((_oid(arc), _der_integer(level)) for arc, level in spl.items()),
        ]
        if vlek:
            out.append((_oid("5"), _der_ia5(self.csp_id)))
        else:
            out.append((_oid("4"), self.hw_id))  # raw bytes, as in AMD's VCEKs
        return out


def _oid(arc: str) -> x509.ObjectIdentifier:
    return x509.ObjectIdentifier(f"{_ARC}.{arc}")


def _key_usage(*, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _der_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_integer(value: int) -> bytes:
    """A DER INTEGER (0xD5 -> 02 02 00 D5, as AMD encodes microcode SPLs)."""
    body = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    return b"\x02" + _der_length(len(body)) + body


def _der_ia5(text: str) -> bytes:
    body = text.encode("ascii")
    return b"\x16" + _der_length(len(body)) + body


def _seed_bytes(seed: bytes | str | int | None) -> bytes:
    if seed is None:
        return b"r:" + secrets.token_bytes(32)
    if isinstance(seed, bytes):
        return b"b:" + seed
    if isinstance(seed, str):
        return b"s:" + seed.encode()
    return b"i:" + str(seed).encode()


def _check_tcb(product: Product, tcb: TcbVersion) -> TcbVersion:
    if (tcb.fmc is not None) != product.turin_layout:
        layout = "the Turin layout (with fmc)" if product.turin_layout else "no fmc component"
        raise ValueError(f"a {product.value} TCB has {layout}: {tcb}")
    if not tcb.reserved_ok:
        raise ValueError(f"the TCB sets reserved bytes: {tcb.raw.hex()}")
    return tcb


def _check_chip_id(product: Product, chip_id: bytes) -> bytes:
    if product is Product.TURIN and len(chip_id) == 8:
        chip_id = chip_id.ljust(64, b"\0")
    if len(chip_id) != 64:
        raise ValueError(f"a chip ID is 64 bytes (8 on Turin), not {len(chip_id)}")
    if product is Product.TURIN and any(chip_id[8:]):
        raise ValueError("a Turin chip ID has 8 significant bytes; the other 56 must be zero")
    if not any(chip_id):
        raise ValueError("a chip ID is not all zeros (mask it with mask_chip_id=True instead)")
    return bytes(chip_id)
