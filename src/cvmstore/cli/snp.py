"""`cvmstore snp show` and `cvmstore snp verify`: read and check SEV-SNP attestation evidence.

Both take the evidence in any shape `cvmstore.attest.evidence.load_evidence` knows. `verify`
runs `verify_report` (chain to a pinned AMD root, signature, TCB, chip), then the optional
REPORT_DATA and policy checks, and exits with the failed check's documented status.
"""

from __future__ import annotations

import argparse
import hmac
import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from cvmstore.attest.certs import common_name, load_certificates, role_of
from cvmstore.attest.evidence import Evidence, load_evidence
from cvmstore.attest.policy import check_policy, load_policy, policy_to_dict
from cvmstore.attest.report import AttestationReport, SigningKey
from cvmstore.attest.tcb import Product, TcbVersion
from cvmstore.attest.verify import Trust, VerifiedReport, verify_report
from cvmstore.cli.common import NestedParser, read_input
from cvmstore.cli.usage import UsageError
from cvmstore.errors import AttestationError, FormatError, PolicyError

__all__ = ["register"]

_SHAPES = (
    "REPORT is a file (or - for stdin) holding the evidence in any of these shapes,\n"
    "told apart by their content:\n"
    "  - the raw 1184-byte SNP attestation report (what /dev/sev-guest or configfs-tsm\n"
    "    outblob gives), or the same as hex text\n"
    "  - an Azure HCL report (magic HCLA; the SNP report sits at offset 0x20)\n"
    '  - Trustee\'s SNP evidence: {"attestation_report": {...}, "cert_chain": [...]}\n'
    '  - COCONUT aproxy\'s SNP evidence: {"snp-report": BASE64, "certs-buf": BASE64}'
)

