"""Evidence shapes: GHCB certificate tables, Trustee's and aproxy's JSON, configfs-tsm.

Round trips use the shared real vectors (every report version and product they hold) and the
simulator (Turin's FMC layout, v5, VLEK chains). The configfs-tsm tests stand a small fake
kernel in for the real one: it keeps configfs's rules (files made by mkdir, `generation`
counting writes, the report made on read) on a directory in tmp_path.
"""

from __future__ import annotations

import base64
import copy
import errno
import itertools
import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from cvmstore.attest.certs import CertRole, load_certificates, role_of
from cvmstore.attest.configfs import ConfigfsTsm
from cvmstore.attest.evidence import (
    CERT_TABLE_GUIDS,
    Evidence,
    aproxy_evidence,
    build_cert_table,
    cert_table_for,
    load_evidence,
    parse_aproxy_evidence,
    parse_cert_table,
    parse_trustee_evidence,
    read_cert_table,
    report_from_trustee_json,
    report_to_trustee_json,
    trustee_evidence,
)
from cvmstore.attest.report import AttestationReport, SigningKey, load_report
from cvmstore.attest.simulator import Simulator
from cvmstore.attest.tcb import Product
from cvmstore.attest.verify import verify_report
from cvmstore.errors import AttestationError, FormatError, UnsupportedVersionError

#: Every report among the shared vectors: (path under snp/, version, product or None).
REPORTS = [
    ("trustee/milan-v2-report.bin", 2),
    ("trustee/milan-v3-vlek-report.bin", 3),
    ("trustee/azure-hcl-report.bin", 2),
    ("virtee/milan-report.hex", 2),
    ("py-snp-utils/genoa-v3-report-nocert.bin", 3),
    ("py-snp-utils/milan-v5-report-nocert.bin", 5),
]
CRL_GUID = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
#: A genuine v5 report (every field present) for the hypothesis tests to change.
_TEMPLATE = Simulator(Product.MILAN, seed="template", key_size=2048).report(b"t", version=5)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def milan() -> Simulator:
    return Simulator(Product.MILAN, seed="evidence tests", key_size=2048, vlek=True)


@pytest.fixture(scope="module")
def turin() -> Simulator:
    return Simulator(Product.TURIN, seed="evidence tests", key_size=2048)


@pytest.fixture
def snp(vectors_dir: Path) -> Path:
    return vectors_dir / "snp"


@pytest.fixture
def milan_chain(snp: Path) -> list[x509.Certificate]:
    """The Trustee Milan v2 VCEK, then AMD's Milan ASK, ARK and ASVK."""
    vcek = load_certificates((snp / "trustee/milan-v2-vcek.der").read_bytes())
    return vcek + load_certificates((snp / "amd-roots/milan_ask_ark_asvk.pem").read_bytes())


# ---------------------------------------------------------------- certificate tables


def test_table_layout_and_guid_byte_order() -> None:
    table = build_cert_table([(CertRole.VCEK, b"abc"), (CertRole.ARK, b"de")])
    assert len(table) == 3 * 24 + 5
    # RFC 4122 byte order, as AMD's sev-guest tools, virtee/sev and go-sev-guest write it.
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert struct.unpack_from("<II", table, 16) == (72, 3)
    assert table[24:40] == bytes.fromhex("c0b406a4a803495297433fb6014cd0ae")
    assert struct.unpack_from("<II", table, 40) == (75, 2)
    assert table[48:72] == bytes(24)
    assert table[72:] == b"abcde"
    entries = read_cert_table(table)
    assert [(e.role, e.offset, e.data) for e in entries] == [
        (CertRole.VCEK, 72, b"abc"),
        (CertRole.ARK, 75, b"de"),
    ]


def test_known_guids_are_the_ghcb_specs() -> None:
    assert {role: str(guid) for role, guid in CERT_TABLE_GUIDS.items()} == {
        CertRole.VCEK: "63da758d-e664-4564-adc5-f4b93be8accd",
        CertRole.VLEK: "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
        CertRole.ASK: "4ab7b379-bbac-4fe4-a02f-05aef327c782",
        CertRole.ARK: "c0b406a4-a803-4952-9743-3fb6014cd0ae",
    }


def test_real_chain_round_trips_through_a_table(milan_chain: list[x509.Certificate]) -> None:
    vcek, ask, ark, _asvk = milan_chain
    table = cert_table_for([vcek, ask, ark])
    assert [e.role for e in read_cert_table(table)] == [CertRole.VCEK, CertRole.ASK, CertRole.ARK]
    assert [der(c) for c in parse_cert_table(table)] == [der(vcek), der(ask), der(ark)]


def test_vlek_chain_travels_with_the_asvk_under_the_ask_guid(milan: Simulator) -> None:
    assert milan.vlek is not None
    assert milan.asvk is not None
    table = cert_table_for([milan.vlek, milan.asvk, milan.ark])
    assert [e.role for e in read_cert_table(table)] == [CertRole.VLEK, CertRole.ASK, CertRole.ARK]
    certs = parse_cert_table(table)
    assert [role_of(c) for c in certs] == [
        (CertRole.VLEK, None),
        (CertRole.ASVK, Product.MILAN),
        (CertRole.ARK, Product.MILAN),
    ]
    report = milan.report(b"vlek", signing_key=SigningKey.VLEK)
    assert verify_report(report, certs, trust=milan.trust()).signing_key is SigningKey.VLEK


