"""`cvmstore snp show` and `cvmstore snp verify` as a user runs them: a subprocess, exit codes.

Every real vector is shown and verified with the verdict MANIFEST.md gives it; each failed
check exits with its class's documented status (docs/errors.md) and one error line naming the
check.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cvmstore.attest.certs import load_certificates
from cvmstore.attest.evidence import aproxy_evidence, cert_table_for, trustee_evidence
from cvmstore.attest.report import SIGNED_SIZE, SigningKey, load_report
from cvmstore.attest.simulator import Simulator
from cvmstore.attest.tcb import Product
from tests.e2e.test_cli_image import cvmstore, fails, ok

MILAN_V2 = "trustee/milan-v2-report.bin"
MILAN_V2_DATA = "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"
VLEK_REPORT = "trustee/milan-v3-vlek-report.bin"
MILAN_ROOTS = "amd-roots/milan_ask_ark_asvk.pem"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

#: Every report among the vectors: (file, version, start of the measurement).
REPORTS = [
    (MILAN_V2, 2, "a1f3930413247bb3"),
    (VLEK_REPORT, 3, "8922ebbdd00ec2c5"),
    ("trustee/azure-hcl-report.bin", 2, "9ac48fcac8a2d88a"),
    ("virtee/milan-report.hex", 2, "7a1e5c266c0108db"),
    ("py-snp-utils/genoa-v3-report-nocert.bin", 3, ""),
    ("py-snp-utils/milan-v5-report-nocert.bin", 5, ""),
]


@pytest.fixture
def snp(vectors_dir: Path) -> Path:
    return vectors_dir / "snp"


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fake_ark(name: str = "ARK-Milan") -> x509.Certificate:
    """A self-signed RSA-PSS root with AMD's common name but not AMD's key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA384(), rsa_padding=PSS)
    )


# ---------------------------------------------------------------- show


@pytest.mark.parametrize(("name", "version", "measurement"), REPORTS)
def test_show_every_vector(snp: Path, name: str, version: int, measurement: str) -> None:
    out = ok(cvmstore("snp", "show", snp / name)).stdout.decode()
    assert f"SEV-SNP attestation report, version {version}" in out
    for field in ("guest_svn", "policy", "reported_tcb", "chip_id", "signature.s", "cpuid"):
        assert f"  {field} " in out
    assert measurement in out.replace("\n", "")
    data = json.loads(ok(cvmstore("snp", "show", snp / name, "--json")).stdout)
    assert data["report"]["version"] == version
    assert data["report"]["measurement"].startswith(measurement)
    assert data["certificates"] == []


def test_show_names_fields_by_version(snp: Path) -> None:
    v2 = ok(cvmstore("snp", "show", snp / MILAN_V2)).stdout.decode()
    assert "(not in a version 2 report)" in v2
    assert "bootloader=3 tee=0 snp=8 microcode=115" in v2
    assert "signed by the VCEK" in v2
    v5 = ok(cvmstore("snp", "show", snp / "py-snp-utils/milan-v5-report-nocert.bin")).stdout
    assert b"family 0x19" in v5
    assert b"(from version 5 on)" not in v5
    vlek = ok(cvmstore("snp", "show", snp / VLEK_REPORT)).stdout
    assert b"signed by the VLEK" in vlek
    assert b"chip ID not masked" in vlek
    assert b"chip_id              64 zero bytes" in vlek


def test_show_json_evidence_with_certificates(snp: Path, tmp_path: Path) -> None:
    raw = (snp / MILAN_V2).read_bytes()
    vcek = load_certificates((snp / "trustee/milan-v2-vcek.der").read_bytes())
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps(trustee_evidence(load_report(raw), vcek)))
    out = ok(cvmstore("snp", "show", evidence)).stdout.decode()
    assert "(product not in the report; trustee)" in out
    assert "VCEK  SEV-VCEK, valid" in out
    data = json.loads(ok(cvmstore("snp", "show", "--json", evidence)).stdout)
    assert data["form"] == "trustee"
    assert [cert["role"] for cert in data["certificates"]] == ["VCEK"]
    # stdin works too
    piped = ok(cvmstore("snp", "show", "-", stdin=json.dumps(aproxy_evidence(raw)).encode()))
    assert b"version 2 (product not in the report; aproxy)" in piped.stdout


