"""SEV-SNP evidence as guests and brokers exchange it: certificate tables and JSON envelopes.

Three shapes carry a report and, optionally, the certificates that endorse it:

- **Raw**: the 1184-byte report, the same as hex text, or an Azure HCL report
  (`report.load_report`).
- **Trustee** (the KBS's `primary_evidence` for SNP): `{"attestation_report": {...},
  "cert_chain": null | [{"cert_type": "VCEK", "data": [48, 130, ...]}, ...]}`. The report is
  the serde JSON form of the Rust `sev` crate's `AttestationReport`: integers, byte arrays as
  lists of integers, TCB values as `{fmc, bootloader, tee, snp, microcode}`, firmware versions
  as `{major, minor, build}`, and the signature as `{r: [72 bytes], s: [72 bytes]}`, both
  little-endian as in the binary report.
- **COCONUT aproxy** (what `tools/aproxy` sends to a KBS): `{"snp-report": base64 of the
  report, "certs-buf": base64 of a GHCB certificate table, or null}` (standard base64).

The **GHCB certificate table** (GHCB specification 56421, the extended guest request; Linux
configfs-tsm returns it as `auxblob`) is a list of 24-byte entries `{GUID (16 bytes), offset
(u32 LE), length (u32 LE)}` ended by an all-zero entry; each offset is relative to the start of
the table and points past the entry list. The GUID bytes are in RFC 4122 (big-endian) order,
as AMD's sev-guest tools, virtee/sev and go-sev-guest all write and read them
(`uuid.UUID(bytes=...)`), not in the mixed-endian order of EFI GUIDs.

Everything here only parses: nothing is trusted until `verify.verify_report` has checked it.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cvmstore.attest._json import strict_json
from cvmstore.attest.certs import CertRole, load_certificates, role_of
from cvmstore.attest.report import REPORT_SIZE, AttestationReport, load_report
from cvmstore.attest.tcb import TcbVersion
from cvmstore.errors import FormatError

__all__ = [
    "CERT_TABLE_GUIDS",
    "CertTableEntry",
    "Evidence",
    "aproxy_evidence",
    "build_cert_table",
    "cert_table_for",
    "load_evidence",
    "parse_aproxy_evidence",
    "parse_cert_table",
    "parse_trustee_evidence",
    "read_cert_table",
    "report_from_trustee_json",
    "report_to_trustee_json",
    "trustee_evidence",
]

#: The GUID of each certificate in a GHCB certificate table. The ASVK (the VLEK's issuer)
#: has no GUID of its own and travels under the ASK's.
CERT_TABLE_GUIDS: dict[CertRole, uuid.UUID] = {
    CertRole.VCEK: uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    CertRole.VLEK: uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    CertRole.ASK: uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    CertRole.ARK: uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
}
_ROLE_OF_GUID = {guid: role for role, guid in CERT_TABLE_GUIDS.items()}
_ENTRY = struct.Struct("<16sII")  # GUID, offset, length
_ZERO_ENTRY = bytes(_ENTRY.size)
#: cert_type names of the sev crate's CertType that carry certificates we use.
_TRUSTEE_TYPES = {"VCEK", "VLEK", "ASK", "ARK"}
#: The fields of the sev crate's AttestationReport, in its order.
_TRUSTEE_KEYS = (
    "version",
    "guest_svn",
    "policy",
    "family_id",
    "image_id",
    "vmpl",
    "sig_algo",
    "current_tcb",
    "plat_info",
    "key_info",
    "report_data",
    "measurement",
    "host_data",
    "id_key_digest",
    "author_key_digest",
    "report_id",
    "report_id_ma",
    "reported_tcb",
    "cpuid_fam_id",
    "cpuid_mod_id",
    "cpuid_step",
    "chip_id",
    "committed_tcb",
    "current",
    "committed",
    "launch_tcb",
    "launch_mit_vector",
    "current_mit_vector",
    "signature",
)


# ---------------------------------------------------------------- certificate tables


@dataclass(frozen=True, slots=True)
class CertTableEntry:
    """One entry of a GHCB certificate table: its GUID, where its bytes lie, and the bytes."""

    guid: uuid.UUID
    offset: int
    data: bytes

    @property
    def role(self) -> CertRole | None:
        """The certificate's role by GUID (ASK also for an ASVK), None for another GUID."""
        return _ROLE_OF_GUID.get(self.guid)