def test_page_aligned_table_with_unknown_guids(milan_chain: list[x509.Certificate]) -> None:
    vcek = milan_chain[0]
    table = build_cert_table(
        [(CRL_GUID, b"not a certificate"), (CertRole.VCEK, der(vcek)), (uuid.uuid4(), b"x")],
        page_align=True,
    )
    assert len(table) % 4096 == 0
    assert [e.role for e in read_cert_table(table)] == [None, CertRole.VCEK, None]
    assert [der(c) for c in parse_cert_table(table)] == [der(vcek)]


def test_empty_tables() -> None:
    assert parse_cert_table(b"") == []
    assert parse_cert_table(bytes(24)) == []
    assert parse_cert_table(bytes(4096)) == []
    assert build_cert_table([]) == bytes(24)


def test_der_with_zero_padding_and_pem_are_accepted(milan_chain: list[x509.Certificate]) -> None:
    vcek, ask, _, _ = milan_chain
    pem = ask.public_bytes(serialization.Encoding.PEM)
    table = build_cert_table([(CertRole.VCEK, der(vcek) + bytes(100)), (CertRole.ASK, pem)])
    assert [der(c) for c in parse_cert_table(table)] == [der(vcek), der(ask)]


def test_mixed_endian_guids_are_not_recognised(milan_chain: list[x509.Certificate]) -> None:
    """An EFI-style (bytes_le) VCEK GUID is some other GUID: skipped, not trusted as a VCEK."""
    mixed = uuid.UUID(bytes_le=CERT_TABLE_GUIDS[CertRole.VCEK].bytes)
    table = build_cert_table([(mixed, der(milan_chain[0]))])
    assert read_cert_table(table)[0].role is None
    assert parse_cert_table(table) == []


def _table_with(offset: int, length: int, *, guid: uuid.UUID | None = None) -> bytes:
    entry = struct.pack("<16sII", (guid or CERT_TABLE_GUIDS[CertRole.VCEK]).bytes, offset, length)
    return entry + bytes(24) + b"\x30\x03\x02\x01\x00" + bytes(11)  # 64 bytes


@pytest.mark.parametrize(
    ("table", "offset", "words"),
    [
        pytest.param(struct.pack("<16sII", b"\1" * 16, 48, 0), 24, "all-zero entry", id="no-end"),
        pytest.param(
            struct.pack("<16sII", b"\1" * 16, 48, 0) + bytes(10), 24, "all-zero", id="cut-entry"
        ),
        pytest.param(_table_with(24, 5), 0, "inside the table", id="data-in-entries"),
        pytest.param(_table_with(0, 5), 0, "inside the table", id="data-at-zero"),
        pytest.param(_table_with(48, 17), 0, "past the end", id="too-long"),
        pytest.param(_table_with(65, 0), 0, "past the end", id="offset-past-end"),
        pytest.param(_table_with(0xFFFFFFFF, 0xFFFFFFFF), 0, "past the end", id="huge"),
        pytest.param(_table_with(48, 5), 48, "no certificate", id="not-a-certificate"),
        pytest.param(_table_with(48, 0), 48, "no certificate", id="empty-certificate"),
    ],
)
def test_malformed_tables_are_refused_with_the_offset(
    table: bytes, offset: int, words: str
) -> None:
    with pytest.raises(FormatError, match=words) as caught:
        parse_cert_table(table)
    assert caught.value.offset == offset


def test_unknown_guid_entries_are_still_bounds_checked() -> None:
    with pytest.raises(FormatError, match="past the end"):
        parse_cert_table(_table_with(48, 100, guid=CRL_GUID))


def test_non_zero_bytes_after_a_der_certificate_are_refused(
    milan_chain: list[x509.Certificate],
) -> None:
    table = build_cert_table([(CertRole.VCEK, der(milan_chain[0]) + b"\0\0junk")])
    with pytest.raises(FormatError, match="VCEK entry holds no certificate"):
        parse_cert_table(table)


def _raw_table(spans: list[tuple[int, int]], body: bytes) -> bytes:
    """A table whose entries (unknown GUIDs) point at (offset, length) into `body`, which
    follows the entry list; offsets count from the body's start."""
    header = (len(spans) + 1) * 24
    entries = b"".join(
        struct.pack("<16sII", uuid.UUID(int=index + 1).bytes, header + offset, length)
        for index, (offset, length) in enumerate(spans)
    )
    return entries + bytes(24) + body


def test_at_most_32_entries() -> None:
    assert len(read_cert_table(_raw_table([(i, 1) for i in range(32)], bytes(32)))) == 32
    with pytest.raises(FormatError, match="more than 32 entries") as caught:
        read_cert_table(_raw_table([(i, 1) for i in range(33)], bytes(33)))
    assert caught.value.offset == 32 * 24  # the 33rd entry
    # what the review's table looked like: a small body named by hundreds of entries
    with pytest.raises(FormatError, match="more than 32 entries"):
        parse_cert_table(_raw_table([(0, 1 << 16)] * 400, bytes(1 << 16)))


