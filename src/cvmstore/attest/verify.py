"""Verify a report: the AMD chain to a pinned root, the signature, the TCB and the chip.

`verify_report` is the only way to get a `VerifiedReport`, so code that needs an authentic
report (the KBS) takes that type and cannot be handed an unchecked one by mistake. Policy
(which measurements, which TCB, ...) is a separate step: `cvmstore.attest.policy`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cvmstore.attest.certs import (
    AMD_ARK_PINS,
    CertRole,
    VekInfo,
    check_signed_by,
    check_validity,
    load_certificates,
    role_of,
    spki_sha256,
    vek_info,
)
from cvmstore.attest.report import AttestationReport, SigningKey
from cvmstore.attest.tcb import Product
from cvmstore.errors import (
    AttestationError,
    CertificateChainError,
    FormatError,
    ReportSignatureError,
)

__all__ = ["Trust", "VerifiedReport", "find_offline_vcek", "verify_report"]

_TOKEN = object()  # only verify_report holds it, so only it can make a VerifiedReport
_CHAIN_CACHE: OrderedDict[tuple[x509.Certificate, ...], VekInfo] = OrderedDict()
_CHAIN_CACHE_SIZE = 64


@dataclass(frozen=True, slots=True)
class Trust:
    """Which roots to trust: SHA-256 of an ARK's SubjectPublicKeyInfo -> its product.

    The default is AMD's three ARKs. Anything else (the simulator's root) must be added
    explicitly with `with_root`; nothing is trusted by default beyond AMD.
    """

    pins: dict[str, Product] = field(
        default_factory=lambda: {pin: product for product, pin in AMD_ARK_PINS.items()}
    )

    def with_root(self, ark: x509.Certificate, product: Product) -> Trust:
        """A copy that also trusts `ark` as the root of `product`."""
        return Trust({**self.pins, spki_sha256(ark): product})


class VerifiedReport:
    """A report whose signature, chain, TCB and chip binding were verified.

    Only `verify_report` makes these: the constructor refuses, the object is read-only, and
    it is not a dataclass (so `dataclasses.replace` cannot wrap an altered report in one).
    """

    __slots__ = ("ark_sha256", "product", "report", "signing_key", "vek", "verified_at")
    report: AttestationReport
    product: Product
    signing_key: SigningKey
    vek: VekInfo
    ark_sha256: str
    verified_at: datetime

    def __init__(self) -> None:
        raise TypeError("a VerifiedReport comes from verify_report() only")

    @classmethod
    def _issue(cls, token: object, **fields: object) -> VerifiedReport:
        if token is not _TOKEN:
            raise TypeError("a VerifiedReport comes from verify_report() only")
        made = object.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(made, name, value)
        return made

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a VerifiedReport is read-only")

    def __repr__(self) -> str:
        return (
            f"VerifiedReport({self.product.value}, {self.signing_key.name}, "
            f"measurement={self.report.measurement.hex()[:16]}...)"
        )


def verify_report(
    report: AttestationReport,
    certificates: Sequence[x509.Certificate] = (),
    *,
    trust: Trust | None = None,
    now: datetime | None = None,
    vcek_store: Path | None = None,
) -> VerifiedReport:
    """Verify `report` against the AMD chain in `certificates` (and `vcek_store`).

    Args:
        report: the decoded report.
        certificates: VEK, ASK or ASVK, and ARK, in any order (from the evidence, files or a
            directory). Every candidate chain is tried, so extra certificates (stale, junk,
            another chip's or provider's) are passed over rather than hiding the right one.
        trust: the pinned roots (AMD's by default).
        now: the time to check validity periods against (default: the current time); it
            must be timezone-aware.
        vcek_store: an offline VCEK store in Trustee's layout, consulted when no VCEK is given.

    Raises:
        AttestationError: the report names no usable signing key (check "signing-key"), or
            the host requested it (VMPL above 3: check "vmpl").
        CertificateChainError: a missing, untrusted, expired or wrongly signed certificate, a
            TCB layout that is not the chain's product's, or a TCB or chip ID that the VEK
            does not certify (check says which).
        ReportSignatureError: the report signature does not verify.
        ValueError: `now` is a naive datetime.
    """
    trust = trust or Trust()
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    signer = report.key_info.signing_key
    if signer is SigningKey.NONE:
        raise AttestationError("the report is not signed (SIGNING_KEY = none)", check="signing-key")
    if report.vmpl > 3:
        # ABI: a report the host requested (SNP_HV_REPORT_REQ) has VMPL 0xFFFFFFFF and binds
        # no guest data, so it is never evidence of a guest.
        raise AttestationError(
            f"VMPL {report.vmpl:#x}: a host-requested report binds no guest data", check="vmpl"
        )
    want = CertRole.VCEK if signer is SigningKey.VCEK else CertRole.VLEK
    # Each distinct certificate once (they compare by their DER bytes): a copy adds nothing.
    roles = [(cert, role_of(cert)) for cert in dict.fromkeys(certificates)]
    veks = [cert for cert, role in roles if role is not None and role[0] is want]
    if not veks and want is CertRole.VCEK and vcek_store is not None:
        veks = find_offline_vcek(vcek_store, report)
    if not veks:
        raise CertificateChainError(f"no {want.value} certificate was given", check="vek")
    # Every candidate VEK is tried, best-ranked first, through every check: a certificate that
    # is stale, junk or another provider's (a VLEK has no chip to tell it by) cannot hide the
    # genuine one. When none passes, the first failure of a candidate whose chain verified is
    # the most telling; else the first chain failure.
    chain_error: CertificateChainError | None = None
    later_error: CertificateChainError | ReportSignatureError | None = None
    links = _Links()
    for vek in _rank_veks(veks, report):  # unique: `roles` already counts each once
        try:
            ark, issuer, product, info = _chain_for(vek, roles, report, want, trust, links)
        except CertificateChainError as exc:
            chain_error = chain_error or exc
            continue
        try:
            _check_with(report, ark, issuer, vek, product, info, want, now)
        except (CertificateChainError, ReportSignatureError) as exc:
            later_error = later_error or exc
            continue
        return VerifiedReport._issue(
            _TOKEN,
            report=report,
            product=product,
            signing_key=signer,
            vek=info,
            ark_sha256=spki_sha256(ark),
            verified_at=now,
        )
    raise later_error or chain_error or CertificateChainError("no usable chain", check="chain")


def _check_with(
    report: AttestationReport,
    ark: x509.Certificate,
    issuer: x509.Certificate,
    vek: x509.Certificate,
    product: Product,
    info: VekInfo,
    want: CertRole,
    now: datetime,
) -> None:
    """Every check after the chain, for one candidate chain: layout, validity, signature..."""
    if report.turin_layout != product.turin_layout:
        raise CertificateChainError(
            f"the report's TCB layout does not match its {product.value} chain", check="tcb"
        )
    issuer_role = CertRole.ASK if want is CertRole.VCEK else CertRole.ASVK
    for cert, what in (
        (ark, "the ARK"),
        (issuer, f"the {issuer_role.value}"),
        (vek, f"the {want.value}"),
    ):
        check_validity(cert, now, what)
    _check_signature(report, vek)
    _check_tcb(report, info)
    if want is CertRole.VCEK:
        _check_chip(report, info)


class _Links:
    """The signature checks (and root pins) of one verification, each made once.

    Every VEK is tried with every issuer and every pinned ARK, so junk certificates pair
    with one another; remembering each link's verdict keeps the work to one RSA check per
    (certificate, issuer) pair given, rather than one per combination.
    """

    def __init__(self) -> None:
        self._failures: dict[tuple[x509.Certificate, x509.Certificate], CertificateChainError] = {}
        self._passed: set[tuple[x509.Certificate, x509.Certificate]] = set()
        self._pins: dict[x509.Certificate, str] = {}

    def pin(self, ark: x509.Certificate) -> str:
        """`spki_sha256(ark)`, computed once."""
        found = self._pins.get(ark)
        if found is None:
            found = self._pins[ark] = spki_sha256(ark)
        return found

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
        key = (cert, issuer)
        if key in self._passed:
            return
        failure = self._failures.get(key)
        if failure is None:
            try:
                check_signed_by(cert, issuer, what)
            except CertificateChainError as exc:
                self._failures[key] = failure = exc
            else:
                self._passed.add(key)
                return
        raise failure.with_traceback(None)


def _verified_chain(
    ark: x509.Certificate,
    issuer: x509.Certificate,
    vek: x509.Certificate,
    issuer_role: CertRole,
    want: CertRole,
    links: _Links,
) -> VekInfo:
    """Check the three links once per distinct chain; later calls find the result cached.

    A KBS verifies many reports against the same few chains, and the three RSA-4096
    signature checks cost more than the report's own ECDSA check. Only the links are cached
    (keyed by the certificates' exact signed bytes and signatures); validity periods, the
    pin, the report signature, TCB and chip are checked on every call.
    """
    key = (ark, issuer, vek)  # certificates compare and hash by their exact DER bytes
    found = _CHAIN_CACHE.get(key)
    if found is not None:
        return dataclasses.replace(found, spl=dict(found.spl))  # callers get their own copy
    links.check(ark, ark, "ARK")
    links.check(issuer, ark, issuer_role.value)
    links.check(vek, issuer, want.value)
    info = vek_info(vek)
    if len(_CHAIN_CACHE) >= _CHAIN_CACHE_SIZE:
        _CHAIN_CACHE.popitem(last=False)  # the oldest chain first
    _CHAIN_CACHE[key] = info
    return dataclasses.replace(info, spl=dict(info.spl))


def _rank_veks(veks: list[x509.Certificate], report: AttestationReport) -> list[x509.Certificate]:
    """The candidate VEKs, most likely first.

    First those whose certified TCB and (for a VCEK) chip match the report; unreadable ones
    last, so they fail with their own reason only when nothing else works.
    """

    def rank(cert: x509.Certificate) -> tuple[int, int]:
        try:
            info = _vek_info_cached(cert)
        except CertificateChainError:
            return (2, 2)
        reported = report.reported_tcb.components()
        tcb = all(info.spl.get(name) == level for name, level in reported.items())
        chip = info.hw_id is None or report.chip_id.startswith(info.hw_id)
        return (0 if tcb else 1, 0 if chip else 1)

    return sorted(veks, key=rank)


def _chain_for(
    vek: x509.Certificate,
    roles: list[tuple[x509.Certificate, tuple[CertRole, Product | None] | None]],
    report: AttestationReport,
    want: CertRole,
    trust: Trust,
    links: _Links,
) -> tuple[x509.Certificate, x509.Certificate, Product, VekInfo]:
    """(ARK, issuer, product, VEK facts) of the first chain that verifies for `vek`.

    Every ASK or ASVK and every pinned ARK given is tried, so an extra certificate with the
    right name (a stale one, or junk) cannot hide the genuine one.
    """
    product = report.product or _vek_info_cached(vek).product
    issuer_role = CertRole.ASK if want is CertRole.VCEK else CertRole.ASVK
    issuers = [
        (cert, role[1])
        for cert, role in roles
        if role is not None and role[0] is issuer_role and product in (None, role[1])
    ]
    if not issuers:
        what = "ASK" if issuer_role is CertRole.ASK else "ASVK"
        raise CertificateChainError(f"no {what} certificate was given", check="chain")
    first_error: CertificateChainError | None = None
    for issuer, issuer_product in issuers:
        chain_product = product or issuer_product
        arks = [
            cert
            for cert, role in roles
            if role is not None and role[0] is CertRole.ARK and role[1] is chain_product
        ]
        pinned = [a for a in arks if trust.pins.get(links.pin(a)) is chain_product]
        if chain_product is None or not arks:
            error = CertificateChainError(
                "no ARK certificate for the product was given", check="chain"
            )
        elif not pinned:
            pin = links.pin(arks[0])
            error = CertificateChainError(
                f"the ARK {pin[:16]}... is not a trusted root for {chain_product.value}",
                check="root",
            )
        else:
            for ark in pinned:
                try:
                    info = _verified_chain(ark, issuer, vek, issuer_role, want, links)
                except CertificateChainError as exc:
                    first_error = first_error or exc
                    continue
                return ark, issuer, chain_product, info
            continue
        first_error = first_error or error
    raise first_error or CertificateChainError("no usable chain", check="chain")


def _check_signature(report: AttestationReport, vek: x509.Certificate) -> None:
    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertificateChainError("the VEK's key is not ECDSA", check="chain")
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise ReportSignatureError(
            "the report signature does not verify under the VEK", check="signature"
        ) from None


def _check_tcb(report: AttestationReport, info: VekInfo) -> None:
    reported = report.reported_tcb.components()
    for name, level in reported.items():
        certified = info.spl.get(name)
        if certified != level:
            raise CertificateChainError(
                f"REPORTED_TCB {name} is {level} but the VEK certifies {certified}", check="tcb"
            )


def _check_chip(report: AttestationReport, info: VekInfo) -> None:
    if report.key_info.mask_chip_key or not any(report.chip_id):
        raise CertificateChainError(
            "the chip ID is masked, so the VCEK cannot be tied to the chip", check="chip-id"
        )
    hw_id = info.hw_id
    if not hw_id:
        raise CertificateChainError("the VCEK has no hwID extension", check="chip-id")
    expected = report.chip_id[: len(hw_id)]
    if hw_id != expected or any(report.chip_id[len(hw_id) :]):
        raise CertificateChainError("the VCEK was issued for another chip", check="chip-id")


def find_offline_vcek(root: Path, report: AttestationReport) -> list[x509.Certificate]:
    """VCEKs from an offline store in Trustee's layout, for this report's chip and TCB.

    `{root}/vcek/{hwid hex}/{blNN_teeNN_snpNN_ucodeNN[_fmcNN]}_vcek.der`, else
    `{root}/vcek/{hwid hex}/vcek.der` (hwid: the 64-byte chip ID, 8 bytes on Turin).
    """
    chip = report.chip_id[:8] if report.turin_layout else report.chip_id
    folder = root / "vcek" / chip.hex()
    tcb = report.reported_tcb
    name = f"bl{tcb.bootloader:02d}_tee{tcb.tee:02d}_snp{tcb.snp:02d}_ucode{tcb.microcode:02d}"
    if tcb.fmc is not None:
        name += f"_fmc{tcb.fmc:02d}"
    for candidate in (folder / f"{name}_vcek.der", folder / "vcek.der"):
        if candidate.is_file():
            try:
                return load_certificates(candidate.read_bytes())
            except FormatError as exc:
                raise CertificateChainError(f"{candidate}: {exc}", check="vek") from None
    return []


_VEK_INFO_CACHE: OrderedDict[x509.Certificate, VekInfo] = OrderedDict()


def _vek_info_cached(vek: x509.Certificate) -> VekInfo:
    """`vek_info`, remembered per certificate (a v2 report names its product only there)."""
    found = _VEK_INFO_CACHE.get(vek)
    if found is None:
        found = _VEK_INFO_CACHE[vek] = vek_info(vek)
        if len(_VEK_INFO_CACHE) > _CHAIN_CACHE_SIZE:
            _VEK_INFO_CACHE.popitem(last=False)
    return found