_VERIFY_EPILOG = """\
what is checked, in order (the name in brackets is printed when that check fails):
  1. the report names a signing key, VCEK or VLEK                        [signing-key]
     and comes from a guest (VMPL 0-3, not a host-requested report)      [vmpl]
  2. a VCEK or VLEK, its issuer (ASK or ASVK) and the ARK are at hand    [vek] [chain]
  3. the ARK is one of AMD's pinned roots (or a --trust-root)            [root]
  4. ARK -> ASK/ASVK -> VCEK/VLEK signatures (RSA-PSS SHA-384)           [chain]
  5. every certificate is valid at --now (default: the current time)     [validity]
  6. the report's ECDSA P-384 signature under the VCEK/VLEK              [signature]
  7. the TCB layout is the product's; REPORTED_TCB equals the VEK's SPLs [tcb]
  8. a VCEK's hwID equals the report's CHIP_ID                           [chip-id]
  9. --report-data and --policy (docs/attestation-policy.md)             [report-data] ...

certificates come from the evidence itself, --vek, --chain, --certs-dir and, for a VCEK
only, --vcek-store; every candidate chain is tried, so extra certificates (stale, another
chip's, junk) are passed over. AMD's ASK/ASVK/ARK per product are published at
https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,Turin}/cert_chain (VCEK chain) and
.../vlek/v1/.../cert_chain (VLEK chain); only the root's key is trusted, by its pinned hash.

exit status: 0 valid; 30 AttestationError; 31 ReportSignatureError (the signature);
32 CertificateChainError (certificates, validity, TCB, chip); 33 PolicyError (report data,
policy); 3 FormatError (malformed evidence or certificate); 2 usage error.

examples:
  cvmstore snp verify report.bin --vek vcek.der --chain milan_ask_ark.pem
  cvmstore snp verify evidence.json --vcek-store /var/lib/kbs/snp --policy policy.toml
  cvmstore snp verify report.bin --certs-dir certs/ --now 2025-12-01 --json
"""


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `snp show` and `snp verify` to the command line."""
    snp = commands.add_parser(
        "snp",
        help="show or verify an SEV-SNP attestation report",
        description=(
            "Read and verify AMD SEV-SNP attestation evidence: the report a confidential VM "
            "presents, and the AMD certificates that endorse the key that signed it."
        ),
    )
    actions = snp.add_subparsers(dest="snp_command", metavar="ACTION", required=True)

    show = actions.add_parser(
        "show",
        help="print every field of a report",
        description="Print every field of an SEV-SNP report, decoded. Nothing is verified:\n"
        "use `cvmstore snp verify` for that.",
        epilog=_SHAPES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("report", metavar="REPORT", help="the evidence file, or - for stdin")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_show, command_parser=NestedParser(show))

    verify = actions.add_parser(
        "verify",
        help="verify a report against AMD's certificate chain (and a policy)",
        description=textwrap.fill(
            "Verify an SEV-SNP report: its signature, the AMD certificate chain to a pinned "
            "root, the TCB and chip the certificate vouches for, and optionally the "
            "REPORT_DATA and a policy. Prints what was verified and exits 0, or prints the "
            "failed check and exits with its status.",
            88,
        )
        + "\n\n"
        + _SHAPES,
        epilog=_VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("report", metavar="REPORT", help="the evidence file, or - for stdin")
    verify.add_argument(
        "--vek",
        metavar="FILE",
        action="append",
        default=[],
        help="the VCEK or VLEK (DER or PEM; repeatable)",
    )
    verify.add_argument(
        "--chain",
        metavar="FILE",
        action="append",
        default=[],
        help="certificates of the chain, e.g. AMD's ASK+ARK PEM bundle (repeatable)",
    )
    verify.add_argument(
        "--certs-dir",
        metavar="DIR",
        action="append",
        default=[],
        help="load every *.der, *.pem and *.crt file in DIR (repeatable)",
    )
    verify.add_argument(
        "--vcek-store",
        metavar="DIR",
        type=Path,
        help="an offline VCEK store in Trustee's layout, used when no VCEK is given: "
        "DIR/vcek/{CHIP_ID hex}/{blNN_teeNN_snpNN_ucodeNN[_fmcNN]}_vcek.der, else "
        "DIR/vcek/{CHIP_ID hex}/vcek.der",
    )
    verify.add_argument(
        "--policy",
        metavar="FILE",
        type=Path,
        help="also require this attestation policy (measurements, TCB minimums, ...)",
    )
    verify.add_argument(
        "--report-data",
        metavar="HEX",
        help="require this REPORT_DATA: 1-64 bytes as hex; shorter values are padded "
        "with zero bytes to 64, as Trustee pads them",
    )
    verify.add_argument(
        "--now",
        metavar="ISO-TIME",
        help="check validity periods at this time, e.g. 2025-12-01 or "
        "2025-12-01T12:00:00+01:00 (UTC when no zone is given; default: now)",
    )
    verify.add_argument(
        "--trust-root",
        metavar="FILE:PRODUCT",
        action="append",
        default=[],
        help="also trust the ARK in FILE as the root of PRODUCT (Milan, Genoa or Turin), e.g. "
        "the simulator's; AMD's three roots are always trusted (repeatable)",
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=_verify, command_parser=NestedParser(verify))


# ---------------------------------------------------------------- show


def _show(args: argparse.Namespace) -> int:
    evidence = _load(args.report)
    if args.json:
        print(json.dumps(_evidence_dict(evidence), indent=2))
        return 0
    report = evidence.report
    product = report.product.value if report.product else "product not in the report"
    print(f"SEV-SNP attestation report, version {report.version} ({product}; {evidence.form})")
    for label, value in _rows(report):
        lines = value.splitlines() or [""]
        print(f"  {label:<20} {lines[0]}")
        for more in lines[1:]:
            print(f"  {'':<20} {more}")
    if evidence.certificates:
        print("certificates in the evidence:")
        for cert in evidence.certificates:
            print(f"  {_describe(cert)}")
    return 0


def _rows(report: AttestationReport) -> list[tuple[str, str]]:
    def flags(named: dict[str, bool]) -> str:
        on = [name for name, value in named.items() if value]
        return ", ".join(on) if on else "none"

    def tcb(value: TcbVersion) -> str:
        return f"{value}  (raw {value.raw.hex()})"

    def hexa(value: bytes) -> str:
        if not any(value):
            return f"{len(value)} zero bytes"
        return "\n".join(textwrap.wrap(value.hex(), 64))

    policy = report.policy
    key = report.key_info
    v3 = report.version >= 3
    v5 = report.version >= 5
    return [
        ("version", str(report.version)),
        ("guest_svn", str(report.guest_svn)),
        (
            "policy",
            f"{policy.value:#x}: ABI >= {policy.abi_major}.{policy.abi_minor}; "
            f"allows {flags(policy.flags())}",
        ),
        ("family_id", hexa(report.family_id)),
        ("image_id", hexa(report.image_id)),
        ("vmpl", str(report.vmpl)),
        ("signature_algo", f"{report.signature_algo} (ECDSA P-384 with SHA-384)"),
        ("current_tcb", tcb(report.current_tcb)),
        (
            "platform_info",
            f"{report.platform_info.value:#x}: {flags(report.platform_info.flags())}",
        ),
        (
            "key_info",
            f"{key.value:#x}: signed by the {key.signing_key.name}"
            f"{'' if key.signing_key is not SigningKey.NONE else ' (unsigned)'}; "
            f"author key {'yes' if key.author_key_en else 'no'}; "
            f"chip ID {'masked (MASK_CHIP_KEY)' if key.mask_chip_key else 'not masked'}",
        ),
        ("report_data", hexa(report.report_data)),
        ("measurement", hexa(report.measurement)),
        ("host_data", hexa(report.host_data)),
        ("id_key_digest", hexa(report.id_key_digest)),
        ("author_key_digest", hexa(report.author_key_digest)),
        ("report_id", hexa(report.report_id)),
        ("report_id_ma", hexa(report.report_id_ma)),
        ("reported_tcb", tcb(report.reported_tcb)),
        (
            "cpuid",
            f"family {report.cpuid_fam_id:#x}, model {report.cpuid_mod_id:#x}, "
            f"stepping {report.cpuid_step:#x}"
            if v3
            else "(not in a version 2 report)",
        ),
        ("chip_id", hexa(report.chip_id)),
        ("committed_tcb", tcb(report.committed_tcb)),
        (
            "current_version",
            f"{report.current_major}.{report.current_minor}.{report.current_build}",
        ),
        (
            "committed_version",
            f"{report.committed_major}.{report.committed_minor}.{report.committed_build}",
        ),
        ("launch_tcb", tcb(report.launch_tcb)),
        (
            "launch_mit_vector",
            f"{report.launch_mit_vector:#x}" if v5 else "(from version 5 on)",
        ),
        (
            "current_mit_vector",
            f"{report.current_mit_vector:#x}" if v5 else "(from version 5 on)",
        ),
        ("signature.r", hexa(report.signature_r.to_bytes(48, "big"))),
        ("signature.s", hexa(report.signature_s.to_bytes(48, "big"))),
    ]


def _evidence_dict(evidence: Evidence) -> dict[str, Any]:
    return {
        "form": evidence.form,
        "report": evidence.report.to_dict(),
        "certificates": [_cert_dict(cert) for cert in evidence.certificates],
    }


def _cert_dict(cert: x509.Certificate) -> dict[str, Any]:
    role = role_of(cert)
    return {
        "role": role[0].value if role else None,
        "product": role[1].value if role and role[1] else None,
        "subject": common_name(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _describe(cert: x509.Certificate) -> str:
    role = role_of(cert)
    what = role[0].value if role else "not an AMD certificate"
    return (
        f"{what:<5} {common_name(cert) or cert.subject.rfc4514_string()}, valid "
        f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
    )


# ---------------------------------------------------------------- verify


def _verify(args: argparse.Namespace) -> int:
    now = _parse_now(args.now)
    expected_data = _parse_report_data(args.report_data)
    evidence = _load(args.report)
    certificates = list(evidence.certificates)
    for name in args.vek + args.chain:
        certificates.extend(_read_certs(Path(name)))
    for directory in args.certs_dir:
        certificates.extend(_read_dir(Path(directory)))
    trust = Trust()
    for spec in args.trust_root:
        ark, product = _parse_trust_root(spec)
        trust = trust.with_root(ark, product)
        certificates.append(ark)
    if args.vcek_store is not None and not args.vcek_store.is_dir():
        raise UsageError(f"--vcek-store {args.vcek_store}: not a directory")
    policy = load_policy(args.policy) if args.policy is not None else None
    try:
        verified = verify_report(
            evidence.report, certificates, trust=trust, now=now, vcek_store=args.vcek_store
        )
        if policy is not None:
            check_policy(verified, policy, report_data=expected_data)
        elif expected_data is not None and not hmac.compare_digest(
            evidence.report.report_data, expected_data
        ):
            # No part of either value: where they differ only at the end, the report's
            # REPORT_DATA would give away most of the expected binding.
            raise PolicyError(
                "REPORT_DATA does not match the required --report-data", check="report-data"
            )
    except AttestationError as exc:
        if args.json:
            print(json.dumps({"valid": False, "check": exc.check, "error": str(exc)}, indent=2))
        raise
    if args.json:
        result = {
            "valid": True,
            "form": evidence.form,
            **_verified_dict(verified),
            "report_data_checked": expected_data is not None,
            "policy": None
            if policy is None
            else {"file": str(args.policy), "rules": policy_to_dict(policy)},
            "report": evidence.report.to_dict(),
        }
        print(json.dumps(result, indent=2))
        return 0
    for line in _verified_lines(verified, evidence, expected_data, args.policy):
        print(line)
    return 0


def _verified_dict(verified: VerifiedReport) -> dict[str, Any]:
    return {
        "product": verified.product.value,
        "signing_key": verified.signing_key.name,
        "ark_sha256": verified.ark_sha256,
        "verified_at": verified.verified_at.isoformat(),
        "vek": {
            "role": verified.vek.role.value,
            "product_name": verified.vek.product_name,
            "spl": verified.vek.spl,
            "hw_id": verified.vek.hw_id.hex() if verified.vek.hw_id else None,
            "csp_id": verified.vek.csp_id,
        },
        "checks": [
            "signing-key",
            "root",
            "chain",
            "validity",
            "signature",
            "tcb",
            *(["chip-id"] if verified.signing_key is SigningKey.VCEK else []),
        ],
    }


def _verified_lines(
    verified: VerifiedReport,
    evidence: Evidence,
    expected_data: bytes | None,
    policy: Path | None,
) -> list[str]:
    report = verified.report
    vek = verified.vek.role.value
    issuer = "ASK" if verified.signing_key is SigningKey.VCEK else "ASVK"
    product = verified.product.value
    lines = [
        f"valid: SEV-SNP report v{report.version} ({evidence.form}) signed by the {vek} of "
        f"an AMD {product}",
        f"  root        ARK-{product}, SPKI SHA-256 {verified.ark_sha256} (trusted)",
        f"  chain       {vek} <- {issuer} <- ARK, RSA-PSS SHA-384 signatures verified",
        f"  validity    all three certificates valid at "
        f"{verified.verified_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC",
        "  signature   ECDSA P-384 / SHA-384 over bytes 0x000-0x29F verified",
        f"  tcb         REPORTED_TCB {report.reported_tcb} = the {vek}'s SPLs",
    ]
    if verified.signing_key is SigningKey.VCEK:
        lines.append("  chip        CHIP_ID = the VCEK's hwID")
    elif verified.vek.csp_id:
        lines.append(f"  vlek        issued to {verified.vek.csp_id}")
    lines.append(f"  measurement {report.measurement.hex()}")
    if expected_data is not None:
        lines.append("  report_data as required")
    lines.append(f"  policy      {policy}: satisfied" if policy else "  policy      not checked")
    return lines


# ---------------------------------------------------------------- inputs


def _load(name: str) -> Evidence:
    data = read_input(name)
    try:
        return load_evidence(data)
    except FormatError as exc:
        raise type(exc)(f"{name}: {exc}") from None


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return load_certificates(data)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


def _read_dir(directory: Path) -> list[x509.Certificate]:
    if not directory.is_dir():
        raise UsageError(f"--certs-dir {directory}: not a directory")
    files = sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and path.suffix.lower() in {".der", ".pem", ".crt"}
    )
    return [cert for path in files for cert in _read_certs(path)]


def _parse_trust_root(spec: str) -> tuple[x509.Certificate, Product]:
    name, sep, product_name = spec.rpartition(":")
    products = {product.value.lower(): product for product in Product}
    if not sep or not name or product_name.lower() not in products:
        raise UsageError(
            f"--trust-root {spec!r}: use FILE:PRODUCT with PRODUCT one of "
            f"{', '.join(p.value for p in Product)}"
        )
    certs = _read_certs(Path(name))
    arks = [cert for cert in certs if cert.subject == cert.issuer]
    if len(arks) != 1:
        raise UsageError(
            f"--trust-root {name}: expected one self-signed root certificate, found {len(arks)}"
        )
    return arks[0], products[product_name.lower()]


def _parse_now(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--now {text!r}: not an ISO 8601 time (e.g. 2025-12-01 or 2025-12-01T12:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parse_report_data(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"--report-data: not hex: {text!r}") from None
    if not 1 <= len(value) <= 64:
        raise UsageError(f"--report-data: 1 to 64 bytes, not {len(value)}")
    return value.ljust(64, b"\0")