@pytest.mark.parametrize(
    "spans",
    [
        [(0, 100), (0, 100)],  # the same body twice
        [(0, 100), (99, 10)],  # one byte shared
        [(50, 10), (0, 100)],  # one inside the other, in any order
        [(0, 10), (20, 10), (5, 1)],
    ],
)
def test_overlapping_entries_are_refused(milan: Simulator, spans: list[tuple[int, int]]) -> None:
    """k entries over one body would cost k copies of it: a small table, a large allocation."""
    with pytest.raises(FormatError, match="entries overlap"):
        read_cert_table(_raw_table(spans, bytes(200)))
    evidence = json.dumps(aproxy_evidence(milan.report(), _raw_table(spans, bytes(200)))).encode()
    with pytest.raises(FormatError, match="entries overlap"):
        load_evidence(evidence)


def test_adjacent_and_empty_entries_are_not_overlaps() -> None:
    entries = read_cert_table(_raw_table([(0, 10), (10, 10), (20, 0), (20, 5)], bytes(25)))
    assert [len(entry.data) for entry in entries] == [10, 10, 0, 5]


def test_overlapping_entries_of_a_page_aligned_real_table_are_refused(
    milan_chain: list[x509.Certificate],
) -> None:
    table = bytearray(cert_table_for(milan_chain[:3], page_align=True))
    assert len(parse_cert_table(bytes(table))) == 3
    ask_offset = struct.unpack_from("<I", table, 24 + 16)[0]
    struct.pack_into("<I", table, 24 + 16, ask_offset - 1)  # the ASK now starts in the VCEK
    with pytest.raises(FormatError, match="overlap"):
        parse_cert_table(bytes(table))


def test_cert_table_for_refuses_other_certificates(milan_chain: list[x509.Certificate]) -> None:
    assert cert_table_for(milan_chain)  # an AMD certificate is fine
    foreign = _self_signed("not AMD")
    with pytest.raises(ValueError, match="not an AMD certificate"):
        cert_table_for([foreign])


