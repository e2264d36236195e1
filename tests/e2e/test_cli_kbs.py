"""`cvmstore kbs` as an operator runs it: a subprocess against a real KBS on loopback (SQLite).

Every admin action runs against `tests.kbs.live` (uvicorn in a thread of this process), and
what it did is checked in the KBS's own service; --json output is parsed. Failures exit with
their documented status: a wrong token 43, no token 2, nothing listening 41, a policy the KBS
refuses with its detail. `kbs token create` writes a working token (mode 0600) without ever
printing it, and `kbs serve` runs as a real process that stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cvmstore.cli import kbs as kbs_cli
from cvmstore.cli.main import build_parser
from cvmstore.kbs import server
from cvmstore.kbs.storage import open_repository
from tests.e2e.test_cli_igvm import DIGEST, NATIVE_ZERO_DIGEST, example, write
from tests.e2e.test_cli_image import Proc, cvmstore, fails, ok
from tests.kbs.live import LiveKbs, free_port, live_kbs

MEASUREMENT = "ab" * 48
OTHER = "cd" * 48
SECRET = b"disk key \x00\xff that only an attested guest may read"


@dataclass
class Kbs:
    """A live KBS and how the command line reaches it (URL and token file by environment)."""

    live: LiveKbs
    dir: Path

    @property
    def token_file(self) -> Path:
        return self.live.config.data_dir / server.ADMIN_TOKEN_FILE

    @property
    def env(self) -> dict[str, str]:
        return {"CVMSTORE_KBS_URL": self.live.url, "CVMSTORE_KBS_TOKEN_FILE": str(self.token_file)}

    def admin(
        self, *args: str | Path, stdin: bytes = b"", env: Mapping[str, str] | None = None
    ) -> Proc:
        return cvmstore("kbs", "admin", *args, stdin=stdin, env={**self.env, **(env or {})})

    def text(self, *args: str | Path, stdin: bytes = b"") -> str:
        return ok(self.admin(*args, stdin=stdin)).stdout.decode()

    def json(self, *args: str | Path, stdin: bytes = b"") -> Any:
        return json.loads(ok(self.admin("--json", *args, stdin=stdin)).stdout)

    def file(self, name: str, data: str | bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path


@pytest.fixture
def kbs(tmp_path: Path) -> Iterator[Kbs]:
    data = tmp_path / "kbs-data"
    data.mkdir()
    repository = open_repository(f"sqlite:///{data / 'kbs.db'}")
    try:
        with live_kbs(data, repository) as live:
            assert live.admin_token
            yield Kbs(live, tmp_path)
    finally:
        repository.close()


def unsealed(kbs: Kbs, path: str) -> bytes | None:
    sealed = kbs.live.service.repository.get_resource(path)
    return None if sealed is None else kbs.live.service.sealer.unseal(f"resource:{path}", sealed)


# ---------------------------------------------------------------- resources


def test_resources_set_list_delete(kbs: Kbs) -> None:
    secret = kbs.file("disk.key", SECRET)
    assert kbs.text("set-resource", "default/key/disk", secret) == (
        f"set default/key/disk ({len(SECRET)} bytes)\n"
    )
    assert unsealed(kbs, "default/key/disk") == SECRET
    # from stdin; the other resource stays
    assert kbs.json("set-resource", "default/key/other", "-", stdin=b"two") == {
        "resource": "default/key/other",
        "size": 3,
    }
    assert unsealed(kbs, "default/key/other") == b"two"
    assert kbs.text("list-resources") == "default/key/disk\ndefault/key/other\n"
    assert kbs.json("list-resources") == {"resources": ["default/key/disk", "default/key/other"]}
    # the secret itself never comes back through the admin command line
    assert SECRET not in ok(kbs.admin("list-resources", "--json")).stdout

    assert kbs.text("delete-resource", "default/key/disk") == "deleted default/key/disk\n"
    assert unsealed(kbs, "default/key/disk") is None
    fails(kbs.admin("delete-resource", "default/key/disk"), 44, "HTTP 404", "no resource at")
    assert kbs.json("delete-resource", "default/key/other") == {
        "resource": "default/key/other",
        "deleted": True,
    }
    assert kbs.text("list-resources") == "(no resources)\n"


def test_resource_paths_and_files_are_checked_locally(kbs: Kbs) -> None:
    secret = kbs.file("disk.key", SECRET)
    for bad in ("default/key", "default/key/disk?x=1", "default/../disk"):
        fails(kbs.admin("set-resource", bad, secret), 2, "resource path")
    fails(kbs.admin("delete-resource", "x/y"), 2, "REPOSITORY/TYPE/TAG")
    fails(kbs.admin("set-resource", "a/b/c", kbs.dir / "missing"), 2, "cannot read resource file")
    fails(
        kbs.admin("set-resource", "a/b/c", kbs.file("empty", b"")), 2, "a resource cannot be empty"
    )
    # a volume's root secret is the volume's: the KBS refuses with its reason
    fails(kbs.admin("set-resource", "cvmstore/volume/x", secret), 40, "HTTP 409", "volume create")
    assert kbs.live.service.repository.list_resources() == []


# ---------------------------------------------------------------- policies


def test_set_and_show_the_attestation_policy(kbs: Kbs) -> None:
    shown = kbs.text("show-policy")
    assert shown.startswith("attestation policy (the built-in default; set one with set-policy):")
    assert re.search(r"^  measurements +null$", shown, re.MULTILINE)
    assert shown.endswith("reference measurements: none\n")
    assert kbs.json("show-policy")["default"] is True

    policy = kbs.file("policy.toml", f'measurements = ["{MEASUREMENT}"]\nallow_smt = false\n')
    assert kbs.text("set-policy", policy) == (
        "attestation policy set (0 reference measurements registered)\n"
    )
    answer = kbs.json("set-policy", "-", stdin=policy.read_bytes())
    assert answer["default"] is False
    assert answer["attestation-policy"]["measurements"] == [MEASUREMENT]
    assert answer["attestation-policy"]["allow_smt"] is False
    shown = kbs.text("show-policy")
    assert shown.startswith("attestation policy (set with set-policy):")
    assert re.search(r"^  allow_smt +false$", shown, re.MULTILINE)
    assert kbs.json("show-policy") == answer
    stored = kbs.live.service.repository.get_policy("attestation")
    assert stored is not None
    assert json.loads(stored)["allow_smt"] is False


def test_a_policy_the_kbs_refuses_shows_its_reason(kbs: Kbs) -> None:
    good = kbs.file("good.toml", "allow_smt = false\n")
    ok(kbs.admin("set-policy", good))
    before = kbs.live.service.repository.get_policy("attestation")
    bad = kbs.file("bad.toml", "allow_smt = false\nno_such_check = true\n")
    fails(kbs.admin("set-policy", bad), 40, "HTTP 400", "no_such_check", "unknown key")
    fails(kbs.admin("set-policy", kbs.file("junk.toml", "[[[")), 40, "HTTP 400", "TOML")
    fails(kbs.admin("set-resource-policy", "a/b/c", bad), 40, "HTTP 400", "no_such_check")
    assert kbs.live.service.repository.get_policy("attestation") == before
    # local problems are usage errors, before anything is sent
    fails(kbs.admin("set-policy", kbs.dir / "missing.toml"), 2, "cannot read policy file")
    fails(kbs.admin("set-policy", kbs.file("blank.toml", " \n")), 2, "is empty")


def test_set_resource_policy(kbs: Kbs) -> None:
    ok(kbs.admin("set-resource", "default/key/disk", "-", stdin=SECRET))
    policy = kbs.file("disk.toml", f'measurements = ["{OTHER}"]\nbindings = ["svsm"]\n')
    assert kbs.text("set-resource-policy", "default/key/disk", policy) == (
        "policy of default/key/disk set\n"
    )
    answer = kbs.json("set-resource-policy", "default/key/disk", policy)
    assert answer["resource"] == "default/key/disk"
    assert answer["policy"]["measurements"] == [OTHER]
    assert answer["policy"]["bindings"] == ["svsm"]
    stored = kbs.live.service.repository.get_policy("resource:default/key/disk")
    assert stored is not None
    assert json.loads(stored)["bindings"] == ["svsm"]
    fails(kbs.admin("set-resource-policy", "default/key", policy), 2, "REPOSITORY/TYPE/TAG")


# ---------------------------------------------------------------- reference measurements


def references(kbs: Kbs) -> list[str]:
    return kbs.live.service.repository.list_references("snp-measurement")


def test_add_and_delete_references(kbs: Kbs) -> None:
    assert kbs.text("add-reference", MEASUREMENT) == (
        f"reference measurement {MEASUREMENT} added\n"
    )
    assert kbs.text("add-reference", MEASUREMENT.upper()) == (
        f"reference measurement {MEASUREMENT} already registered\n"
    )
    assert kbs.json("add-reference", OTHER) == {"measurement": OTHER, "added": True, "igvm": None}
    assert sorted(references(kbs)) == [MEASUREMENT, OTHER]
    shown = kbs.text("show-policy")
    assert f"reference measurements: 2\n  {MEASUREMENT}\n  {OTHER}\n" in shown or (
        f"reference measurements: 2\n  {OTHER}\n  {MEASUREMENT}\n" in shown
    )
    assert sorted(kbs.json("show-policy")["references"]) == [MEASUREMENT, OTHER]

    assert kbs.text("delete-reference", MEASUREMENT) == (
        f"reference measurement {MEASUREMENT} withdrawn\n"
    )
    assert kbs.json("delete-reference", OTHER.upper()) == {"measurement": OTHER, "deleted": True}
    assert references(kbs) == []
    fails(kbs.admin("delete-reference", OTHER), 44, "HTTP 404", "not registered")

    for bad in ("ab" * 47, "zz" * 48, "../resources"):
        fails(kbs.admin("add-reference", bad), 2, "96 hex digits")
    for bad in ("ab" * 49, "../resources"):
        fails(kbs.admin("delete-reference", bad), 2, "96 hex digits")
    fails(kbs.admin("add-reference"), 2, "give either MEASUREMENT")
    assert references(kbs) == []


def test_add_reference_from_an_igvm_file(kbs: Kbs) -> None:
    guest = write(kbs.dir, example())
    measured = ok(cvmstore("igvm", "measure", guest)).stdout.decode().strip()
    assert measured == DIGEST  # the worked example of research §3.3
    answer = kbs.json("add-reference", "--igvm", guest, "--check-kvm")
    assert answer == {
        "measurement": measured,
        "added": True,
        "igvm": {
            "file": str(guest),
            "style": "igvm",
            "native_zero": False,
            "check_kvm": True,
            "ignore_idblock": False,
        },
    }
    assert references(kbs) == [DIGEST]
    assert kbs.text("add-reference", "--igvm", guest) == (
        f"reference measurement {DIGEST} already registered\n"
    )
    # the measurement options are igvm measure's, with the same result
    native = ok(cvmstore("igvm", "measure", guest, "--native-zero")).stdout.decode().strip()
    assert native == NATIVE_ZERO_DIGEST
    assert kbs.text(
        "add-reference", "--native-zero", "--igvm", guest, "--style", "igvmmeasure"
    ) == (f"reference measurement {NATIVE_ZERO_DIGEST} added\n")
    assert sorted(references(kbs)) == sorted([DIGEST, NATIVE_ZERO_DIGEST])


def test_add_reference_from_a_bad_igvm_file_registers_nothing(kbs: Kbs) -> None:
    wrong = bytes(range(48))
    mismatch = write(kbs.dir, example(id_block_ld=wrong), "mismatch.igvm")
    err = fails(
        kbs.admin("add-reference", "--igvm", mismatch), 3, "SNP ID block", "--ignore-idblock"
    )
    assert wrong.hex() in err
    fails(
        kbs.admin(
            "add-reference", "--igvm", write(kbs.dir, example(cr0=0x1), "kvm.igvm"), "--check-kvm"
        ),
        3,
        "--check-kvm",
    )
    fails(
        kbs.admin("add-reference", "--igvm", write(kbs.dir, b"MZ" + bytes(4094), "not.igvm")),
        4,
        "not an IGVM file",
    )
    fails(kbs.admin("add-reference", "--igvm", kbs.dir / "missing.igvm"), 2, "cannot read")
    fails(kbs.admin("add-reference", MEASUREMENT, "--igvm", mismatch), 2, "either MEASUREMENT")
    fails(kbs.admin("add-reference", MEASUREMENT, "--style", "igvmmeasure"), 2, "go with --igvm")
    assert references(kbs) == []
    # as with igvm measure, --ignore-idblock takes the file's own digest, with a warning
    proc = ok(kbs.admin("add-reference", "--igvm", mismatch, "--ignore-idblock"))
    assert b"warning" in proc.stderr
    assert references(kbs) == [DIGEST]


# ---------------------------------------------------------------- volumes and the token key


def test_volumes(kbs: Kbs) -> None:
    policy = kbs.file("vm1.toml", f'measurements = ["{MEASUREMENT}"]\n')
    assert kbs.text("volume", "create", "vm1", "--policy", policy) == (
        "volume vm1 created: root secret at cvmstore/volume/vm1, ledger version 0\n"
    )
    root = unsealed(kbs, "cvmstore/volume/vm1")
    assert root is not None
    assert len(root) == 32
    created = kbs.json("volume", "create", "vm2", "--policy", "-", stdin=policy.read_bytes())
    assert created["name"] == "vm2"
    assert created["version"] == 0
    assert created["generation"] is None
    assert created["policy"]["measurements"] == [MEASUREMENT]
    fails(
        kbs.admin("volume", "create", "vm1", "--policy", policy), 40, "HTTP 409", "already exists"
    )

    shown = kbs.text("volume", "show", "vm1")
    lines = shown.splitlines()
    assert lines[0] == "volume vm1"
    assert lines[1] == "  root secret  cvmstore/volume/vm1 (never shown)"
    assert re.fullmatch(r"  created      \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", lines[2])
    assert lines[3] == "  ledger       version 0, no commit anchored yet"
    assert lines[4].startswith(f'  policy       measurements ["{MEASUREMENT}"] (other keys')
    assert lines[5] == "  audit        none"
    assert root.hex() not in shown
    document = kbs.json("volume", "show", "vm1")
    assert document["resource"] == "cvmstore/volume/vm1"
    assert document["audit"] == []
    assert kbs.text("volume", "list") == "vm1\nvm2\n"
    assert kbs.json("volume", "list") == {"volumes": ["vm1", "vm2"]}
    assert "cvmstore/volume/vm1" in kbs.json("list-resources")["resources"]

    fails(kbs.admin("volume", "show", "vm3"), 44, "HTTP 404", "no volume named 'vm3'")
    for bad in ("../resources", "vm1?x"):
        fails(kbs.admin("volume", "show", bad), 2, "volume name")
    fails(kbs.admin("volume", "create", "vm3", "--policy", kbs.dir / "none.toml"), 2, "cannot read")
    fails(
        kbs.admin("volume", "create", "vm3", "--policy", kbs.file("b.toml", "x = 1")),
        40,
        "HTTP 400",
    )
    fails(
        kbs.admin("volume", "create", "vm3", "--policy", kbs.file("l1.toml", b"\xff\xfe")),
        2,
        "UTF-8",
    )
    assert kbs.live.service.repository.list_volumes() == ["vm1", "vm2"]


def rfc7638(jwk: dict[str, str]) -> str:
    """The thumbprint of an EC JWK, computed here from RFC 7638 §3.2 alone."""
    members = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    digest = hashlib.sha256(members.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_token_key_prints_the_key_guests_pin(kbs: Kbs) -> None:
    text = kbs.text("token-key")
    first, second = text.splitlines()
    assert first == f"thumbprint  {kbs.live.thumbprint}"
    jwk = json.loads(second.removeprefix("jwk         "))
    assert jwk["kty"] == "EC"
    assert jwk["crv"] == "P-256"
    assert rfc7638(jwk) == kbs.live.thumbprint
    document = kbs.json("token-key")
    assert document == {"jwk": jwk, "thumbprint": kbs.live.thumbprint}


# ---------------------------------------------------------------- the token and the connection


def test_a_wrong_token_exits_43(kbs: Kbs) -> None:
    wrong = kbs.file("wrong.token", "not-the-token\n")
    fails(kbs.admin("--token-file", wrong, "list-resources"), 43, "HTTP 401", "not valid")
    fails(kbs.admin("volume", "list", env={"CVMSTORE_KBS_TOKEN_FILE": str(wrong)}), 43, "HTTP 401")
    env = {"CVMSTORE_KBS_TOKEN_FILE": "", "CVMSTORE_KBS_TOKEN": "also-wrong"}
    fails(kbs.admin("add-reference", MEASUREMENT, env=env), 43)
    assert references(kbs) == []


def test_where_the_token_comes_from(kbs: Kbs) -> None:
    token = kbs.live.admin_token
    no_file = {"CVMSTORE_KBS_TOKEN_FILE": ""}
    # none at all: a usage error that says where a token comes from
    fails(
        kbs.admin("list-resources", env=no_file),
        2,
        "no admin token given",
        "--token-file",
        "admin.token",
    )
    # $CVMSTORE_KBS_TOKEN holds the token itself
    ok(kbs.admin("list-resources", env={**no_file, "CVMSTORE_KBS_TOKEN": token}))
    # --token-file wins over the environment, before or after the action
    wrong = kbs.file("wrong.token", "wrong")
    good = {"CVMSTORE_KBS_TOKEN_FILE": str(kbs.token_file)}
    fails(kbs.admin("--token-file", wrong, "list-resources", env=good), 43)
    fails(kbs.admin("list-resources", "--token-file", wrong, env=good), 43)
    ok(
        kbs.admin(
            "list-resources",
            "--token-file",
            kbs.token_file,
            env={"CVMSTORE_KBS_TOKEN_FILE": str(wrong)},
        )
    )
    # a token file that cannot be read, or holds no token: usage errors that never echo it
    fails(
        kbs.admin("--token-file", kbs.dir / "missing", "list-resources"),
        2,
        "cannot read token file",
    )
    fails(kbs.admin("--token-file", kbs.file("empty", " \n"), "list-resources"), 2, "does not hold")
    spaced = kbs.file("spaced", "two words\n")
    err = fails(kbs.admin("--token-file", spaced, "list-resources"), 2, "does not hold")
    assert "two words" not in err


def test_connection_failures(kbs: Kbs) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    fails(kbs.admin("--url", url, "list-resources"), 41, "cannot be reached", url)
    fails(kbs.admin("volume", "list", env={"CVMSTORE_KBS_URL": url}), 41, "cannot be reached")
    for bad in ("127.0.0.1:8080", "ftp://127.0.0.1/", "http://"):
        fails(kbs.admin("--url", bad, "list-resources"), 2, "KBS URL")
    fails(kbs.admin("--ca", kbs.dir / "missing.pem", "list-resources"), 2, "cannot read --ca")
    fails(kbs.admin("--ca", kbs.file("junk.pem", "junk"), "list-resources"), 2, "no PEM CA")
    # --url after the action wins over the environment
    ok(kbs.admin("list-resources", "--url", kbs.live.url, env={"CVMSTORE_KBS_URL": url}))


def test_unknown_arguments_name_the_action() -> None:
    proc = cvmstore("kbs", "admin", "volume", "list", "--bogus")
    assert proc.returncode == 2
    assert proc.stderr.endswith(
        b"cvmstore kbs admin volume list: error: unrecognized arguments: --bogus\n"
    )
    proc = cvmstore("kbs", "admin", "--bogus", "list-resources")
    assert proc.returncode == 2
    assert b"unrecognized arguments: --bogus" in proc.stderr
    for argv in (["kbs"], ["kbs", "admin"], ["kbs", "token"], ["kbs", "admin", "volume"]):
        proc = cvmstore(*argv)
        assert proc.returncode == 2, proc.stderr
        assert b"Traceback" not in proc.stderr


# ---------------------------------------------------------------- kbs token create


def test_token_create_makes_a_working_token_it_never_prints(kbs: Kbs) -> None:
    data = kbs.live.config.data_dir
    output = kbs.dir / "alice.token"
    proc = ok(
        cvmstore(
            "kbs", "token", "create", "--data-dir", data, "--label", "alice", "--output", output
        )
    )
    token = output.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert token.encode() not in proc.stdout + proc.stderr
    assert (
        proc.stdout == f"registered admin token 'alice'; written to {output} (mode 0600)\n".encode()
    )
    assert token != kbs.live.admin_token
    ok(kbs.admin("--token-file", output, "volume", "list"))

    # an existing file is kept without --force; --force replaces it with a fresh 0600 one
    output.chmod(0o644)
    fails(
        cvmstore("kbs", "token", "create", "--data-dir", data, "--output", output),
        2,
        "already exists",
        "--force",
    )
    assert output.read_text().strip() == token
    proc = ok(cvmstore("kbs", "token", "create", "--data-dir", data, "--output", output, "--force"))
    second = output.read_text().strip()
    assert second != token
    assert second.encode() not in proc.stdout + proc.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    ok(kbs.admin("--token-file", output, "list-resources"))

    # the database named by --database, or by a configuration file
    url = f"sqlite:///{data / 'kbs.db'}"
    bob = kbs.dir / "bob.token"
    ok(cvmstore("kbs", "token", "create", "--database", url, "--output", bob))
    ok(kbs.admin("--token-file", bob, "list-resources"))
    config = kbs.file("kbs.toml", f'data_dir = "{data}"\n')
    carol = kbs.dir / "carol.token"
    ok(cvmstore("kbs", "token", "create", "--config", config, "--output", carol))
    ok(kbs.admin("--token-file", carol, "list-resources"))


def test_token_create_refusals(tmp_path: Path) -> None:
    out = tmp_path / "t.token"
    fails(
        cvmstore("kbs", "token", "create", "--data-dir", tmp_path / "nope", "--output", out),
        2,
        "no KBS data directory",
    )
    fails(cvmstore("kbs", "token", "create", "--output", out, cwd=tmp_path), 2, "kbs-data")
    fails(
        cvmstore(
            "kbs", "token", "create", "--data-dir", tmp_path, "--output", tmp_path / "no" / "t"
        ),
        2,
        "no directory",
    )
    fails(
        cvmstore("kbs", "token", "create", "--data-dir", tmp_path, "--output", tmp_path),
        2,
        "already exists",
    )
    fails(
        cvmstore("kbs", "token", "create", "--database", "mysql://x/y", "--output", out),
        3,
        "database URL",
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_key = 1\n")
    fails(cvmstore("kbs", "token", "create", "--config", bad, "--output", out), 3, "unknown key")
    proc = cvmstore("kbs", "token", "create", "--data-dir", tmp_path)
    assert proc.returncode == 2
    assert b"--output" in proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------- help


def test_help_teaches() -> None:
    top = ok(cvmstore("--help")).stdout.decode()
    assert re.search(r"^    kbs +run a Key Broker Service", top, re.MULTILINE)
    serve = " ".join(ok(cvmstore("kbs", "serve", "--help")).stdout.decode().split())
    for words in (
        "127.0.0.1:8080",
        "./kbs-data",
        "DATA_DIR/kbs.db",
        "DATA_DIR/admin.token (mode 0600)",
        "master_key_file in the configuration file",
        "$CVMSTORE_KBS_MASTER_KEY_FILE",
        "$CVMSTORE_KBS_MASTER_KEY 64 hex digits",
        "DATA_DIR/master.key made (mode 0600) at the first start",
        "tls_certificate and tls_key",
        "configuration example",
        'listen = "0.0.0.0:8443"',
        "exit status: 0 stopped by SIGTERM or SIGINT",
        "6 WrongKeyError",
        "cvmstore kbs serve --config",
    ):
        assert words in serve, words
    admin = " ".join(ok(cvmstore("kbs", "admin", "--help")).stdout.decode().split())
    for words in (
        "$CVMSTORE_KBS_URL, else http://127.0.0.1:8080",
        "--token-file FILE, else $CVMSTORE_KBS_TOKEN_FILE, else $CVMSTORE_KBS_TOKEN",
        "never an argument",
        "DATA_DIR/admin.token",
        "41 KbsUnreachableError",
        "43 KbsAuthError",
        "44 ResourceNotFoundError",
        "examples:",
    ):
        assert words in admin, words
    leaves = [
        ["set-resource"],
        ["delete-resource"],
        ["list-resources"],
        ["set-policy"],
        ["show-policy"],
        ["set-resource-policy"],
        ["add-reference"],
        ["delete-reference"],
        ["volume", "create"],
        ["volume", "show"],
        ["volume", "list"],
        ["token-key"],
    ]
    # every action's own help (in process: the same parser the command line builds)
    groups = subparsers(subparsers(build_parser())["kbs"])
    for leaf in leaves:
        parser = subparsers(groups["admin"])[leaf[0]]
        if len(leaf) == 2:
            parser = subparsers(parser)[leaf[1]]
        text = " ".join(parser.format_help().split())
        assert "exit status: 0 done; 2 usage error" in text, leaf
        assert "43 KbsAuthError" in text, leaf
        assert f"examples: cvmstore kbs admin {' '.join(leaf)}" in text, leaf
    add = " ".join(ok(cvmstore("kbs", "admin", "add-reference", "--help")).stdout.decode().split())
    for words in (
        "--igvm FILE",
        "--native-zero",
        "--check-kvm",
        "--ignore-idblock",
        "3 FormatError",
        "cvmstore igvm measure",
    ):
        assert words in add, words
    token = " ".join(ok(cvmstore("kbs", "token", "create", "--help")).stdout.decode().split())
    for words in ("mode 0600", "never printed", "exit status: 0", "examples:"):
        assert words in token, words


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of `parser`'s actions, by name."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_token_file_name_matches_the_server() -> None:
    assert kbs_cli.ADMIN_TOKEN_FILE == server.ADMIN_TOKEN_FILE


# ---------------------------------------------------------------- kbs serve


def serve_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CVMSTORE_")}


def wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the KBS exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError("the KBS did not answer /healthz")


def test_serve_runs_until_sigterm_and_logs_json_without_the_token(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "kbs.toml"
    # the file says port 1 and another directory; the command line overrides both
    config.write_text('listen = "127.0.0.1:1"\ndata_dir = "elsewhere"\nlog_level = "info"\n')
    data = tmp_path / "data"
    log = tmp_path / "kbs.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cvmstore",
                "kbs",
                "serve",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data),
            ],
            env=serve_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url, log)
        token_file = data / server.ADMIN_TOKEN_FILE
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "master.key").stat().st_mode) == 0o600
        assert not (tmp_path / "elsewhere").exists()
        env = {"CVMSTORE_KBS_URL": url, "CVMSTORE_KBS_TOKEN_FILE": str(token_file)}
        ok(cvmstore("kbs", "admin", "set-resource", "default/key/k", "-", stdin=SECRET, env=env))
        assert json.loads(
            ok(cvmstore("kbs", "admin", "--json", "list-resources", env=env)).stdout
        ) == {"resources": ["default/key/k"]}
        fails(cvmstore("kbs", "admin", "volume", "show", "nope", env=env), 44)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    token = token_file.read_text().strip()
    text = log.read_text()
    assert token not in text
    assert SECRET.decode(errors="replace") not in text
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    events = [entry.get("event") for entry in entries]
    assert "admin-token" in events
    assert "ready" in events
    assert any(entry["message"] == "Shutting down" for entry in entries)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)


def test_serve_refusals(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = "nowhere"\n')
    fails(cvmstore("kbs", "serve", "--config", bad), 3, "listen", "HOST:PORT")
    fails(
        cvmstore("kbs", "serve", "--config", tmp_path / "missing.toml"),
        3,
        "cannot read KBS configuration",
    )
    fails(cvmstore("kbs", "serve", "--listen", "nowhere", cwd=tmp_path), 2, "HOST:PORT")
    fails(cvmstore("kbs", "serve", "--workers", "0", cwd=tmp_path), 2, "workers")
    key = tmp_path / "short.key"
    key.write_text("abcd\n")
    config = tmp_path / "key.toml"
    config.write_text(f'master_key_file = "{key}"\nlisten = "127.0.0.1:{free_port()}"\n')
    fails(
        cvmstore("kbs", "serve", "--config", config, "--data-dir", tmp_path / "d"), 3, "master key"
    )
    assert not (tmp_path / "kbs-data").exists()


def test_serve_on_a_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = cvmstore(
            "kbs", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", tmp_path / "d"
        )
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert "cvmstore: error: the KBS did not start" in err
    assert "address already in use" in err
    assert "Traceback" not in err