#: The most certificates evidence may carry (a GHCB table's entries, Trustee's cert_chain):
#: real evidence has three or four, and `verify_report` tries every chain they can form.
_MAX_ENTRIES = 32


def read_cert_table(data: bytes) -> list[CertTableEntry]:
    """Every entry of a GHCB certificate table, known GUIDs or not, bounds-checked.

    An empty buffer is an empty table (the kernel returns one when the host supplied no
    certificates). Bytes after the data the entries point to are allowed (hosts pad the table
    to whole pages).

    Raises:
        FormatError: no terminating all-zero entry, more than 32 entries, entries that
            overlap, or an entry whose data lies inside the entry list or beyond the buffer
            (with the entry's offset in the table).
    """
    data = bytes(data)
    if not data:
        return []
    raw: list[tuple[int, uuid.UUID, int, int]] = []
    position = 0
    while True:
        if position + _ENTRY.size > len(data):
            raise FormatError(
                "the certificate table ends without an all-zero entry", offset=position
            )
        chunk = data[position : position + _ENTRY.size]
        if chunk == _ZERO_ENTRY:
            break
        guid, offset, length = _ENTRY.unpack(chunk)
        raw.append((position, uuid.UUID(bytes=guid), offset, length))
        if len(raw) > _MAX_ENTRIES:
            raise FormatError(
                f"the certificate table has more than {_MAX_ENTRIES} entries", offset=position
            )
        position += _ENTRY.size
    header_end = position + _ENTRY.size
    # Overlapping entries would let a small table make many copies of one large body.
    spans = sorted((offset, offset + length) for _, _, offset, length in raw)
    if any(start < end for (_, end), (start, _) in itertools.pairwise(spans)):
        raise FormatError("certificate table entries overlap")
    entries = []
    for where, guid, offset, length in raw:
        if offset < header_end:
            raise FormatError(
                f"certificate {guid} starts at {offset}, inside the table's entry list "
                f"(which ends at {header_end})",
                offset=where,
            )
        if offset + length > len(data):
            raise FormatError(
                f"certificate {guid} ({length} bytes at {offset}) runs past the end of "
                f"the {len(data)}-byte table",
                offset=where,
            )
        entries.append(CertTableEntry(guid, offset, data[offset : offset + length]))
    return entries


def parse_cert_table(data: bytes) -> list[x509.Certificate]:
    """The VCEK, VLEK, ASK (or ASVK) and ARK in a GHCB certificate table, in table order.

    Entries with other GUIDs (a CRL, a provider's extras) are skipped. A certificate may be
    DER (zero padding after it is allowed) or PEM.

    Raises:
        FormatError: a malformed table (see `read_cert_table`), or an entry with a known GUID
            that holds no certificate.
    """
    certs = []
    for entry in read_cert_table(data):
        if entry.role is None:
            continue
        try:
            found = load_certificates(_trim_der(entry.data))
        except FormatError as exc:
            raise FormatError(
                f"the {entry.role.value} entry holds no certificate: {exc}", offset=entry.offset
            ) from None
        if len(found) != 1:
            raise FormatError(
                f"the {entry.role.value} entry holds {len(found)} certificates, not one",
                offset=entry.offset,
            )
        certs.append(found[0])
    return certs


def build_cert_table(
    entries: Iterable[tuple[CertRole | uuid.UUID, bytes]], *, page_align: bool = False
) -> bytes:
    """A GHCB certificate table holding `entries` ((role or GUID, bytes)) in that order.

    `page_align` pads the table to a multiple of 4096 bytes, as the kernel hands it over.
    """
    items = [(_guid(key), bytes(blob)) for key, blob in entries]
    offset = (len(items) + 1) * _ENTRY.size
    header = bytearray()
    body = bytearray()
    for guid, blob in items:
        header += _ENTRY.pack(guid.bytes, offset + len(body), len(blob))
        body += blob
    table = bytes(header) + _ZERO_ENTRY + bytes(body)
    if page_align and len(table) % 4096:
        table += bytes(4096 - len(table) % 4096)
    return table