def _self_signed(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


# ---------------------------------------------------------------- Trustee's JSON


@pytest.mark.parametrize(("name", "version"), REPORTS)
def test_trustee_json_round_trips_every_vector(snp: Path, name: str, version: int) -> None:
    report = load_report((snp / name).read_bytes())
    assert report.version == version
    obj = json.loads(json.dumps(report_to_trustee_json(report)))
    again = report_from_trustee_json(obj)
    assert again.encode() == report.encode()
    assert again == report


def test_trustee_json_has_the_sev_crate_shape(snp: Path) -> None:
    v2 = report_to_trustee_json(load_report((snp / "trustee/milan-v2-report.bin").read_bytes()))
    assert list(v2)[:3] == ["version", "guest_svn", "policy"]
    assert list(v2)[-1] == "signature"
    assert v2["reported_tcb"] == {
        "fmc": None,
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }
    assert v2["policy"] == 0x3001F
    assert v2["current"] == {"major": 1, "minor": 52, "build": 4}
    assert (v2["cpuid_fam_id"], v2["launch_mit_vector"]) == (None, None)
    assert bytes(v2["measurement"]).hex().startswith("a1f3930413247bb3")
    assert len(v2["signature"]["r"]) == len(v2["signature"]["s"]) == 72
    assert v2["signature"]["r"][48:] == [0] * 24  # little-endian, as in the binary report
    v5 = report_to_trustee_json(
        load_report((snp / "py-snp-utils/milan-v5-report-nocert.bin").read_bytes())
    )
    assert isinstance(v5["cpuid_fam_id"], int)
    assert isinstance(v5["launch_mit_vector"], int)
    assert isinstance(v5["current_mit_vector"], int)


@pytest.mark.parametrize("version", [2, 3, 5])
def test_trustee_json_round_trips_turin_reports(turin: Simulator, version: int) -> None:
    report = turin.report(b"turin", version=version)
    obj = report_to_trustee_json(report)
    assert obj["reported_tcb"]["fmc"] == 1
    assert report_from_trustee_json(obj).encode() == report.encode()


def test_sev_crate_6_json_without_mitigation_vectors_is_read(snp: Path) -> None:
    """Trustee's own e2e evidence comes from a sev crate that had no mitigation vector fields."""
    report = load_report((snp / "trustee/milan-v3-vlek-report.bin").read_bytes())
    obj = report_to_trustee_json(report)
    del obj["launch_mit_vector"], obj["current_mit_vector"]
    assert report_from_trustee_json(obj).encode() == report.encode()


def _mutated(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def apply(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = obj
        for key in parents:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return apply


@pytest.mark.parametrize(
    ("mutate", "words", "error"),
    [
        (_mutated("measurement", KeyError), "missing field 'measurement'", FormatError),
        (_mutated("surprise", 1), "unknown field 'surprise'", FormatError),
        (_mutated("measurement", [0] * 47), "measurement: expected 48 bytes", FormatError),
        (_mutated("report_data", [256] + [0] * 63), "256 is not a byte", FormatError),
        (_mutated("chip_id", "00" * 64), "chip_id: expected a list", FormatError),
        (_mutated("vmpl", True), "vmpl: expected an integer, not bool", FormatError),
        (_mutated("vmpl", "0"), "vmpl: expected an integer, not str", FormatError),
        (_mutated("guest_svn", -1), "does not fit in 4 byte", FormatError),
        (_mutated("policy", 1 << 64), "does not fit in 8 byte", FormatError),
        (_mutated("policy", 0x1F), "bit 17 must be 1", FormatError),
        (_mutated("version", 9), "version 9 is not supported", UnsupportedVersionError),
        (_mutated("reported_tcb.fmc", 1), "reported_tcb", FormatError),
        (_mutated("reported_tcb.spl4", 1), "reported_tcb: unknown field 'spl4'", FormatError),
        (_mutated("reported_tcb.snp", KeyError), "reported_tcb.snp: missing", FormatError),
        (_mutated("current.major", KeyError), "current.major: expected an integer", FormatError),
        (_mutated("cpuid_fam_id", 0x19), "cpuid_fam_id", FormatError),
        (_mutated("launch_mit_vector", 5), "launch_mit_vector", FormatError),
        (_mutated("signature.r", [1] * 72), "signature scalar does not fit", FormatError),
        (_mutated("signature.t", []), "signature: unknown field 't'", FormatError),
        (_mutated("signature", None), "signature: expected an object, not null", FormatError),
    ],
)
def test_malformed_trustee_reports_are_refused(
    snp: Path,
    mutate: Callable[[dict[str, Any]], None],
    words: str,
    error: type[FormatError],
) -> None:
    report = load_report((snp / "trustee/milan-v2-report.bin").read_bytes())
    obj = report_to_trustee_json(report)
    mutate(obj)
    with pytest.raises(error, match=words) as caught:
        report_from_trustee_json(obj)
    assert type(caught.value) is error


def test_cpuid_missing_from_a_v3_report_is_refused(snp: Path) -> None:
    report = load_report((snp / "trustee/milan-v3-vlek-report.bin").read_bytes())
    obj = report_to_trustee_json(report)
    obj["cpuid_fam_id"] = None  # would be stored as 0: reads back otherwise
    with pytest.raises(FormatError, match="cpuid_fam_id: null cannot be stored"):
        report_from_trustee_json(obj)


def test_fmc_on_a_milan_report_is_refused_not_dropped(snp: Path) -> None:
    report = load_report((snp / "trustee/milan-v2-report.bin").read_bytes())
    obj = report_to_trustee_json(report)
    obj["launch_tcb"]["fmc"] = 0  # puts the TCB into the Turin layout: reads back otherwise
    with pytest.raises(FormatError, match="launch_tcb"):
        report_from_trustee_json(obj)


def test_trustee_evidence_with_a_cert_chain_verifies(
    snp: Path, milan_chain: list[x509.Certificate]
) -> None:
    report = load_report((snp / "trustee/milan-v2-report.bin").read_bytes())
    vcek, ask, ark, _ = milan_chain
    obj = json.loads(json.dumps(trustee_evidence(report, [vcek, ask, ark])))
    assert [entry["cert_type"] for entry in obj["cert_chain"]] == ["VCEK", "ASK", "ARK"]
    obj["cert_chain"].insert(0, {"cert_type": "CRL", "data": [1, 2, 3]})
    obj["cert_chain"].append({"cert_type": {"OTHER": str(uuid.uuid4())}, "data": [4]})
    parsed, certs = parse_trustee_evidence(obj)
    assert parsed.encode() == report.encode()
    assert [der(c) for c in certs] == [der(vcek), der(ask), der(ark)]
    verified = verify_report(parsed, certs)
    assert verified.product is Product.MILAN


def test_a_trustee_cert_chain_has_at_most_32_entries(milan: Simulator) -> None:
    report = milan.report()
    crl = {"cert_type": "CRL", "data": [1]}
    chain = [*trustee_evidence(report, milan.chain())["cert_chain"]]
    obj = {**trustee_evidence(report), "cert_chain": chain + [crl] * (32 - len(chain))}
    assert len(parse_trustee_evidence(obj)[1]) == len(chain)
    obj["cert_chain"].append(crl)
    with pytest.raises(FormatError, match="cert_chain: more than 32 entries"):
        load_evidence(json.dumps(obj).encode())


def test_trustee_evidence_cert_types(milan: Simulator) -> None:
    assert milan.vlek is not None
    assert milan.asvk is not None
    report = milan.report(signing_key=SigningKey.VLEK)
    obj = trustee_evidence(report, [milan.vlek, milan.asvk, milan.ark])
    assert [entry["cert_type"] for entry in obj["cert_chain"]] == ["VLEK", "ASK", "ARK"]
    assert trustee_evidence(report)["cert_chain"] is None
    assert parse_trustee_evidence(trustee_evidence(report)) == (report, [])
    with pytest.raises(ValueError, match="not an AMD certificate"):
        trustee_evidence(report, [_self_signed("nope")])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cert_chain": {"VCEK": []}}, "cert_chain: expected a list or null"),
        ({"cert_chain": [{"cert_type": "VCEK", "data": [1, 2]}]}, r"cert_chain\[0\]: the VCEK"),
        ({"cert_chain": [{"cert_type": "ASK", "data": "MII="}]}, r"cert_chain\[0\].data"),
        ({"cert_chain": ["VCEK"]}, r"cert_chain\[0\]: expected an object"),
        ({"extra": 1}, "evidence: unknown field 'extra'"),
        ({"attestation_report": None}, "attestation_report: expected an object"),
    ],
)
def test_malformed_trustee_evidence_is_refused(
    snp: Path, change: dict[str, Any], words: str
) -> None:
    report = load_report((snp / "trustee/milan-v2-report.bin").read_bytes())
    obj = {**trustee_evidence(report), **change}
    with pytest.raises(FormatError, match=words):
        parse_trustee_evidence(obj)
    with pytest.raises(FormatError, match="missing field 'attestation_report'"):
        parse_trustee_evidence({"cert_chain": None})


# ---------------------------------------------------------------- COCONUT aproxy


def test_aproxy_evidence_round_trips(snp: Path, milan_chain: list[x509.Certificate]) -> None:
    raw = (snp / "trustee/milan-v2-report.bin").read_bytes()
    vcek, ask, ark, _ = milan_chain
    obj = json.loads(json.dumps(aproxy_evidence(raw, cert_table_for([vcek, ask, ark]))))
    assert base64.b64decode(obj["snp-report"]) == raw
    report, certs = parse_aproxy_evidence(obj)
    assert report.encode() == raw
    assert [der(c) for c in certs] == [der(vcek), der(ask), der(ark)]
    assert verify_report(report, certs).product is Product.MILAN
    assert parse_aproxy_evidence(aproxy_evidence(report)) == (report, [])
    assert parse_aproxy_evidence({"snp-report": obj["snp-report"]})[1] == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"snp-report": "not base64!"}, "snp-report: not standard base64"),
        ({"snp-report": base64.b64encode(bytes(100)).decode()}, "1184 bytes, not 100"),
        ({"snp-report": None}, "snp-report: expected a base64 string, not null"),
        ({"certs-buf": "AAAA-_"}, "certs-buf: not standard base64"),
        ({"certs-buf": base64.b64encode(b"\1" * 24).decode()}, "all-zero entry"),
        ({"snp": 1}, "unknown field 'snp'"),
    ],
)
def test_malformed_aproxy_evidence_is_refused(
    snp: Path, change: dict[str, Any], words: str
) -> None:
    raw = (snp / "trustee/milan-v2-report.bin").read_bytes()
    obj = {**aproxy_evidence(raw), **change}
    with pytest.raises(FormatError, match=words):
        parse_aproxy_evidence(obj)


