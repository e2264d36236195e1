"""The attestation policy: its schema (TOML, JSON, validation) and every check, on real reports.

The reports are Trustee's public Milan test reports (`../shared/vectors/snp`, MANIFEST.md),
verified by `verify_report`. A few rules need report contents no public vector has (debug
allowed, an author key, a Turin chip ID); those cases derive a report from the real one with
`forge`, which copies a `VerifiedReport` with changed fields. That is a test-only shortcut:
the policy code must judge whatever report it is handed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvmstore.attest import policy as policy_module
from cvmstore.attest.certs import load_certificates
from cvmstore.attest.policy import (
    CHECKS,
    TCB_COMPONENTS,
    TCB_WHICH,
    Policy,
    TcbMinimum,
    check_policy,
    load_policy,
    parse_policy,
    policy_failures,
    policy_to_dict,
)
from cvmstore.attest.report import GuestPolicy, KeyInfo, PlatformInfo, SigningKey, load_report
from cvmstore.attest.tcb import Product, TcbVersion
from cvmstore.attest.verify import VerifiedReport, verify_report
from cvmstore.errors import FormatError, PolicyError, UnsupportedVersionError

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "attestation-policy.md"

# Facts about trustee/milan-v2-report.bin (MANIFEST.md and the report itself)
MILAN_MEASUREMENT = (
    "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f6"
    "3fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c"
)
MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}  # reported; current ucode 206
MILAN_CHIP_PREFIX = "c38427a30d4c7af9"
VLEK_CLOCK = datetime(2025, 6, 1, tzinfo=UTC)  # the test VLEK expired on 2025-12-10


# ------------------------------------------------------------------------- fixtures


def _verified(snp: Path, report: str, vek: str, now: datetime | None = None) -> VerifiedReport:
    certs = load_certificates((snp / "trustee" / vek).read_bytes())
    certs += load_certificates((snp / "amd-roots" / "milan_ask_ark_asvk.pem").read_bytes())
    return verify_report(load_report((snp / "trustee" / report).read_bytes()), certs, now=now)


@pytest.fixture
def milan(vectors_dir: Path) -> VerifiedReport:
    """Trustee's Milan v2 report: VCEK-signed, VMPL 0, SMT allowed and enabled."""
    verified = _verified(vectors_dir / "snp", "milan-v2-report.bin", "milan-v2-vcek.der")
    assert verified.report.measurement.hex() == MILAN_MEASUREMENT
    return verified


@pytest.fixture
def vlek(vectors_dir: Path) -> VerifiedReport:
    """Trustee's Milan v3 report: VLEK-signed, VMPL 1, chip ID zero."""
    return _verified(
        vectors_dir / "snp", "milan-v3-vlek-report.bin", "milan-v3-vlek.der", VLEK_CLOCK
    )


def forge(verified: VerifiedReport, **changes: Any) -> VerifiedReport:
    """`verified` with report fields changed (test-only: see the module docstring).

    Reaches past `verify_report` on purpose, with the private token: no public vector has
    these report contents, and the policy checks are what is under test here.
    """
    from cvmstore.attest import verify

    report = dataclasses.replace(verified.report, **changes)
    fields = {name: getattr(verified, name) for name in VerifiedReport.__slots__}
    return VerifiedReport._issue(verify._TOKEN, **{**fields, "report": report})


def matching(verified: VerifiedReport) -> dict[str, Any]:
    """A policy document that sets every rule to exactly the Milan v2 report's values."""
    report = verified.report
    return {
        "schema": 1,
        "measurements": [MILAN_MEASUREMENT],
        "tcb": {"which": list(TCB_WHICH), **MILAN_TCB},
        "allow_debug": False,
        "allow_migration_agent": False,
        "allow_smt": True,
        "vmpl": 0,
        "min_guest_svn": 4,
        "min_abi": "0.31",
        "family_ids": ["01" + "00" * 15],
        "image_ids": ["02" + "00" * 15],
        "host_data": ["00" * 32],
        "id_key_digests": [report.id_key_digest.hex()],
        "chip_ids": [report.chip_id.hex()],
        "signing_keys": ["vcek"],
        "products": ["Milan"],
        "report_data": report.report_data.hex(),
    }


def failed(verified: VerifiedReport, doc: dict[str, Any], **kwargs: Any) -> list[str]:
    return [error.check or "" for error in policy_failures(verified, parse_policy(doc), **kwargs)]


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


# ------------------------------------------------------------------------- checks


def test_check_names_are_the_documented_ones() -> None:
    assert set(CHECKS) == {
        "measurement", "tcb", "debug", "migrate-ma", "smt", "vmpl", "guest-svn", "family-id",
        "image-id", "host-data", "id-key", "author-key", "chip-id", "report-data",
        "policy-abi", "signing-key", "product",
    }  # fmt: skip
    assert len(CHECKS) == len(set(CHECKS))


def test_matching_policy_accepts_the_report(milan: VerifiedReport) -> None:
    policy = parse_policy(matching(milan))
    check_policy(milan, policy)
    check_policy(milan, policy, report_data=milan.report.report_data)
    assert policy_failures(milan, policy) == []