def cert_table_for(certificates: Iterable[x509.Certificate], *, page_align: bool = False) -> bytes:
    """A GHCB certificate table for AMD certificates, each under the GUID of its role.

    Raises:
        ValueError: a certificate that is not an AMD VCEK, VLEK, ASK, ASVK or ARK.
    """
    entries: list[tuple[CertRole | uuid.UUID, bytes]] = []
    for cert in certificates:
        role = role_of(cert)
        if role is None:
            raise ValueError(f"not an AMD certificate: {cert.subject.rfc4514_string()}")
        key = CertRole.ASK if role[0] is CertRole.ASVK else role[0]
        entries.append((key, cert.public_bytes(serialization.Encoding.DER)))
    return build_cert_table(entries, page_align=page_align)


def _guid(key: CertRole | uuid.UUID) -> uuid.UUID:
    if isinstance(key, uuid.UUID):
        return key
    return CERT_TABLE_GUIDS[CertRole.ASK if key is CertRole.ASVK else key]


def _trim_der(blob: bytes) -> bytes:
    """A DER SEQUENCE without the zero padding some hosts leave after it."""
    if len(blob) < 4 or blob[0] != 0x30:
        return blob
    first = blob[1]
    if first < 0x80:
        end = 2 + first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or len(blob) < 2 + count:
            return blob
        end = 2 + count + int.from_bytes(blob[2 : 2 + count], "big")
    if end < len(blob) and not any(blob[end:]):
        return blob[:end]
    return blob


# ---------------------------------------------------------------- Trustee's JSON


def report_to_trustee_json(report: AttestationReport) -> dict[str, Any]:
    """The serde JSON form of `report` that Trustee's SNP verifier reads (sev crate 7.x).

    Fields the version lacks are null, as the sev crate writes them: CPUID before v3, the
    mitigation vectors before v5.
    """

    def tcb(value: TcbVersion) -> dict[str, int | None]:
        return {
            "fmc": value.fmc,
            "bootloader": value.bootloader,
            "tee": value.tee,
            "snp": value.snp,
            "microcode": value.microcode,
        }

    def version(major: int, minor: int, build: int) -> dict[str, int]:
        return {"major": major, "minor": minor, "build": build}

    cpuid = report.version >= 3
    mit = report.version >= 5
    return {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": report.policy.value,
        "family_id": list(report.family_id),
        "image_id": list(report.image_id),
        "vmpl": report.vmpl,
        "sig_algo": report.signature_algo,
        "current_tcb": tcb(report.current_tcb),
        "plat_info": report.platform_info.value,
        "key_info": report.key_info.value,
        "report_data": list(report.report_data),
        "measurement": list(report.measurement),
        "host_data": list(report.host_data),
        "id_key_digest": list(report.id_key_digest),
        "author_key_digest": list(report.author_key_digest),
        "report_id": list(report.report_id),
        "report_id_ma": list(report.report_id_ma),
        "reported_tcb": tcb(report.reported_tcb),
        "cpuid_fam_id": report.cpuid_fam_id if cpuid else None,
        "cpuid_mod_id": report.cpuid_mod_id if cpuid else None,
        "cpuid_step": report.cpuid_step if cpuid else None,
        "chip_id": list(report.chip_id),
        "committed_tcb": tcb(report.committed_tcb),
        "current": version(report.current_major, report.current_minor, report.current_build),
        "committed": version(
            report.committed_major, report.committed_minor, report.committed_build
        ),
        "launch_tcb": tcb(report.launch_tcb),
        "launch_mit_vector": report.launch_mit_vector if mit else None,
        "current_mit_vector": report.current_mit_vector if mit else None,
        "signature": {
            "r": list(report.signature_r.to_bytes(72, "little")),
            "s": list(report.signature_s.to_bytes(72, "little")),
        },
    }


#: Keys that older sev crates (6.x) do not write; serde reads a missing Option as null.
_OPTIONAL_KEYS = ("launch_mit_vector", "current_mit_vector")


