"""Cross-check with go-sev-guest: Google's verifier must agree with ours on simulator reports.

`gosev/` is a small Go program that verifies reports with go-sev-guest's `verify` (chain to the
given root, report signature) and `validate` (REPORTED_TCB against the VEK, CHIP_ID against
hwID) packages, trusting only the simulator's roots and fetching nothing. Each case below is
also put to cvmstore's `verify_report`, so the two verifiers are compared case by case.

go-sev-guest (v0.15.0, the newest release) cannot read Turin VEKs: it refuses the fmcSPL
extension (1.3.6.1.4.1.3704.1.3.9) that AMD's Turin certificates carry, and it wants a 64-byte
hwID (google/go-sev-guest#165, open). The Turin cases pin that refusal, so a go-sev-guest that
learns Turin shows up here as a failure to update.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cvmstore.attest.report import AttestationReport, SigningKey
from cvmstore.attest.simulator import Simulator
from cvmstore.attest.tcb import Product, TcbVersion
from cvmstore.attest.verify import verify_report
from cvmstore.errors import AttestationError
from tests.conftest import require_or_skip

pytestmark = pytest.mark.slow

GOSEV = Path(__file__).resolve().parent / "gosev"
NOW = datetime.now(UTC).replace(microsecond=0)
BUILD_TIMEOUT = 540  # a cold build downloads go-sev-guest and its dependencies


@dataclass(frozen=True)
class Case:
    """One report for both verifiers, and what go-sev-guest must say about it."""

    report: bytes
    vek: x509.Certificate
    chain: list[x509.Certificate]  # what cvmstore's verifier is given
    sim: Simulator  # whose root both verifiers trust
    go_ok: bool
    go_reason: str = ""  # a substring of go-sev-guest's reason when it must fail
    now: datetime = NOW
    cvmstore_ok: bool | None = None  # None: the same verdict as go-sev-guest's

    @property
    def signing_key(self) -> SigningKey:
        return AttestationReport.decode(self.report).key_info.signing_key


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def _bump(tcb: TcbVersion) -> TcbVersion:
    return TcbVersion.make(
        bootloader=tcb.bootloader,
        tee=tcb.tee,
        snp=tcb.snp + 1,
        microcode=tcb.microcode,
        fmc=tcb.fmc,
    )


@pytest.fixture(scope="module")
def sims() -> dict[Product, Simulator]:
    return {product: Simulator(product, vlek=True, seed="interop") for product in Product}


@pytest.fixture(scope="module")
def foreign() -> Simulator:
    """Another simulator of the same product: a chain whose root nobody trusts."""
    return Simulator(Product.MILAN, seed="foreign")


@pytest.fixture(scope="module")
def cases(sims: dict[Product, Simulator], foreign: Simulator) -> dict[str, Case]:
    out: dict[str, Case] = {}
    data = b"cvmstore interop".ljust(64, b"\xa5")
    for product in Product:
        sim = sims[product]
        name = product.value.lower()
        turin = product is Product.TURIN
        why_not = "not an AMD KDS OID" if turin else ""  # go-sev-guest: no fmcSPL
        assert sim.vlek is not None
        vcek = sim.report(data)
        for key, cert in ((SigningKey.VCEK, sim.vcek), (SigningKey.VLEK, sim.vlek)):
            good = sim.report(data, signing_key=key).encode()
            label = f"{name}-{key.name.lower()}"
            out[label] = Case(good, cert, sim.chain(), sim, not turin, why_not, cvmstore_ok=True)
            out[f"{label}-tampered-measurement"] = Case(
                _flip(good, 0x90 + 47), cert, sim.chain(), sim, False, why_not or "signature"
            )
        if turin:
            continue  # go-sev-guest stops at the certificate; tampering tells nothing more
        raw = vcek.encode()
        chain = sim.chain()
        for version in (2, 5):
            extra = {"current_mit_vector": 3} if version == 5 else {}
            report = sim.report(data, version=version, **extra).encode()  # type: ignore[arg-type]
            out[f"{name}-vcek-v{version}"] = Case(report, sim.vcek, chain, sim, True)
        tampered = {
            "report-data": (_flip(raw, 0x50), "signature"),
            "host-data": (_flip(raw, 0xC0), "signature"),
            "chip-id": (_flip(raw, 0x1A0), "signature"),
            "signature-r": (_flip(raw, 0x2A0), "signature"),
            "signature-s": (_flip(raw, 0x2E8 + 10), "signature"),
            # signed by the VCEK, but claiming what its certificate does not say
            "wrong-tcb": (sim.report(data, reported_tcb=_bump(sim.tcb)).encode(), "TCB"),
            "wrong-chip": (sim.report(data, chip_id=bytes(range(1, 65))).encode(), "CHIP_ID"),
        }
        for what, (report, reason) in tampered.items():
            out[f"{name}-vcek-tampered-{what}"] = Case(report, sim.vcek, chain, sim, False, reason)
        after = sim.vcek.not_valid_after_utc + timedelta(seconds=1)
        out[f"{name}-vcek-expired"] = Case(raw, sim.vcek, chain, sim, False, "expired", now=after)
    # A chain that is whole and well signed, but under a root that is not the trusted one.
    other = foreign.report(data).encode()
    out["milan-vcek-foreign-root"] = Case(
        other, foreign.vcek, foreign.chain(), sims[Product.MILAN], False, "trusted roots"
    )
    return out


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go checker, built once per run (Go's build and module caches make rebuilds quick)."""
    require_or_skip(shutil.which("go") is not None, "the Go toolchain")
    binary = tmp_path_factory.mktemp("gosev") / "gosevcheck"
    env = {**os.environ, "GOWORK": "off", "GOTOOLCHAIN": "local"}
    built = subprocess.run(
        ["go", "build", "-buildvcs=false", "-o", str(binary), "."],
        cwd=GOSEV,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"go build failed:\n{built.stderr}")
    return binary