def test_default_policy_accepts_the_milan_report_and_refuses_the_vlek_one_for_vmpl(
    milan: VerifiedReport, vlek: VerifiedReport
) -> None:
    check_policy(milan, Policy())
    with pytest.raises(PolicyError) as info:
        check_policy(vlek, Policy())
    assert info.value.check == "vmpl"
    assert str(info.value) == "vmpl: VMPL is 1; the policy requires 0"
    check_policy(vlek, parse_policy({"vmpl": [0, 1]}))


STRICTER: list[tuple[str, dict[str, Any]]] = [
    ("measurement", {"measurements": ["00" * 48, "ff" * 48]}),
    *[("tcb", {"tcb": {**MILAN_TCB, name: level + 1}}) for name, level in MILAN_TCB.items()],
    ("tcb", {"tcb": {"which": "current", "microcode": 207}}),
    ("smt", {"allow_smt": False}),
    ("vmpl", {"vmpl": [1, 2, 3]}),
    ("policy-abi", {"min_abi": "0.32"}),
    ("policy-abi", {"min_abi": "1.0"}),
    ("guest-svn", {"min_guest_svn": 5}),
    ("family-id", {"family_ids": ["03" + "00" * 15]}),
    ("image-id", {"image_ids": ["01" + "00" * 15]}),
    ("id-key", {"id_key_digests": ["11" * 48]}),
    ("author-key", {"author_key_digests": ["11" * 48]}),
    ("host-data", {"host_data": ["01" * 32, "00" * 31 + "01"]}),
    ("chip-id", {"chip_ids": ["11" * 64]}),
    ("chip-id", {"chip_ids": [MILAN_CHIP_PREFIX]}),  # 8 bytes match only a Turin chip ID
    ("signing-key", {"signing_keys": ["vlek"]}),
    ("product", {"products": ["Genoa", "Turin"]}),
    ("report-data", {"report_data": "00" * 64}),
]


@pytest.mark.parametrize(("check", "override"), STRICTER, ids=[c for c, _ in STRICTER])
def test_each_stricter_rule_fails_with_its_check(
    milan: VerifiedReport, check: str, override: dict[str, Any]
) -> None:
    doc = {**matching(milan), **override}
    with pytest.raises(PolicyError) as info:
        check_policy(milan, parse_policy(doc))
    assert info.value.check == check
    assert str(info.value).startswith(f"{check}: ")
    assert info.value.exit_code == 33
    assert failed(milan, doc) == [check]  # and no other rule misfires


def test_the_failure_message_names_the_offending_value(milan: VerifiedReport) -> None:
    with pytest.raises(PolicyError, match=f"MEASUREMENT {MILAN_MEASUREMENT} is not one"):
        check_policy(milan, parse_policy({"measurements": ["00" * 48]}))
    with pytest.raises(PolicyError, match="REPORTED_TCB snp is 8; the policy requires at least 9"):
        check_policy(milan, parse_policy({"tcb": {"snp": 9}}))


def test_checks_run_in_the_documented_order(milan: VerifiedReport) -> None:
    doc = {
        "measurements": ["00" * 48],
        "vmpl": 2,
        "min_guest_svn": 99,
        "id_key_digests": [milan.report.id_key_digest.hex()],
        "report_data": "00" * 64,
        "signing_keys": ["vlek"],
        "products": ["Turin"],
    }
    with pytest.raises(PolicyError) as info:
        check_policy(milan, parse_policy(doc))
    assert info.value.check == "signing-key"
    found = failed(milan, doc)
    assert found == ["signing-key", "product", "vmpl", "measurement", "guest-svn", "report-data"]
    assert found == sorted(found, key=CHECKS.index)


# TCB: which value, and FMC


def test_tcb_minimums_apply_to_the_tcb_named_by_which(milan: VerifiedReport) -> None:
    # REPORTED_TCB microcode is 115, CURRENT_TCB microcode 206
    assert failed(milan, {"tcb": {"microcode": 200}}) == ["tcb"]
    assert failed(milan, {"tcb": {"which": "reported", "microcode": 200}}) == ["tcb"]
    assert failed(milan, {"tcb": {"which": "current", "microcode": 200}}) == []
    assert failed(milan, {"tcb": {"which": ["current"], "microcode": 206}}) == []
    with pytest.raises(PolicyError, match="REPORTED_TCB microcode is 115"):
        check_policy(
            milan, parse_policy({"tcb": {"which": ["current", "reported"], "microcode": 200}})
        )


@pytest.mark.parametrize("which", ["committed", "launch"])
def test_committed_and_launch_tcb(milan: VerifiedReport, which: str) -> None:
    lower = TcbVersion.make(bootloader=3, tee=0, snp=7, microcode=115)
    forged = forge(milan, **{f"{which}_tcb": lower})
    assert failed(forged, {"tcb": {"snp": 8}}) == []  # reported is still 8
    with pytest.raises(PolicyError, match=f"{which.upper()}_TCB snp is 7"):
        check_policy(forged, parse_policy({"tcb": {"which": which, "snp": 8}}))