def report_from_trustee_json(obj: object) -> AttestationReport:
    """Rebuild the binary report from its serde JSON form, exactly.

    The bytes are assembled, decoded with every check `AttestationReport.decode` makes, and
    converted back: the result must give the same JSON, so a field the binary report cannot
    hold (an FMC value on Milan, CPUID on a v2 report, a byte over 255) is refused rather than
    silently dropped.

    Raises:
        FormatError: a missing, unknown or mistyped field (named by its JSON path), or a
            report that does not decode.
    """
    fields = _mapping(obj, "attestation_report")
    expected = set(_TRUSTEE_KEYS)
    unknown = sorted(set(fields) - expected)
    if unknown:
        raise FormatError(f"attestation_report: unknown field {unknown[0]!r}")
    missing = sorted(expected - set(fields) - set(_OPTIONAL_KEYS))
    if missing:
        raise FormatError(f"attestation_report: missing field {missing[0]!r}")
    given = {key: fields.get(key) for key in expected}
    out = bytearray(REPORT_SIZE)

    def put_int(key: str, offset: int, width: int, *, nullable: bool = False) -> None:
        value = _integer(given[key], f"attestation_report.{key}", width, nullable=nullable)
        if value is not None:
            out[offset : offset + width] = value.to_bytes(width, "little")

    def put_bytes(key: str, offset: int, size: int) -> None:
        out[offset : offset + size] = _byte_list(given[key], f"attestation_report.{key}", size)

    def put_tcb(key: str, offset: int) -> None:
        parts = _mapping(given[key], f"attestation_report.{key}")
        names = ("fmc", "bootloader", "tee", "snp", "microcode")
        extra = sorted(set(parts) - set(names))
        if extra:
            raise FormatError(f"attestation_report.{key}: unknown field {extra[0]!r}")
        values = {
            name: _integer(parts.get(name), f"attestation_report.{key}.{name}", 1, nullable=True)
            for name in names
        }
        for name in names[1:]:
            if values[name] is None:
                raise FormatError(f"attestation_report.{key}.{name}: missing")
        fmc = values["fmc"]
        if turin and fmc is None:
            raise FormatError(
                f"attestation_report.{key}.fmc: a Turin-layout report needs an FMC value"
            )
        if not turin and fmc is not None:
            raise FormatError(
                f"attestation_report.{key}.fmc: only Turin-layout TCB values have an FMC "
                "component (this report is Milan/Genoa layout: null)"
            )
        bl, tee, snp, ucode = (values[name] or 0 for name in names[1:])
        if fmc is None:
            raw = bytes([bl, tee, 0, 0, 0, 0, snp, ucode])
        else:
            raw = bytes([fmc, bl, tee, snp, 0, 0, 0, ucode])
        out[offset : offset + 8] = raw

    def put_version(key: str, offset: int) -> None:
        parts = _mapping(given[key], f"attestation_report.{key}")
        names = ("build", "minor", "major")  # stored in this order
        extra = sorted(set(parts) - set(names))
        if extra:
            raise FormatError(f"attestation_report.{key}: unknown field {extra[0]!r}")
        for index, name in enumerate(names):
            value = _integer(parts.get(name), f"attestation_report.{key}.{name}", 1)
            out[offset + index] = value or 0

    put_int("version", 0x00, 4)
    put_int("guest_svn", 0x04, 4)
    put_int("policy", 0x08, 8)
    put_bytes("family_id", 0x10, 16)
    put_bytes("image_id", 0x20, 16)
    put_int("vmpl", 0x30, 4)
    put_int("sig_algo", 0x34, 4)
    put_int("plat_info", 0x40, 8)
    put_int("key_info", 0x48, 4)
    put_bytes("report_data", 0x50, 64)
    put_bytes("measurement", 0x90, 48)
    put_bytes("host_data", 0xC0, 32)
    put_bytes("id_key_digest", 0xE0, 48)
    put_bytes("author_key_digest", 0x110, 48)
    put_bytes("report_id", 0x140, 32)
    put_bytes("report_id_ma", 0x160, 32)
    put_int("cpuid_fam_id", 0x188, 1, nullable=True)
    put_int("cpuid_mod_id", 0x189, 1, nullable=True)
    put_int("cpuid_step", 0x18A, 1, nullable=True)
    put_bytes("chip_id", 0x1A0, 64)
    put_version("current", 0x1E8)
    put_version("committed", 0x1EC)
    put_int("launch_mit_vector", 0x1F8, 8, nullable=True)
    put_int("current_mit_vector", 0x200, 8, nullable=True)

    # What the version leaves out must be null, as the sev crate writes it; the TCB layout
    # follows the product (AttestationReport.decode applies the same rule).
    version = int.from_bytes(out[0:4], "little")
    for key, since in (
        ("cpuid_fam_id", 3),
        ("cpuid_mod_id", 3),
        ("cpuid_step", 3),
        ("launch_mit_vector", 5),
        ("current_mit_vector", 5),
    ):
        if 2 <= version < since and given[key] is not None:
            raise FormatError(
                f"attestation_report.{key}: a version {version} report has no such field "
                f"(it must be null; it exists from version {since} on)"
            )
    chip_id = bytes(out[0x1A0:0x1E0])
    v2_turin = any(chip_id[:8]) and not any(chip_id[8:])  # a Turin chip ID has 8 bytes
    turin = out[0x188] >= 0x1A if version >= 3 else v2_turin
    put_tcb("current_tcb", 0x38)
    put_tcb("reported_tcb", 0x180)
    put_tcb("committed_tcb", 0x1E0)
    put_tcb("launch_tcb", 0x1F0)
    signature = _mapping(given["signature"], "attestation_report.signature")
    extra = sorted(set(signature) - {"r", "s"})
    if extra:
        raise FormatError(f"attestation_report.signature: unknown field {extra[0]!r}")
    out[0x2A0:0x2E8] = _byte_list(signature.get("r"), "attestation_report.signature.r", 72)
    out[0x2E8:0x330] = _byte_list(signature.get("s"), "attestation_report.signature.s", 72)

    report = AttestationReport.decode(bytes(out))
    again = report_to_trustee_json(report)
    for key in expected:
        if key in _OPTIONAL_KEYS and key not in fields:
            continue
        if again[key] != given[key]:
            raise FormatError(
                f"attestation_report.{key}: {_short(given[key])} cannot be stored in a "
                f"version {report.version} report (it reads back as {_short(again[key])})"
            )
    return report