# ---------------------------------------------------------------- any shape


def test_load_evidence_tells_the_shapes_apart(
    snp: Path, milan_chain: list[x509.Certificate]
) -> None:
    raw = (snp / "trustee/milan-v2-report.bin").read_bytes()
    report = load_report(raw)
    table = cert_table_for(milan_chain[:3])
    shapes = {
        "raw": raw,
        "hex": (snp / "virtee/milan-report.hex").read_bytes(),
        "hcl": (snp / "trustee/azure-hcl-report.bin").read_bytes(),
        "trustee": b"\n  " + json.dumps(trustee_evidence(report, milan_chain[:1])).encode(),
        "aproxy": json.dumps(aproxy_evidence(raw, table)).encode(),
    }
    for form, data in shapes.items():
        evidence = load_evidence(data)
        assert evidence.form == form
        if form in ("raw", "trustee", "aproxy"):
            assert evidence.report.encode() == raw
    assert len(load_evidence(shapes["trustee"]).certificates) == 1
    assert len(load_evidence(shapes["aproxy"]).certificates) == 3
    assert load_evidence(raw).certificates == []


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"report": 1}', "needs 'attestation_report'"),
        (b"{not json", "looks like JSON but is not"),
        (b'{"snp-report": 1', "looks like JSON"),
        (b"\xff" * 100, "1184 bytes, not 100"),
        (b"", "1184 bytes, not 0"),
    ],
)
def test_load_evidence_refuses_other_data(data: bytes, words: str) -> None:
    with pytest.raises(FormatError, match=words):
        load_evidence(data)


def _two_keys(obj: dict[str, Any], key: str, first: object, path: str = "") -> bytes:
    """`obj` as JSON with `key` (inside the object at `path`) given twice, `first` first."""
    text = json.dumps(obj)
    target = f'"{key}": '
    where = text.index(target, text.index(f'"{path}": ') if path else 0)
    return (text[:where] + target + json.dumps(first) + ", " + text[where:]).encode()


def test_duplicate_json_keys_are_refused(milan: Simulator) -> None:
    """Two readers of one document must not see two reports: the first or the last key."""
    one = milan.report(b"first", measurement=b"\1" * 48)
    other = milan.report(b"second", measurement=b"\2" * 48)
    aproxy = aproxy_evidence(other)
    trustee = trustee_evidence(other)
    cases = {
        "aproxy snp-report": _two_keys(aproxy, "snp-report", aproxy_evidence(one)["snp-report"]),
        "aproxy certs-buf": _two_keys(aproxy, "certs-buf", None),
        "trustee attestation_report": _two_keys(
            trustee, "attestation_report", report_to_trustee_json(one)
        ),
        "trustee cert_chain": _two_keys(trustee, "cert_chain", []),
        "trustee measurement": _two_keys(
            trustee, "measurement", list(one.measurement), "attestation_report"
        ),
        "trustee signature.r": _two_keys(trustee, "r", [0] * 72, "signature"),
    }
    for name, data in cases.items():
        with pytest.raises(FormatError, match="appears twice") as caught:
            load_evidence(data)
        assert type(caught.value) is FormatError, name
    assert load_evidence(json.dumps(aproxy).encode()).report == other  # once is fine