@pytest.fixture(scope="module")
def verdicts(
    checker: Path, cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Write every case and the trusted roots, run the checker once: name -> its line."""
    root = tmp_path_factory.mktemp("interop")
    for case in cases.values():
        sim = case.sim
        roots = root / "roots" / sim.product.value
        roots.mkdir(parents=True, exist_ok=True)
        (roots / "ark.der").write_bytes(_der(sim.ark))
        (roots / "ask.der").write_bytes(_der(sim.ask))
        if sim.asvk is not None:
            (roots / "asvk.der").write_bytes(_der(sim.asvk))
    for name, case in cases.items():
        folder = root / "reports" / name
        folder.mkdir(parents=True)
        (folder / "report.bin").write_bytes(case.report)
        vek = "vlek.der" if case.signing_key is SigningKey.VLEK else "vcek.der"
        (folder / vek).write_bytes(_der(case.vek))
        if case.now != NOW:
            (folder / "now").write_text(case.now.isoformat().replace("+00:00", "Z"))
    ran = subprocess.run(
        [str(checker), "-now", NOW.isoformat().replace("+00:00", "Z"), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    found = {line.split(" ", 1)[0]: line for line in lines}
    assert len(found) == len(lines)
    return found


CASE_NAMES = sorted(
    [
        *(
            f"{product}-{key}{suffix}"
            for product in ("milan", "genoa", "turin")
            for key in ("vcek", "vlek")
            for suffix in ("", "-tampered-measurement")
        ),
        *(
            f"{product}-vcek-{what}"
            for product in ("milan", "genoa")
            for what in (
                "v2",
                "v5",
                "expired",
                *(
                    f"tampered-{field}"
                    for field in (
                        "report-data",
                        "host-data",
                        "chip-id",
                        "signature-r",
                        "signature-s",
                        "wrong-tcb",
                        "wrong-chip",
                    )
                ),
            )
        ),
        "milan-vcek-foreign-root",
    ]
)


def test_the_case_list_is_complete(cases: dict[str, Case]) -> None:
    assert sorted(cases) == CASE_NAMES


def test_every_case_gets_one_verdict(verdicts: dict[str, str]) -> None:
    assert sorted(verdicts) == CASE_NAMES


@pytest.mark.parametrize("name", CASE_NAMES)
def test_go_sev_guest_verdict(name: str, cases: dict[str, Case], verdicts: dict[str, str]) -> None:
    case, line = cases[name], verdicts[name]
    if case.go_ok:
        assert line == f"{name} OK"
    else:
        assert line.startswith(f"{name} FAIL "), line
        assert case.go_reason in line, line


@pytest.mark.parametrize("name", CASE_NAMES)
def test_cvmstore_agrees(name: str, cases: dict[str, Case]) -> None:
    """cvmstore accepts what go-sev-guest accepts, and Turin (which it cannot read) as well."""
    case = cases[name]
    report = AttestationReport.decode(case.report)
    if case.go_ok if case.cvmstore_ok is None else case.cvmstore_ok:
        verified = verify_report(report, case.chain, trust=case.sim.trust(), now=case.now)
        assert verified.report == report
    else:
        with pytest.raises(AttestationError):
            verify_report(report, case.chain, trust=case.sim.trust(), now=case.now)