def test_an_fmc_minimum_fails_a_tcb_without_fmc(milan: VerifiedReport) -> None:
    """A non-zero fmc floor is a Turin floor: a Milan or Genoa TCB has no FMC and fails it."""
    assert failed(milan, {"tcb": {"fmc": 0}}) == []
    for level in (1, 255):
        assert failed(milan, {"tcb": {"fmc": level}}) == ["tcb"]
    with pytest.raises(PolicyError, match=r"REPORTED_TCB has no FMC component.*fmc >= 1") as info:
        check_policy(milan, parse_policy({"tcb": {"fmc": 1}}))
    assert info.value.check == "tcb"
    # every TCB named is judged, the FMC-less one fails whichever it is
    with pytest.raises(PolicyError, match="LAUNCH_TCB has no FMC component"):
        check_policy(milan, parse_policy({"tcb": {"which": "launch", "fmc": 1}}))
    turin = TcbVersion.make(bootloader=3, tee=0, snp=8, microcode=115, fmc=2)
    forged = forge(milan, reported_tcb=turin)
    assert failed(forged, {"tcb": {"fmc": 2}}) == []
    with pytest.raises(PolicyError, match="REPORTED_TCB fmc is 2; the policy requires at least 3"):
        check_policy(forged, parse_policy({"tcb": {"fmc": 3}}))


def test_products(milan: VerifiedReport) -> None:
    assert milan.product is Product.MILAN
    assert failed(milan, {}) == []  # any product by default
    assert failed(milan, {"products": ["Milan"]}) == []
    assert failed(milan, {"products": ["turin", "GENOA", "milan"]}) == []
    assert failed(milan, {"products": ["Turin"]}) == ["product"]
    with pytest.raises(PolicyError) as info:
        check_policy(milan, parse_policy({"products": ["Genoa", "Turin"]}))
    assert str(info.value) == (
        "product: the report comes from an AMD Milan; the policy allows Genoa, Turin"
    )
    assert parse_policy({"products": ["Turin", "turin"]}).products == (Product.TURIN,)
    assert parse_policy({"products": None}).products is None


def test_a_turin_floor_without_products_still_refuses_an_old_milan_tcb(
    milan: VerifiedReport,
) -> None:
    """The review's case: Turin-scale minimums with an fmc floor, and a 2022 Milan TCB."""
    turin_floor = {"which": ["reported", "committed", "launch"], "fmc": 1, "bootloader": 1}
    turin_floor |= {"tee": 0, "snp": 3, "microcode": 9}
    assert failed(milan, {"tcb": turin_floor}) == ["tcb"]
    assert failed(milan, {"tcb": {**turin_floor, "fmc": 0}}) == []  # what "products" is for
    assert failed(milan, {"tcb": {**turin_floor, "fmc": 0}, "products": ["Turin"]}) == ["product"]


# guest policy bits


@pytest.mark.parametrize(
    ("bit", "check", "allow"),
    [(19, "debug", "allow_debug"), (18, "migrate-ma", "allow_migration_agent")],
)
def test_debug_and_migration_agent_are_forbidden_by_default(
    milan: VerifiedReport, bit: int, check: str, allow: str
) -> None:
    forged = forge(milan, policy=GuestPolicy(milan.report.policy.value | 1 << bit))
    assert failed(forged, {}) == [check]
    assert failed(forged, {allow: False}) == [check]
    assert failed(forged, {allow: True}) == []
    assert failed(milan, {allow: False}) == []


def test_smt_forbidden_needs_guest_policy_and_platform_both_clear(milan: VerifiedReport) -> None:
    assert milan.report.policy.smt
    assert milan.report.platform_info.smt_enabled
    with pytest.raises(PolicyError, match="the guest policy allows SMT"):
        check_policy(milan, parse_policy({"allow_smt": False}))
    no_guest_smt = GuestPolicy(milan.report.policy.value & ~(1 << 16))
    on_platform = forge(milan, policy=no_guest_smt)
    with pytest.raises(PolicyError, match="SMT is enabled on the platform"):
        check_policy(on_platform, parse_policy({"allow_smt": False}))
    off = forge(milan, policy=no_guest_smt, platform_info=PlatformInfo(0))
    assert failed(off, {"allow_smt": False}) == []
    assert failed(milan, {"allow_smt": True}) == []


# keys and chips


def test_author_key(milan: VerifiedReport) -> None:
    with pytest.raises(PolicyError, match="AUTHOR_KEY_EN is clear"):
        check_policy(milan, parse_policy({"author_key_digests": ["22" * 48]}))
    forged = forge(milan, key_info=KeyInfo(1), author_key_digest=b"\x22" * 48)
    assert failed(forged, {"author_key_digests": ["33" * 48, "22" * 48]}) == []
    assert failed(forged, {"author_key_digests": ["33" * 48]}) == ["author-key"]
    assert failed(forged, {}) == []


