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

from cvmstore.attest.certs import CertRole, load_certificates, role_of
from cvmstore.attest.configfs import ConfigfsTsm
from cvmstore.attest.evidence import (
    CERT_TABLE_GUIDS,
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


# ---------------------------------------------------------------- configfs-tsm


class FakeKernel(ConfigfsTsm):
    """configfs-tsm's behaviour on a plain directory: what the kernel does on each call."""

    def __init__(
        self,
        root: Path,
        simulator: Simulator,
        *,
        provider: str = "sev_guest",
        table: bytes = b"",
    ) -> None:
        super().__init__(root)
        self.simulator = simulator
        self.provider = provider
        self.table = table
        self.entries: list[Path] = []
        self.written: dict[str, bytes] = {}
        self.on_read: Callable[[Path], None] | None = None
        self.ignore_inblob = False
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

    def _write(self, path: Path, data: bytes) -> None:
        super()._write(path, data)
        self.written[path.name] = data
        generation = path.parent / "generation"
        generation.write_text(f"{int(generation.read_text()) + 1}\n")
        if path.name == "inblob":
            report_data = bytes(64) if self.ignore_inblob else data
            (path.parent / "outblob").write_bytes(self.simulator.report_bytes(report_data))
            (path.parent / "auxblob").write_bytes(self.table)

    def _read(self, path: Path) -> bytes:
        if self.fail_read is not None and path.name == "outblob":
            raise self.fail_read
        if self.on_read is not None:
            self.on_read(path)
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
    _, table = kernel.get_report(bytes(64), privlevel=2)
    assert table == b""
    assert kernel.written["privlevel"] == b"2\n"
    kernel.get_report(bytes(64), privlevel=0)
    assert kernel.written["privlevel"] == b"0\n"
    assert len(set(kernel.entries)) == 2
    assert list(tsm_root.iterdir()) == []


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
            generation = path.parent / "generation"
            generation.write_text(f"{int(generation.read_text()) + 1}\n")

    kernel.on_read = another_writer
    with pytest.raises(AttestationError, match=r"generation 1 -> 2") as caught:
        kernel.get_report(bytes(64))
    assert caught.value.check == "tsm"
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