@pytest.mark.parametrize("key", ["attestation_report", "snp-report", "certs-buf"])
def test_deeply_nested_json_is_a_format_error(key: str) -> None:
    depth = 200_000  # far past Python's recursion limit
    data = b'{"%s": ' % key.encode() + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(FormatError):
        load_evidence(data)
    with pytest.raises(FormatError):
        load_evidence(b"{" + b'"a": {' * depth + b"}" * (depth + 1))


# Certificates whose extensions cryptography parses only on access: a general name type it
# does not support, a TLSFeature it cannot read. Each must be a FormatError, not whatever
# cryptography raises (UnsupportedGeneralNameType, TypeError, KeyError).
ODD_EXTENSIONS = {
    "SAN x400Address": ("2.5.29.17", "3004a3020500"),
    "SAN ediPartyName": ("2.5.29.17", "3004a5020500"),
    "NameConstraints x400Address": ("2.5.29.30", "3008a0063004a3020500"),
    "IssuerAltName ediPartyName": ("2.5.29.18", "3004a5020500"),
    "TLSFeature unknown value": ("1.3.6.1.5.5.7.1.24", "3003020163"),  # KeyError
    "TLSFeature empty": ("1.3.6.1.5.5.7.1.24", "3000"),  # TypeError
    "TLSFeature not an integer": ("1.3.6.1.5.5.7.1.24", "30020500"),  # ValueError
}


def _cert_with(oid: str, value: bytes) -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")])
    now = datetime.now(UTC)
    extension = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
    return der(
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(extension, critical=False)
        .sign(key, hashes.SHA384())
    )


@pytest.mark.parametrize(("oid", "value"), ODD_EXTENSIONS.values(), ids=ODD_EXTENSIONS.keys())
def test_certificates_with_unreadable_extensions_are_format_errors(
    milan: Simulator, oid: str, value: str
) -> None:
    cert = _cert_with(oid, bytes.fromhex(value))
    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(cert) + b"-----END CERTIFICATE-----\n"
    )
    for data in (cert, pem):
        with pytest.raises(FormatError, match="not a certificate"):
            load_certificates(data)
    report = milan.report()
    aproxy = aproxy_evidence(report, build_cert_table([(CertRole.VCEK, cert)]))
    trustee = {
        **trustee_evidence(report),
        "cert_chain": [{"cert_type": "VCEK", "data": list(cert)}],
    }
    for evidence in (aproxy, trustee):
        with pytest.raises(FormatError, match="VCEK entry holds no certificate"):
            load_evidence(json.dumps(evidence).encode())


# ---------------------------------------------------------------- hostile evidence
#
# The hypothesis twins of fuzz/snp_evidence.py: whatever the bytes, only FormatError.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
TABLE_GUIDS = st.sampled_from([*CERT_TABLE_GUIDS.values(), CRL_GUID]) | st.uuids()


def refused_or_read(call: Callable[[Any], object], data: Any) -> object:
    try:
        return call(data)
    except FormatError:
        return None


@given(st.binary(max_size=4096))
def test_arbitrary_bytes_as_evidence_or_a_table(data: bytes) -> None:
    refused_or_read(load_evidence, data)
    refused_or_read(parse_cert_table, data)
    refused_or_read(parse_cert_table, build_cert_table([(CertRole.VCEK, data)]))
    refused_or_read(load_evidence, b'{"snp-report": ' + data + b"}")


@given(
    entries=st.lists(
        st.tuples(TABLE_GUIDS, st.integers(0, 2000), st.integers(0, 600)), max_size=40
    ),
    body=st.binary(max_size=1024),
)
def test_arbitrary_tables(entries: list[tuple[uuid.UUID, int, int]], body: bytes) -> None:
    table = b"".join(struct.pack("<16sII", g.bytes, o, n) for g, o, n in entries)
    read = refused_or_read(read_cert_table, table + bytes(24) + body)
    if read is not None:
        assert isinstance(read, list)
        assert len(read) <= 32
        spans = sorted((entry.offset, entry.offset + len(entry.data)) for entry in read)
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    refused_or_read(parse_cert_table, table + bytes(24) + body)


@given(field=st.sampled_from([*report_to_trustee_json(_TEMPLATE), "cert_chain"]), value=JSON_VALUES)
def test_a_trustee_report_with_any_value_in_one_field(field: str, value: object) -> None:
    obj = trustee_evidence(_TEMPLATE)
    if field == "cert_chain":
        obj["cert_chain"] = value
    else:
        obj["attestation_report"][field] = value
    found = refused_or_read(load_evidence, json.dumps(obj).encode())
    if found is not None:  # accepted: then it is exactly what the JSON says
        assert isinstance(found, Evidence)
        again = report_to_trustee_json(found.report)
        assert all(again[key] == obj["attestation_report"][key] for key in again)