def test_signing_key(milan: VerifiedReport, vlek: VerifiedReport) -> None:
    assert vlek.signing_key is SigningKey.VLEK
    assert failed(vlek, {"vmpl": 1, "signing_keys": ["vcek"]}) == ["signing-key"]
    assert failed(vlek, {"vmpl": 1, "signing_keys": ["VLEK"]}) == []
    assert failed(vlek, {"vmpl": 1}) == []  # both by default
    assert failed(milan, {"signing_keys": ["Vcek", "vlek"]}) == []


def test_a_masked_chip_id_fails_any_chip_allow_list(
    milan: VerifiedReport, vlek: VerifiedReport
) -> None:
    with pytest.raises(PolicyError, match="masked"):
        check_policy(vlek, parse_policy({"vmpl": 1, "chip_ids": ["11" * 64]}))
    masked = forge(milan, key_info=KeyInfo(2))  # MASK_CHIP_KEY, chip ID still present
    chip = milan.report.chip_id.hex()
    with pytest.raises(PolicyError, match="masked"):
        check_policy(masked, parse_policy({"chip_ids": [chip]}))
    assert failed(milan, {"chip_ids": ["11" * 64, chip.upper()]}) == []


def test_turin_chip_ids_are_eight_bytes(milan: VerifiedReport) -> None:
    turin = forge(milan, chip_id=bytes.fromhex(MILAN_CHIP_PREFIX) + bytes(56))
    assert failed(turin, {"chip_ids": [MILAN_CHIP_PREFIX]}) == []
    assert failed(turin, {"chip_ids": [MILAN_CHIP_PREFIX + "00" * 56]}) == []
    assert failed(turin, {"chip_ids": ["0102030405060708"]}) == ["chip-id"]


# REPORT_DATA


def test_report_data_binding_from_the_caller(milan: VerifiedReport) -> None:
    data = milan.report.report_data
    check_policy(milan, Policy(), report_data=data)
    flipped = bytes([data[0]]) + data[1:63] + bytes([data[63] ^ 1])
    with pytest.raises(PolicyError) as info:
        check_policy(milan, Policy(), report_data=flipped)
    assert info.value.check == "report-data"
    assert data.hex() not in str(info.value)
    assert flipped.hex() not in str(info.value)
    for size in (0, 32, 63, 65):
        with pytest.raises(ValueError, match="64 bytes"):
            check_policy(milan, Policy(), report_data=bytes(size))


def test_report_data_precedence(milan: VerifiedReport) -> None:
    data = milan.report.report_data
    other = bytes(64)
    check_policy(milan, Policy(report_data=data))  # policy only
    check_policy(milan, Policy(report_data=data), report_data=data)  # both, equal
    assert failed(milan, {"report_data": other.hex()}) == ["report-data"]
    # both given and different: a contradiction, whichever one the report matches
    with pytest.raises(FormatError, match="differs from the caller's binding"):
        check_policy(milan, Policy(report_data=other), report_data=data)
    with pytest.raises(FormatError, match="differs from the caller's binding"):
        policy_failures(milan, Policy(report_data=data), report_data=other)