# ---------------------------------------------------------------- verify: valid


@pytest.mark.parametrize(
    ("report", "certs"),
    [
        pytest.param(
            MILAN_V2, ["--vek", "trustee/milan-v2-vcek.der", "--chain", MILAN_ROOTS], id="trustee"
        ),
        pytest.param(
            "trustee/azure-hcl-report.bin", ["--chain", "trustee/azure-vcek-chain.pem"], id="azure"
        ),
        pytest.param(
            "virtee/milan-report.hex",
            ["--vek", "virtee/milan-vcek.der", "--chain", "virtee/milan-ask-ark.pem"],
            id="virtee",
        ),
    ],
)
def test_verify_valid_vectors(snp: Path, report: str, certs: list[str]) -> None:
    args = [str(snp / arg) if "/" in arg else arg for arg in certs]
    out = ok(cvmstore("snp", "verify", snp / report, *args)).stdout.decode()
    assert out.startswith("valid: SEV-SNP report v2")
    assert "signed by the VCEK of an AMD Milan" in out
    assert "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9" in out
    assert "CHIP_ID = the VCEK's hwID" in out
    assert "policy      not checked" in out


def test_verify_vlek_is_valid_only_before_it_expired(snp: Path) -> None:
    args: list[str | Path] = [
        "snp",
        "verify",
        snp / VLEK_REPORT,
        "--vek",
        snp / "trustee/milan-v3-vlek.der",
    ]
    args += ["--chain", snp / MILAN_ROOTS]
    out = ok(cvmstore(*args, "--now", "2025-12-01")).stdout.decode()
    assert "signed by the VLEK of an AMD Milan" in out
    assert "VLEK <- ASVK <- ARK" in out
    assert "valid at 2025-12-01 00:00:00 UTC" in out
    ok(cvmstore(*args, "--now", "2025-12-10T22:00:00+00:00"))
    fails(cvmstore(*args), 32, "validity", "VLEK expired on 2025-12-10")
    fails(cvmstore(*args, "--now", "2025-12-10T23:00:00Z"), 32, "validity")


def test_verify_certificates_from_a_directory_and_a_vcek_store(snp: Path, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(snp / "trustee/milan-v2-vcek.der", certs / "vcek.der")
    shutil.copy(snp / MILAN_ROOTS, certs / "chain.crt")
    (certs / "README.txt").write_text("not a certificate, and not loaded")
    ok(cvmstore("snp", "verify", snp / MILAN_V2, "--certs-dir", certs))

    report = load_report((snp / MILAN_V2).read_bytes())
    store = tmp_path / "store"
    folder = store / "vcek" / report.chip_id.hex()
    folder.mkdir(parents=True)
    shutil.copy(snp / "trustee/milan-v2-vcek.der", folder / "bl03_tee00_snp08_ucode115_vcek.der")
    args: list[str | Path] = ["snp", "verify", snp / MILAN_V2, "--chain", snp / MILAN_ROOTS]
    ok(cvmstore(*args, "--vcek-store", store))
    fails(cvmstore(*args, "--vcek-store", tmp_path), 32, "vek", "no VCEK certificate")
    fails(cvmstore(*args, "--vcek-store", tmp_path / "none"), 2, "not a directory")


def test_verify_json_evidence_shapes(snp: Path, tmp_path: Path) -> None:
    raw = (snp / MILAN_V2).read_bytes()
    vcek = load_certificates((snp / "trustee/milan-v2-vcek.der").read_bytes())
    ask, ark, _asvk = load_certificates((snp / MILAN_ROOTS).read_bytes())
    trustee = tmp_path / "trustee.json"
    trustee.write_text(json.dumps(trustee_evidence(load_report(raw), vcek)))
    out = ok(cvmstore("snp", "verify", trustee, "--chain", snp / MILAN_ROOTS)).stdout
    assert out.startswith(b"valid: SEV-SNP report v2 (trustee)")
    fails(cvmstore("snp", "verify", trustee), 32, "chain", "no ASK")
    aproxy = tmp_path / "aproxy.json"
    aproxy.write_text(json.dumps(aproxy_evidence(raw, cert_table_for([*vcek, ask, ark]))))
    out = ok(cvmstore("snp", "verify", aproxy)).stdout  # everything came in the evidence
    assert out.startswith(b"valid: SEV-SNP report v2 (aproxy)")


def test_verify_report_data_and_policy(snp: Path, tmp_path: Path) -> None:
    args: list[str | Path] = [
        "snp",
        "verify",
        snp / MILAN_V2,
        "--vek",
        snp / "trustee/milan-v2-vcek.der",
    ]
    args += ["--chain", snp / MILAN_ROOTS]
    out = ok(cvmstore(*args, "--report-data", MILAN_V2_DATA)).stdout
    assert b"report_data as required" in out
    fails(cvmstore(*args, "--report-data", MILAN_V2_DATA[:-2] + "00"), 33, "report-data")
    fails(cvmstore(*args, "--report-data", "zz"), 2, "not hex")
    fails(cvmstore(*args, "--report-data", "00" * 65), 2, "1 to 64 bytes")

    measurement = load_report((snp / MILAN_V2).read_bytes()).measurement.hex()
    good = tmp_path / "good.toml"
    good.write_text(f'measurements = ["{measurement}"]\n')
    out = ok(cvmstore(*args, "--policy", good, "--report-data", MILAN_V2_DATA)).stdout
    assert f"policy      {good}: satisfied".encode() in out
    data = json.loads(ok(cvmstore(*args, "--policy", good, "--json")).stdout)
    assert data["policy"]["file"] == str(good)
    assert data["policy"]["rules"]["measurements"] == [measurement]
    fails(cvmstore(*args, "--policy", good, "--report-data", "11"), 33, "report-data")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"measurements": ["00" * 48]}))
    fails(cvmstore(*args, "--policy", bad), 33, "measurement")
    broken = tmp_path / "broken.toml"
    broken.write_text("measurements = [\n")
    fails(cvmstore(*args, "--policy", broken), 3, "broken.toml")