# ---------------------------------------------------------------- configfs-tsm


class FakeKernel(ConfigfsTsm):
    """configfs-tsm's behaviour on a plain directory: what the kernel does on each call.

    Every write to an attribute bumps `generation`; reading `outblob` makes the report from
    `inblob` and `privlevel` as they are at that moment (`privlevel` empty: the kernel's
    default, `floor`). `on_write` and `on_read` let another writer act in between.
    """

    def __init__(
        self,
        root: Path,
        simulator: Simulator,
        *,
        provider: str = "sev_guest",
        table: bytes = b"",
        floor: int = 0,
    ) -> None:
        super().__init__(root)
        self.simulator = simulator
        self.provider = provider
        self.table = table
        self.floor = floor
        self.entries: list[Path] = []
        self.written: dict[str, bytes] = {}
        self.on_read: Callable[[Path], None] | None = None
        self.on_write: Callable[[Path], None] | None = None
        self.ignore_inblob = False
        self.report_vmpl: int | None = None  # a provider that answers at another VMPL
        self.fail_read: OSError | None = None

    def _mkdir(self, path: Path) -> None:
        super()._mkdir(path)  # a real mkdir: refuses a missing root or an existing entry
        self.entries.append(path)
        (path / "provider").write_text(f"{self.provider}\n")
        (path / "generation").write_text("0\n")
        for name in ("inblob", "outblob", "auxblob", "privlevel"):
            (path / name).write_bytes(b"")

    def _rmdir(self, path: Path) -> None:
        shutil.rmtree(path)

    def another_writer(self, path: Path, data: bytes) -> None:
        """A write by someone else (another thread or process) to the same entry."""
        path.write_bytes(data)
        generation = path.parent / "generation"
        generation.write_text(f"{int(generation.read_text()) + 1}\n")

    def _write(self, path: Path, data: bytes) -> None:
        super()._write(path, data)
        self.written[path.name] = data
        generation = path.parent / "generation"
        generation.write_text(f"{int(generation.read_text()) + 1}\n")
        if self.on_write is not None:
            self.on_write(path)

    def _read(self, path: Path) -> bytes:
        if self.fail_read is not None and path.name == "outblob":
            raise self.fail_read
        if self.on_read is not None:
            self.on_read(path)
        if path.name == "outblob":  # the report is made now, from the request as it stands
            entry = path.parent
            inblob = (entry / "inblob").read_bytes()
            privlevel = (entry / "privlevel").read_bytes().strip()
            vmpl = int(privlevel) if privlevel else self.floor
            if self.report_vmpl is not None:
                vmpl = self.report_vmpl
            report_data = bytes(64) if self.ignore_inblob else inblob
            path.write_bytes(self.simulator.report_bytes(report_data, vmpl=vmpl))
            (entry / "auxblob").write_bytes(self.table)
        return super()._read(path)


@pytest.fixture
def tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return root


def test_configfs_report_and_certificates(tsm_root: Path, milan: Simulator) -> None:
    kernel = FakeKernel(tsm_root, milan, table=cert_table_for(milan.chain(), page_align=True))
    data = os.urandom(64)
    report_bytes, table = kernel.get_report(data)
    report = AttestationReport.decode(report_bytes)
    assert report.report_data == data
    certs = parse_cert_table(table)
    assert verify_report(report, certs, trust=milan.trust()).product is Product.MILAN
    assert kernel.written == {"inblob": data}  # privlevel left to the kernel's default
    assert len(kernel.entries) == 1
    assert kernel.entries[0].parent == tsm_root
    assert list(tsm_root.iterdir()) == []  # the entry is removed afterwards


def test_configfs_privlevel_and_fresh_entries(tsm_root: Path, milan: Simulator) -> None:
    kernel = FakeKernel(tsm_root, milan)
    report, table = kernel.get_report(bytes(64), privlevel=2)
    assert table == b""
    assert AttestationReport.decode(report).vmpl == 2
    assert kernel.written["privlevel"] == b"2\n"
    report, _ = kernel.get_report(bytes(64), privlevel=0)
    assert AttestationReport.decode(report).vmpl == 0
    assert kernel.written["privlevel"] == b"0\n"
    assert len(set(kernel.entries)) == 2
    assert list(tsm_root.iterdir()) == []


def test_configfs_default_privlevel_takes_the_kernels_vmpl(
    tsm_root: Path, milan: Simulator
) -> None:
    """Without a privlevel the kernel's floor applies (VMPL 1 under an SVSM, say)."""
    kernel = FakeKernel(tsm_root, milan, floor=1)
    report, _ = kernel.get_report(bytes(64))
    assert AttestationReport.decode(report).vmpl == 1
    assert "privlevel" not in kernel.written


def test_configfs_other_provider_is_refused(tsm_root: Path, milan: Simulator) -> None:
    kernel = FakeKernel(tsm_root, milan, provider="tdx_guest")
    with pytest.raises(AttestationError, match="'tdx_guest', not 'sev_guest'") as caught:
        kernel.get_report(bytes(64))
    assert caught.value.check == "tsm"
    assert "inblob" not in kernel.written
    assert list(tsm_root.iterdir()) == []