def test_report_data_is_compared_in_constant_time(
    milan: VerifiedReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(policy_module, "hmac", SimpleNamespace(compare_digest=spy))
    data = milan.report.report_data
    check_policy(milan, Policy(), report_data=data)
    assert (data, data) in calls


# ------------------------------------------------------------------------- schema


def test_defaults() -> None:
    policy = parse_policy({})
    assert policy == Policy()
    assert policy.allow_debug is False
    assert policy.allow_migration_agent is False
    assert policy.allow_smt is True
    assert policy.vmpl == (0,)
    assert policy.measurements is None
    assert policy.signing_keys == (SigningKey.VCEK, SigningKey.VLEK)
    assert policy.tcb == TcbMinimum(which=("reported",))
    assert policy.min_abi == (0, 0)
    assert policy.report_data is None


def test_normalisation() -> None:
    policy = parse_policy(
        {
            "measurements": ["AB" * 48, "ab" * 48],
            "vmpl": [1, 0, 1],
            "signing_keys": ["VLEK", "vlek"],
            "tcb": {"which": "launch"},
            "family_ids": None,  # JSON null: the rule is off
        }
    )
    assert policy.measurements == (b"\xab" * 48,)
    assert policy.vmpl == (1, 0)
    assert policy.signing_keys == (SigningKey.VLEK,)
    assert policy.tcb.which == ("launch",)
    assert policy.family_ids is None
    assert parse_policy({"vmpl": 2}) == parse_policy({"vmpl": [2]})


H48, H16, H32, H64 = "00" * 48, "00" * 16, "00" * 32, "00" * 64
INVALID: list[tuple[dict[Any, Any], str]] = [
    # unknown keys
    ({"measurment": [H48]}, "measurment: unknown key (did you mean measurements?)"),
    ({"tcb": {"snpp": 1}}, "tcb.snpp: unknown key (did you mean tcb.snp?)"),
    ({"whatever": 1}, "whatever: unknown key"),
    ({3: 1}, "3: keys must be strings"),
    ({"tcb": {None: 1}}, "tcb.None: keys must be strings"),
    # wrong types
    ({"schema": "1"}, "schema: expected an integer, not a string"),
    ({"measurements": H48}, "measurements: expected a list of hex strings, not a string"),
    ({"measurements": [48]}, "measurements[0]: expected a hex string, not an integer"),
    ({"tcb": 3}, "tcb: expected a table, not an integer"),
    ({"tcb": {"which": 1}}, "tcb.which: expected a list of names, not an integer"),
    ({"tcb": {"which": [1]}}, "tcb.which[0]: expected a string, not an integer"),
    ({"tcb": {"snp": "8"}}, "tcb.snp: expected an integer, not a string"),
    ({"tcb": {"microcode": 1.0}}, "tcb.microcode: expected an integer, not a float"),
    ({"tcb": {"tee": True}}, "tcb.tee: expected an integer, not a boolean"),
    ({"allow_debug": 0}, "allow_debug: expected true or false, not an integer"),
    ({"allow_smt": None}, "allow_smt: expected true or false, not null"),
    ({"allow_migration_agent": "no"}, "allow_migration_agent: expected true or false"),
    ({"vmpl": "0"}, "vmpl: expected a list of integers, not a string"),
    ({"vmpl": [0, False]}, "vmpl[1]: expected an integer, not a boolean"),
    ({"min_guest_svn": 1.5}, "min_guest_svn: expected an integer, not a float"),
    ({"min_abi": 1.51}, 'min_abi: expected "major.minor"'),
    ({"min_abi": "1"}, 'min_abi: expected "major.minor"'),
    ({"min_abi": "1.51.0"}, 'min_abi: expected "major.minor"'),
    ({"signing_keys": "vcek"}, "signing_keys: expected a list of key names, not a string"),
    ({"signing_keys": ["vcek", "none"]}, 'signing_keys[1]: expected "vcek" or "vlek"'),
    ({"signing_keys": [0]}, 'signing_keys[0]: expected "vcek" or "vlek"'),
    ({"report_data": 0}, "report_data: expected a hex string, not an integer"),
    ({"chip_ids": {"a": H64}}, "chip_ids: expected a list of hex strings, not a table"),
    # bad hex
    ({"measurements": ["0" * 95]}, "measurements[0]: expected hex digits"),
    ({"measurements": ["0x" + "00" * 47]}, "measurements[0]: expected hex digits"),
    ({"host_data": [H32, "zz" * 32]}, "host_data[1]: expected hex digits"),
    ({"image_ids": ["00 " * 16]}, "image_ids[0]: expected hex digits"),
    ({"report_data": "\u0661" * 128}, "report_data: expected hex digits"),  # Arabic-Indic 1
    # wrong lengths
    ({"measurements": [H48, "00" * 47]}, "measurements[1]: 47 bytes (94 hex digits), expected 96"),
    ({"measurements": ["00" * 49]}, "measurements[0]: 49 bytes"),
    ({"family_ids": ["00" * 15]}, "family_ids[0]: 15 bytes"),
    ({"image_ids": [H32]}, "image_ids[0]: 32 bytes"),
    ({"host_data": [H48]}, "host_data[0]: 48 bytes"),
    ({"id_key_digests": ["11" * 32]}, "id_key_digests[0]: 32 bytes"),
    ({"author_key_digests": [""]}, "author_key_digests[0]: 0 bytes"),
    ({"chip_ids": ["11" * 32]}, "chip_ids[0]: 32 bytes (64 hex digits), expected 128 or 16"),
    ({"report_data": H32}, "report_data: 32 bytes (64 hex digits), expected 128 hex digits"),
    # out of range, negative numbers included
    ({"tcb": {"bootloader": -1}}, "tcb.bootloader: -1 is outside 0-255"),
    ({"tcb": {"fmc": 256}}, "tcb.fmc: 256 is outside 0-255"),
    ({"vmpl": -1}, "vmpl: -1 is outside 0-3"),
    ({"vmpl": [0, 4]}, "vmpl: 4 is outside 0-3"),
    ({"min_guest_svn": -1}, "min_guest_svn: -1 is outside 0-4294967295"),
    ({"min_guest_svn": 2**32}, "min_guest_svn: 4294967296 is outside"),
    ({"min_abi": "1.256"}, "min_abi (minor): 256 is outside 0-255"),
    ({"min_abi": "-1.0"}, 'min_abi: expected "major.minor"'),
    # integers too long for repr() (no TOML or JSON decoder makes them, a caller's dict may)
    ({"min_guest_svn": 10**5000}, "min_guest_svn: an integer is outside"),
    ({"min_abi": 10**5000}, 'min_abi: expected "major.minor" such as "1.51", not an integer'),
    ({"signing_keys": [[10**5000]]}, 'signing_keys[0]: expected "vcek" or "vlek", not a list'),
    ({10**5000: 1}, "an integer: keys must be strings"),
    ({"x" * 100: 1}, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...: unknown key"),
    ({"tcb": {"which": "latest"}}, "tcb.which: 'latest' is not one of reported"),
    ({"tcb": {"which": ["launch", "launch"]}}, "tcb.which: a TCB is named twice"),
    # empty and all-zero allow-lists
    ({"measurements": []}, "measurements: an empty list allows nothing"),
    ({"vmpl": []}, "vmpl: an empty list allows nothing"),
    ({"signing_keys": []}, "signing_keys: an empty list allows nothing"),
    ({"tcb": {"which": []}}, "tcb.which: an empty list allows nothing"),
    ({"id_key_digests": [H48]}, "id_key_digests[0]: an all-zero value cannot be allow-listed"),
    ({"author_key_digests": [H48]}, "author_key_digests[0]: an all-zero value"),
    ({"chip_ids": ["00" * 8]}, "chip_ids[0]: an all-zero value"),
    # products
    ({"products": "Milan"}, "products: expected a list of product names, not a string"),
    ({"products": []}, "products: an empty list allows nothing"),
    ({"products": ["Milan", "Rome"]}, 'products[1]: expected "Milan", "Genoa" or "Turin"'),
    ({"products": [3]}, 'products[0]: expected "Milan", "Genoa" or "Turin", not 3'),
    # ID block rules without a pinned ID or author key (the host signs the ID block)
    ({"min_guest_svn": 1}, "min_guest_svn: comes from the ID block, which the host signs"),
    ({"family_ids": [H16]}, "family_ids: comes from the ID block"),
    ({"image_ids": [H16]}, "image_ids: comes from the ID block"),
    ({"image_ids": [H16], "id_key_digests": None}, "image_ids: comes from the ID block"),
]


@pytest.mark.parametrize(("doc", "message"), INVALID, ids=[m.split(":")[0] for _, m in INVALID])
def test_schema_errors_name_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_policy(doc, source="p.toml")
    assert type(info.value) is FormatError
    assert str(info.value).startswith(f"p.toml: {message}")


def test_unsupported_schema_version() -> None:
    with pytest.raises(UnsupportedVersionError, match="schema: version 2 is not supported"):
        parse_policy({"schema": 2})
    assert parse_policy({"schema": 1}) == Policy()


@pytest.mark.parametrize("doc", [[], "measurements", 1, None])
def test_a_document_must_be_a_table(doc: Any) -> None:
    with pytest.raises(FormatError, match="expected a table"):
        parse_policy(doc)


def test_policy_constructor_validates() -> None:
    with pytest.raises(ValueError, match=r"measurements\[0\]: 3 bytes"):
        Policy(measurements=(b"abc",))
    with pytest.raises(ValueError, match="vmpl: 4 is outside"):
        Policy(vmpl=(4,))
    with pytest.raises(TypeError, match="allow_debug: expected a bool"):
        Policy(allow_debug=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="signing_keys"):
        Policy(signing_keys=(SigningKey.NONE,))
    with pytest.raises(ValueError, match="report_data: 63 bytes"):
        Policy(report_data=bytes(63))
    with pytest.raises(ValueError, match=r"tcb\.snp: 256"):
        TcbMinimum(snp=256)
    with pytest.raises(ValueError, match="products"):
        Policy(products=())
    with pytest.raises(TypeError, match="products"):
        Policy(products=("Milan",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="family_ids: comes from the ID block"):
        Policy(family_ids=(bytes(16),))
    with pytest.raises(ValueError, match="min_guest_svn: comes from the ID block"):
        Policy(min_guest_svn=1)


@pytest.mark.parametrize(
    "rule",
    [{"min_guest_svn": 4}, {"family_ids": ["01" * 16]}, {"image_ids": ["02" * 16]}],
    ids=["min_guest_svn", "family_ids", "image_ids"],
)
def test_id_block_rules_need_a_pinned_id_or_author_key(
    milan: VerifiedReport, tmp_path: Path, rule: dict[str, Any]
) -> None:
    """The host signs the ID block with any key it likes: its fields alone prove nothing."""
    (key,) = rule
    with pytest.raises(FormatError, match=f"^policy: {key}: comes from the ID block"):
        parse_policy(rule)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(rule))
    with pytest.raises(FormatError, match=f"{key}: comes from the ID block"):
        load_policy(path)
    digest = "11" * 48
    assert getattr(parse_policy({**rule, "id_key_digests": [digest]}), key)
    assert getattr(parse_policy({**rule, "author_key_digests": [digest]}), key)
    assert parse_policy({"min_guest_svn": 0}) == Policy()  # 0 is no rule
    # the review's case: a host's own ID key passes no policy that pins the owner's
    forged = forge(
        milan, family_id=b"\1" * 16, image_id=b"\2" * 16, guest_svn=2**32 - 1,
        id_key_digest=b"\x33" * 48,
    )  # fmt: skip
    pinned = {**rule, "id_key_digests": [milan.report.id_key_digest.hex()]}
    assert "id-key" in failed(forged, pinned)


# ------------------------------------------------------------------------- files


def test_the_documented_toml_example_accepts_the_report_it_describes(
    milan: VerifiedReport, tmp_path: Path
) -> None:
    (example,) = doc_blocks("toml")
    path = tmp_path / "policy.toml"
    path.write_text(example)
    policy = load_policy(path)
    assert policy.measurements == (bytes.fromhex(MILAN_MEASUREMENT),)
    assert policy.tcb == TcbMinimum(("reported", "committed", "launch"), **MILAN_TCB)
    assert policy.signing_keys == (SigningKey.VCEK,)
    assert policy.products == (Product.MILAN,)
    assert policy.min_guest_svn == 4
    assert policy.id_key_digests == (milan.report.id_key_digest,)
    check_policy(milan, policy, report_data=milan.report.report_data)
    assert failed(milan, {**policy_to_dict(policy), "min_guest_svn": 5}) == ["guest-svn"]
    assert failed(milan, {**policy_to_dict(policy), "products": ["Turin"]}) == ["product"]


def test_the_documented_json_example(tmp_path: Path) -> None:
    (example,) = doc_blocks("json")
    path = tmp_path / "policy.json"
    path.write_text(example)
    policy = load_policy(path)
    assert policy.tcb.which == ("reported",)
    assert policy.tcb.microcode == 115
    assert policy.vmpl == (0,)
    assert policy.products == (Product.MILAN,)


def test_toml_and_json_files_load_the_same_policy(tmp_path: Path) -> None:
    toml = 'measurements = ["' + "ab" * 48 + '"]\nvmpl = [0, 1]\n\n[tcb]\nsnp = 8\n'
    doc = {"measurements": ["ab" * 48], "vmpl": [0, 1], "tcb": {"snp": 8}}
    (tmp_path / "p.toml").write_text(toml)
    (tmp_path / "p.json").write_text(json.dumps(doc))
    (tmp_path / "toml-policy").write_text(toml)
    (tmp_path / "json-policy.conf").write_text(json.dumps(doc))
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    expected = parse_policy(doc)
    assert expected.tcb.snp == 8
    assert expected.vmpl == (0, 1)
    for name in ("p.toml", "p.json", "toml-policy", "json-policy.conf", "bom.json"):
        assert load_policy(tmp_path / name) == expected
        assert load_policy(str(tmp_path / name)) == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.toml", b"vmpl = ", "not valid TOML"),
        ("p.toml", b'{"vmpl": 0}', "not valid TOML"),  # the suffix decides
        ("p.json", b"vmpl = 0", "not valid JSON"),
        ("p.json", b'{"vmpl": 0, "vmpl": 1}', "vmpl: the key appears twice"),
        ("p.json", b"[1]", "expected a table (JSON object), not a list"),
        ("p.json", b"1" * 5000, "not valid JSON"),  # longer than int() takes
        ("p.json", b"[" * 100_000, "not valid JSON"),  # too deep
        ("p.toml", b"\xff\xfe", "not UTF-8"),
        ("p.policy", b"vmpl = [", "neither TOML"),
        ("p.toml", b'vmpl = 0\n[tcb]\nmicrocode = "115"\n', "tcb.microcode: expected an integer"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FormatError, match=re.escape(message)) as info:
        load_policy(path)
    assert str(info.value).startswith(str(path))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read the policy"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(FormatError, match="cannot read the policy"):
        load_policy(tmp_path)  # a directory


# ------------------------------------------------------------------------- round trip


def _hexes(size: int, *, nonzero: bool = False) -> st.SearchStrategy[str]:
    values = st.binary(min_size=size, max_size=size)
    return (values.filter(any) if nonzero else values).map(bytes.hex)


def _lists(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(strategy, min_size=1, max_size=3)


def _pin_id_key(doc: dict[str, Any]) -> dict[str, Any]:
    """An ID block rule needs a pinned ID or author key: add one where the rule has none."""
    id_block = doc.get("min_guest_svn") or "family_ids" in doc or "image_ids" in doc
    if id_block and "id_key_digests" not in doc and "author_key_digests" not in doc:
        return {**doc, "id_key_digests": ["11" * 48]}
    return doc


VALID_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "schema": st.just(1),
        "measurements": _lists(_hexes(48)),
        "tcb": st.fixed_dictionaries(
            {},
            optional={
                "which": st.sampled_from(TCB_WHICH)
                | st.lists(st.sampled_from(TCB_WHICH), min_size=1, unique=True),
                **{name: st.integers(0, 255) for name in TCB_COMPONENTS},
            },
        ),
        "allow_debug": st.booleans(),
        "allow_migration_agent": st.booleans(),
        "allow_smt": st.booleans(),
        "vmpl": st.integers(0, 3) | st.lists(st.integers(0, 3), min_size=1),
        "min_guest_svn": st.integers(0, 2**32 - 1),
        "min_abi": st.tuples(st.integers(0, 255), st.integers(0, 255)).map("{0[0]}.{0[1]}".format),
        "family_ids": _lists(_hexes(16)),
        "image_ids": _lists(_hexes(16)),
        "host_data": _lists(_hexes(32)),
        "id_key_digests": _lists(_hexes(48, nonzero=True)),
        "author_key_digests": _lists(_hexes(48, nonzero=True)),
        "chip_ids": _lists(_hexes(64, nonzero=True) | _hexes(8, nonzero=True)),
        "signing_keys": st.lists(st.sampled_from(["vcek", "vlek", "VCEK"]), min_size=1),
        "products": st.none()
        | st.lists(st.sampled_from(["Milan", "Genoa", "Turin", "turin"]), min_size=1),
        "report_data": _hexes(64),
    },
).map(_pin_id_key)


@given(VALID_DOCS)
def test_valid_documents_round_trip(doc: dict[str, Any]) -> None:
    policy = parse_policy(doc)
    out = policy_to_dict(policy)
    assert parse_policy(out) == policy
    assert parse_policy(json.loads(json.dumps(out))) == policy
    for key, value in doc.items():  # what was set is what is written back
        if key in ("measurements", "family_ids", "image_ids", "host_data"):
            assert out[key] == list(dict.fromkeys(value))
        elif key in ("allow_debug", "allow_migration_agent", "allow_smt", "min_abi"):
            assert out[key] == value
        elif key == "products":
            titled = None if value is None else [name.title() for name in value]
            assert out[key] == (None if titled is None else list(dict.fromkeys(titled)))


def test_policy_to_dict_writes_every_key() -> None:
    out = policy_to_dict(Policy())
    assert out == {
        "schema": 1,
        "measurements": None,
        "tcb": {
            "which": ["reported"],
            "bootloader": 0, "tee": 0, "snp": 0, "microcode": 0, "fmc": 0,
        },
        "allow_debug": False,
        "allow_migration_agent": False,
        "allow_smt": True,
        "vmpl": [0],
        "min_guest_svn": 0,
        "min_abi": "0.0",
        "family_ids": None,
        "image_ids": None,
        "host_data": None,
        "id_key_digests": None,
        "author_key_digests": None,
        "chip_ids": None,
        "signing_keys": ["vcek", "vlek"],
        "products": None,
        "report_data": None,
    }  # fmt: skip
    assert parse_policy(out) == Policy()


# ------------------------------------------------------------------------- junk

_KEYS = [*policy_to_dict(Policy()), *TCB_COMPONENTS, "which"]
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**400), 10**400)
    | st.sampled_from([1, -1]).map(lambda sign: sign * 10**5000)  # too long for repr()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["vcek", "reported", "1.51", "0.0", "00" * 8, "00" * 48, "ab" * 64])
    | _hexes(16)
    | _hexes(48)
)
JUNK = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_HUGE = st.sampled_from([1, -1]).map(lambda sign: sign * 10**5000)  # too long for repr()
JUNK_DOCS = st.dictionaries(
    st.sampled_from(_KEYS) | st.text(max_size=12) | st.integers() | _HUGE | st.none(),
    JUNK,
    max_size=6,
)
NEAR_VALID = st.tuples(VALID_DOCS, st.sampled_from(_KEYS), JUNK).map(lambda t: {**t[0], t[1]: t[2]})