@pytest.mark.parametrize("policy", [False, True], ids=["alone", "with a policy"])
def test_a_report_data_mismatch_gives_away_no_part_of_the_expected_value(
    snp: Path, tmp_path: Path, policy: bool
) -> None:
    """The binding may be a secret nonce: no message shows it, nor the report's value that
    shares all but its last byte with it."""
    args: list[str | Path] = ["snp", "verify", snp / MILAN_V2, "--vek"]
    args += [snp / "trustee/milan-v2-vcek.der", "--chain", snp / MILAN_ROOTS]
    if policy:
        rules = tmp_path / "policy.toml"
        rules.write_text("vmpl = 0\n")
        args += ["--policy", rules]
    expected = MILAN_V2_DATA[:-2] + "00"
    for extra in ([], ["--json"]):
        proc = cvmstore(*args, *extra, "--report-data", expected)
        err = fails(proc, 33, "report-data", "REPORT_DATA does not match")
        shown = err + proc.stdout.decode()
        assert not re.search(r"[0-9a-f]{8}", shown.replace(str(snp), "")), shown
        if extra:
            assert json.loads(proc.stdout)["check"] == "report-data"


def test_verify_refuses_a_host_requested_report(tmp_path: Path) -> None:
    """SNP_HV_REPORT_REQ: VMPL 0xFFFFFFFF, zero REPORT_DATA, genuinely signed; no guest's."""
    simulator = Simulator(Product.MILAN, seed="cli hv", key_size=2048)
    genuine = simulator.report()
    hv = bytearray(dataclasses.replace(genuine, vmpl=0xFFFFFFFF, report_data=bytes(64)).encode())
    der = simulator._vcek.key.sign(bytes(hv[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    hv[0x2A0 : 0x2A0 + 72] = r.to_bytes(72, "little")
    hv[0x2E8 : 0x2E8 + 72] = s.to_bytes(72, "little")
    report = tmp_path / "hv.bin"
    report.write_bytes(bytes(hv))
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(pem(cert) for cert in simulator.chain()))
    ark = tmp_path / "ark.pem"
    ark.write_bytes(pem(simulator.ark))
    args: list[str | Path] = ["snp", "verify", report, "--chain", chain]
    args += ["--trust-root", f"{ark}:Milan"]
    fails(cvmstore(*args), 30, "vmpl", "host-requested")
    fails(cvmstore(*args, "--report-data", "00"), 30, "vmpl")
    good = tmp_path / "good.bin"
    good.write_bytes(genuine.encode())
    ok(cvmstore("snp", "verify", good, *args[3:]))


def test_verify_json(snp: Path) -> None:
    args: list[str | Path] = [
        "snp",
        "verify",
        snp / VLEK_REPORT,
        "--vek",
        snp / "trustee/milan-v3-vlek.der",
    ]
    args += ["--chain", snp / MILAN_ROOTS, "--json"]
    data = json.loads(ok(cvmstore(*args, "--now", "2025-12-01")).stdout)
    assert data["valid"] is True
    assert (data["product"], data["signing_key"], data["form"]) == ("Milan", "VLEK", "raw")
    assert data["vek"]["csp_id"] == "CN=cc-us-east-2.amazonaws.com"
    assert "chip-id" not in data["checks"]
    assert data["verified_at"].startswith("2025-12-01T00:00:00")
    assert data["report"]["measurement"].startswith("8922ebbdd00ec2c5")
    proc = cvmstore(*args)
    fails(proc, 32, "validity")
    failure = json.loads(proc.stdout)
    assert failure["valid"] is False
    assert failure["check"] == "validity"


# ---------------------------------------------------------------- verify: rejected


@pytest.mark.parametrize("name", ["genoa-v3-report-nocert.bin", "milan-v5-report-nocert.bin"])
def test_verify_without_a_vcek(snp: Path, name: str) -> None:
    fails(cvmstore("snp", "verify", snp / "py-snp-utils" / name), 32, "vek: no VCEK")


@pytest.mark.parametrize("name", ["invalid-vcek-legacy.der", "invalid-vcek-new.der"])
def test_verify_made_up_vceks_fail_the_chain(snp: Path, name: str) -> None:
    proc = cvmstore(
        "snp", "verify", snp / MILAN_V2, "--vek", snp / "trustee" / name, "--chain",
        snp / MILAN_ROOTS,
    )  # fmt: skip
    fails(proc, 32, "chain", "does not verify under SEV-Milan")


def test_verify_tampered_report_fails_the_signature(snp: Path, tmp_path: Path) -> None:
    raw = bytearray((snp / MILAN_V2).read_bytes())
    raw[0x90] ^= 0x01  # the first byte of MEASUREMENT
    tampered = tmp_path / "tampered.bin"
    tampered.write_bytes(bytes(raw))
    proc = cvmstore(
        "snp", "verify", tampered, "--vek", snp / "trustee/milan-v2-vcek.der", "--chain",
        snp / MILAN_ROOTS,
    )  # fmt: skip
    fails(proc, 31, "signature", "does not verify under the VEK")


def test_verify_other_roots(snp: Path, tmp_path: Path) -> None:
    ask = load_certificates((snp / MILAN_ROOTS).read_bytes())[0]
    ark = tmp_path / "ark.pem"
    ark.write_bytes(pem(fake_ark()))
    chain = tmp_path / "ask.pem"
    chain.write_bytes(pem(ask))
    args: list[str | Path] = [
        "snp",
        "verify",
        snp / MILAN_V2,
        "--vek",
        snp / "trustee/milan-v2-vcek.der",
    ]
    args += ["--chain", chain]
    fails(cvmstore(*args, "--chain", ark), 32, "root", "is not a trusted root for Milan")
    fails(cvmstore(*args, "--trust-root", f"{ark}:milan"), 32, "chain", "ASK: the signature")
    fails(cvmstore(*args, "--trust-root", f"{ark}:Genoa"), 32, "root", "for Milan")
    fails(cvmstore(*args, "--trust-root", f"{ark}:Rome"), 2, "FILE:PRODUCT")
    fails(cvmstore(*args, "--trust-root", str(ark)), 2, "FILE:PRODUCT")
    fails(cvmstore(*args, "--trust-root", f"{chain}:Milan"), 2, "one self-signed root")


def test_verify_simulator_reports(tmp_path: Path) -> None:
    simulator = Simulator(Product.GENOA, seed="cli tests", key_size=2048)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(pem(cert) for cert in simulator.chain()))
    ark = tmp_path / "ark.pem"
    ark.write_bytes(pem(simulator.ark))
    report = tmp_path / "report.bin"
    report.write_bytes(simulator.report_bytes(b"hello", version=3))
    args: list[str | Path] = ["snp", "verify", report, "--chain", chain]
    fails(cvmstore(*args), 32, "root", "not a trusted root for Genoa")
    out = ok(cvmstore(*args, "--trust-root", f"{ark}:Genoa", "--report-data", b"hello".hex()))
    assert b"signed by the VCEK of an AMD Genoa" in out.stdout
    unsigned = tmp_path / "unsigned.bin"
    unsigned.write_bytes(simulator.report_bytes(signing_key=SigningKey.NONE))
    fails(cvmstore("snp", "verify", unsigned, "--chain", chain), 30, "signing-key")


# ---------------------------------------------------------------- bad input


def test_malformed_input(snp: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x01" * 100)
    fails(cvmstore("snp", "show", junk), 3, "junk.bin", "1184 bytes, not 100")
    fails(cvmstore("snp", "verify", junk), 3, "1184 bytes")
    short = tmp_path / "evidence.json"
    short.write_text('{"snp-report": "AAAA"}')
    fails(cvmstore("snp", "verify", short), 3, "evidence.json", "1184 bytes, not 3")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"attestation_report": {"version": 2}}')
    fails(cvmstore("snp", "show", bad_json), 3, "missing field")
    v6 = bytearray((snp / MILAN_V2).read_bytes())
    v6[0] = 6
    (tmp_path / "v6.bin").write_bytes(bytes(v6))
    fails(cvmstore("snp", "show", tmp_path / "v6.bin"), 5, "version 6 is not supported")
    fails(cvmstore("snp", "verify", snp / MILAN_V2, "--vek", junk), 3, "junk.bin", "certificate")


def test_usage_errors(snp: Path, tmp_path: Path) -> None:
    fails(cvmstore("snp", "show", tmp_path / "missing.bin"), 2, "cannot read")
    fails(cvmstore("snp", "verify", snp / MILAN_V2, "--vek", tmp_path / "none"), 2, "cannot read")
    fails(cvmstore("snp", "verify", snp / MILAN_V2, "--now", "yesterday"), 2, "--now")
    fails(cvmstore("snp", "verify", snp / MILAN_V2, "--certs-dir", tmp_path / "no"), 2, "--certs")
    for argv in (["snp"], ["snp", "show"], ["snp", "verify", snp / MILAN_V2, "--bogus"]):
        proc = cvmstore(*argv)
        assert proc.returncode == 2, proc.stderr
        assert b"Traceback" not in proc.stderr
    # an unknown option among the arguments is named alone, the report is not mistaken for one
    proc = cvmstore("snp", "verify", "--json", snp / MILAN_V2, "--bogus", "--now", "2025-01-01")
    assert proc.stderr.endswith(b"cvmstore snp verify: error: unrecognized arguments: --bogus\n")


def test_help_teaches() -> None:
    top = ok(cvmstore("--help")).stdout.decode()
    assert "snp" in top
    text = ok(cvmstore("snp", "verify", "--help")).stdout.decode()
    for word in (
        "signing-key",
        "[vek]",
        "[root]",
        "[chain]",
        "[validity]",
        "[signature]",
        "[tcb]",
        "[chip-id]",
        "[vmpl]",
        "[report-data]",
        "Trustee",
        "aproxy",
        "HCLA",
        "kdsintf.amd.com",
        "31 ReportSignatureError",
        "--trust-root FILE:PRODUCT",
    ):
        assert word in text, word
    show = ok(cvmstore("snp", "show", "--help")).stdout.decode()
    assert "Nothing is verified" in show


def test_bench_snp_reports_a_ratio_to_bare_ecdsa(vectors_dir: Path) -> None:
    proc = cvmstore(
        "bench", "snp", "--quick", "--json", "--rounds", "1",
        env={"CVMSTORE_VECTORS": str(vectors_dir)},
    )  # fmt: skip
    (report,) = json.loads(ok(proc).stdout)
    (figure,) = report["figures"]
    assert figure["baseline_name"] == "bare ECDSA P-384"
    assert figure["target"] == 0.8
    assert 0.2 < figure["ratio"] < 1.5  # timing is noisy; the target is judged by hand
    assert "Trustee Milan v2 report" in report["notes"][0]