def parse_trustee_evidence(obj: object) -> tuple[AttestationReport, list[x509.Certificate]]:
    """The report and certificates of Trustee's SNP evidence (`primary_evidence`).

    `cert_chain` entries of other types (CRL, Empty, {"OTHER": guid}) are skipped.

    Raises:
        FormatError: not this shape, a malformed report or certificate, or a `cert_chain`
            of more than 32 entries.
    """
    fields = _mapping(obj, "evidence")
    unknown = sorted(set(fields) - {"attestation_report", "cert_chain"})
    if unknown:
        raise FormatError(f"evidence: unknown field {unknown[0]!r}")
    if "attestation_report" not in fields:
        raise FormatError("evidence: missing field 'attestation_report'")
    report = report_from_trustee_json(fields["attestation_report"])
    chain = fields.get("cert_chain")
    if chain is None:
        return report, []
    if not isinstance(chain, list):
        raise FormatError("evidence.cert_chain: expected a list or null")
    if len(chain) > _MAX_ENTRIES:  # as for a GHCB table: verification tries every chain
        raise FormatError(f"evidence.cert_chain: more than {_MAX_ENTRIES} entries")
    certs = []
    for index, item in enumerate(chain):
        where = f"evidence.cert_chain[{index}]"
        entry = _mapping(item, where)
        kind = entry.get("cert_type")
        if not isinstance(kind, str) or kind not in _TRUSTEE_TYPES:
            continue
        blob = _byte_list(entry.get("data"), f"{where}.data", None)
        try:
            found = load_certificates(_trim_der(blob))
        except FormatError as exc:
            raise FormatError(f"{where}: the {kind} entry holds no certificate: {exc}") from None
        certs.extend(found)
    return report, certs


def trustee_evidence(
    report: AttestationReport, certificates: Sequence[x509.Certificate] | None = None
) -> dict[str, Any]:
    """Trustee's SNP evidence for `report`, with `certificates` as `cert_chain` (None: null).

    Raises:
        ValueError: a certificate that is not an AMD VCEK, VLEK, ASK, ASVK or ARK.
    """
    chain = None
    if certificates is not None:
        chain = []
        for cert in certificates:
            role = role_of(cert)
            if role is None:
                raise ValueError(f"not an AMD certificate: {cert.subject.rfc4514_string()}")
            kind = CertRole.ASK if role[0] is CertRole.ASVK else role[0]
            der = cert.public_bytes(serialization.Encoding.DER)
            chain.append({"cert_type": kind.value, "data": list(der)})
    return {"attestation_report": report_to_trustee_json(report), "cert_chain": chain}