@given(JUNK_DOCS | NEAR_VALID | JUNK)
def test_junk_parses_or_raises_format_error(doc: Any) -> None:
    try:
        policy = parse_policy(doc)
    except FormatError as exc:
        error = exc
    else:
        assert parse_policy(policy_to_dict(policy)) == policy
        return
    assert str(error).startswith("policy: ")


_KEY_PATHS = [*policy_to_dict(Policy()), *(f"tcb.{key}" for key in ("which", *TCB_COMPONENTS))]


@pytest.mark.parametrize("key", _KEY_PATHS)
@given(value=JUNK | st.lists(JUNK, min_size=1, max_size=3))
def test_junk_under_each_key_parses_or_raises_format_error(key: str, value: Any) -> None:
    outer, _, inner = key.partition(".")
    doc = {outer: {inner: value}} if inner else {outer: value}
    try:
        parse_policy(doc)
    except FormatError as exc:
        error = exc
    else:
        return
    assert str(error).startswith(f"policy: {key}")


# ------------------------------------------------------------------------- documentation


@pytest.mark.parametrize(
    "text",
    [DOC.read_text(), policy_module.__doc__ or ""],
    ids=["docs/attestation-policy.md", "module docstring"],
)
def test_every_key_and_check_is_documented(text: str) -> None:
    keys = [key for key in policy_to_dict(Policy()) if key != "tcb"]
    for key in [*keys, *TCB_COMPONENTS, "which"]:
        assert re.search(rf"\b{key}\b", text), key
    for check in CHECKS:
        assert f"[{check}]" in text or f"`{check}`" in text, check


def test_the_documented_order_is_the_order_of_checks() -> None:
    section = DOC.read_text().split("## Order of the checks", 1)[1].split("\n## ", 1)[0]
    (order,) = [part for part in section.split("\n\n") if part.startswith("`signing-key`")]
    assert tuple(re.findall(r"`([a-z-]+)`", order)) == CHECKS