def test_configfs_generation_race_is_detected(tsm_root: Path, milan: Simulator) -> None:
    kernel = FakeKernel(tsm_root, milan)

    def another_writer(path: Path) -> None:
        if path.name == "auxblob":
            kernel.another_writer(path.parent / "inblob", bytes(64))

    kernel.on_read = another_writer
    with pytest.raises(AttestationError, match=r"another writer \(generation 0 -> 2") as caught:
        kernel.get_report(bytes(64))
    assert caught.value.check == "tsm"
    assert list(tsm_root.iterdir()) == []


@pytest.mark.parametrize("requested", [None, 0, 2])
@pytest.mark.parametrize("after", ["privlevel", "inblob"])
def test_configfs_a_write_between_ours_and_the_first_read_is_detected(
    tsm_root: Path, milan: Simulator, requested: int | None, after: str
) -> None:
    """The review's race: another writer changes privlevel right after one of our writes.

    Reading `generation` only after our writes missed it: the report came from VMPL 3 with
    our REPORT_DATA and was accepted. Counting from before our writes catches it.
    """
    kernel = FakeKernel(tsm_root, milan)
    raced: list[Path] = []

    def race(path: Path) -> None:
        if path.name == after and not raced:
            raced.append(path)
            kernel.another_writer(path.parent / "privlevel", b"3\n")

    kernel.on_write = race
    data = os.urandom(64)
    if after == "privlevel" and requested is None:
        report, _ = kernel.get_report(data, privlevel=requested)  # we never wrote privlevel
        assert not raced
        assert AttestationReport.decode(report).vmpl == 0
        return
    with pytest.raises(AttestationError, match="changed by another writer") as caught:
        kernel.get_report(data, privlevel=requested)
    assert raced
    assert caught.value.check == "tsm"
    assert list(tsm_root.iterdir()) == []


def test_configfs_a_report_from_another_vmpl_is_refused(tsm_root: Path, milan: Simulator) -> None:
    kernel = FakeKernel(tsm_root, milan)
    kernel.report_vmpl = 3
    with pytest.raises(AttestationError, match="VMPL 3, not the privlevel 0") as caught:
        kernel.get_report(bytes(64), privlevel=0)
    assert caught.value.check == "tsm"
    report, _ = kernel.get_report(bytes(64))  # nothing requested: the kernel's choice stands
    assert AttestationReport.decode(report).vmpl == 3
    assert list(tsm_root.iterdir()) == []


def test_configfs_report_for_other_data_is_refused(tsm_root: Path, milan: Simulator) -> None:
    kernel = FakeKernel(tsm_root, milan)
    kernel.ignore_inblob = True
    with pytest.raises(AttestationError, match="REPORT_DATA is not the data written"):
        kernel.get_report(b"\1" * 64)


def test_configfs_kernel_errors_name_a_cause(tsm_root: Path, milan: Simulator) -> None:
    kernel = FakeKernel(tsm_root, milan)
    kernel.fail_read = OSError(errno.EINVAL, "Invalid argument")
    with pytest.raises(AttestationError, match=r"Invalid argument.*privlevel below the floor"):
        kernel.get_report(bytes(64), privlevel=0)
    assert list(tsm_root.iterdir()) == []


def test_configfs_without_configfs(tmp_path: Path, milan: Simulator) -> None:
    kernel = FakeKernel(tmp_path / "missing", milan)
    assert not kernel.available()
    with pytest.raises(AttestationError, match="no configfs-tsm here") as caught:
        kernel.get_report(bytes(64))
    assert caught.value.check == "tsm"


def test_configfs_real_file_operations(tsm_root: Path) -> None:
    """The base class's own file operations, on a plain directory."""
    tsm = ConfigfsTsm(tsm_root)
    assert tsm.available()
    entry = tsm_root / "entry"
    tsm._mkdir(entry)
    (entry / "inblob").write_bytes(b"old contents that are longer")
    tsm._write(entry / "inblob", b"new")
    assert tsm._read(entry / "inblob").startswith(b"new")
    with pytest.raises(FileNotFoundError):
        tsm._write(entry / "outblob", b"x")  # never creates a file: the kernel makes them
    (entry / "inblob").unlink()
    tsm._rmdir(entry)
    assert not entry.exists()


@pytest.mark.parametrize(
    ("data", "privlevel", "words"),
    [(bytes(63), None, "64 bytes, not 63"), (bytes(65), None, "not 65"), (bytes(64), 4, "0-3")],
)
def test_configfs_argument_errors(
    tsm_root: Path, milan: Simulator, data: bytes, privlevel: int | None, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        FakeKernel(tsm_root, milan).get_report(data, privlevel=privlevel)
    assert list(tsm_root.iterdir()) == []


def test_trustee_json_is_not_mutated_by_parsing(snp: Path) -> None:
    report = load_report((snp / "trustee/milan-v3-vlek-report.bin").read_bytes())
    obj = trustee_evidence(report)
    before = copy.deepcopy(obj)
    parse_trustee_evidence(obj)
    assert obj == before