# ---------------------------------------------------------------- COCONUT aproxy


def parse_aproxy_evidence(obj: object) -> tuple[AttestationReport, list[x509.Certificate]]:
    """The report and certificates of COCONUT aproxy's SNP evidence.

    Raises:
        FormatError: not this shape, bad base64, a malformed report or certificate table.
    """
    fields = _mapping(obj, "evidence")
    unknown = sorted(set(fields) - {"snp-report", "certs-buf"})
    if unknown:
        raise FormatError(f"evidence: unknown field {unknown[0]!r}")
    report_bytes = _base64(fields.get("snp-report"), "evidence.snp-report")
    if len(report_bytes) != REPORT_SIZE:
        raise FormatError(
            f"evidence.snp-report: an SNP report is {REPORT_SIZE} bytes, not {len(report_bytes)}"
        )
    report = AttestationReport.decode(report_bytes)
    table = fields.get("certs-buf")
    if table is None:
        return report, []
    return report, parse_cert_table(_base64(table, "evidence.certs-buf"))


def aproxy_evidence(
    report: bytes | AttestationReport, cert_table: bytes | None = None
) -> dict[str, Any]:
    """COCONUT aproxy's SNP evidence for a report and an optional GHCB certificate table."""
    raw = report.encode() if isinstance(report, AttestationReport) else bytes(report)
    return {
        "snp-report": base64.b64encode(raw).decode("ascii"),
        "certs-buf": None if cert_table is None else base64.b64encode(cert_table).decode("ascii"),
    }


# ---------------------------------------------------------------- any of them


@dataclass(frozen=True, slots=True)
class Evidence:
    """A report, the certificates that came with it, and which shape they came in."""

    report: AttestationReport
    certificates: list[x509.Certificate]
    form: str  # "raw", "hex", "hcl", "trustee" or "aproxy"


def load_evidence(data: bytes) -> Evidence:
    """Read evidence in any shape this module knows, telling them apart by their content.

    A JSON object with `attestation_report` is Trustee's shape, one with `snp-report`
    aproxy's; anything else goes to `report.load_report` (raw, hex or Azure HCL).

    Raises:
        FormatError: none of these shapes, or malformed contents.
    """
    data = bytes(data)
    if data.lstrip()[:1] == b"{":
        try:
            obj = strict_json(data, "the evidence")
        except FormatError as exc:
            raise FormatError(f"the evidence looks like JSON but is not: {exc}") from None
        if isinstance(obj, dict) and "attestation_report" in obj:
            return Evidence(*parse_trustee_evidence(obj), "trustee")
        if isinstance(obj, dict) and "snp-report" in obj:
            return Evidence(*parse_aproxy_evidence(obj), "aproxy")
        raise FormatError(
            "JSON evidence needs 'attestation_report' (Trustee) or 'snp-report' (aproxy)"
        )
    report = load_report(data)
    if data.startswith(b"HCLA"):
        form = "hcl"
    elif len(data) == REPORT_SIZE:
        form = "raw"
    else:
        form = "hex"
    return Evidence(report, [], form)


# ---------------------------------------------------------------- JSON helpers


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FormatError(f"{where}: expected an object, not {_kind(value)}")
    return value


def _integer(value: object, where: str, width: int, *, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{where}: expected an integer, not {_kind(value)}")
    if not 0 <= value < 1 << (8 * width):
        raise FormatError(f"{where}: {value} does not fit in {width} byte(s)")
    return value


def _byte_list(value: object, where: str, size: int | None) -> bytes:
    if not isinstance(value, list):
        raise FormatError(f"{where}: expected a list of bytes, not {_kind(value)}")
    if size is not None and len(value) != size:
        raise FormatError(f"{where}: expected {size} bytes, not {len(value)}")
    # The fast path: bytes() takes only ints 0-255 (and bools, which are refused below); the
    # item-by-item check runs only to name the first bad element.
    if all(type(item) is int for item in value):
        try:
            return bytes(value)
        except ValueError:
            pass
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= 255:
            raise FormatError(f"{where}: {_short(item)} is not a byte (0-255)")
    return bytes(value)


def _base64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{where}: expected a base64 string, not {_kind(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{where}: not standard base64 ({exc})") from None


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
