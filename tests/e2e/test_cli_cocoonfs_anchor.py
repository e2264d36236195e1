"""`cvmstore cocoonfs -i IMAGE anchor` through `cvmstore.cli.main`, on images the Rust tool made.

Until `cli/cocoonfs.py` registers the action itself, the `wired` fixture adds it to the
`cocoonfs` group as that module will. Once the module does it, the fixture does nothing.
The KBS cases use a live KBS that trusts the root `cvmstore guest simulator-root` wrote
(`tests.e2e.test_cli_guest`), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cvmstore.cli import cocoonfs as cocoonfs_cli
from cvmstore.cli.cocoonfs_anchor import register_anchor
from cvmstore.cli.main import main
from cvmstore.cocoonfs.anchor import volume_id_for_salt
from tests.cocoonfs.conftest import KEY, Tool
from tests.cocoonfs.conftest import cocoonfs_tool as cocoonfs_tool  # the fixture: the tool
from tests.e2e.test_cli_guest import MEASUREMENT, Guest
from tests.e2e.test_cli_guest import ark as ark  # the fixture: the simulator's root file
from tests.e2e.test_cli_guest import guest as guest  # the fixture: a live KBS, volume vm1
from tests.kbs.conftest import repository as repository  # the fixture: SQLite, PostgreSQL

VOLUME_ID = volume_id_for_salt(bytes.fromhex("c0c00f5eed")).hex()


@pytest.fixture(autouse=True)
def wired(monkeypatch: pytest.MonkeyPatch) -> None:
    original = cocoonfs_cli.register

    def register(commands: Any) -> None:
        original(commands)
        group = commands.choices["cocoonfs"]
        actions = next(a for a in group._actions if isinstance(a, argparse._SubParsersAction))
        if "anchor" not in actions.choices:
            register_anchor(actions)

    monkeypatch.setattr(cocoonfs_cli, "register", register)


class Run:
    def __init__(self, capsys: pytest.CaptureFixture[str], image: Path) -> None:
        self.capsys = capsys
        self.image = image

    def __call__(self, *args: str | Path, image: Path | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        argv = ["cocoonfs", "-i", str(image or self.image), "anchor", *map(str, args)]
        try:
            code = main(argv)
        except SystemExit as exc:  # usage errors leave through argparse
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str | Path, image: Path | None = None) -> dict[str, Any]:
        code, out, err = self(*args, "--json", image=image)
        assert code == 0, err
        document: dict[str, Any] = json.loads(out)
        return document


@pytest.fixture
def image(cocoonfs_tool: Tool, tmp_path: Path) -> Path:
    path = tmp_path / "state.img"
    cocoonfs_tool.mkfs(path, "sha2", "aes", "128", "-s", "512K")
    cocoonfs_tool.write_file(path, 16, b"first state")
    return path


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], image: Path) -> Run:
    return Run(capsys, image)


def copy(path: Path, name: str) -> Path:
    target = path.with_name(name)
    shutil.copyfile(path, target)
    return target


# ---------------------------------------------------------------- a file anchor


def test_file_anchor_records_advances_and_refuses(
    cocoonfs_tool: Tool, image: Path, run: Run, tmp_path: Path
) -> None:
    anchor = f"file:{tmp_path / 'state.anchor'}"
    key = ("-K", KEY.hex())
    old = copy(image, "old.img")

    code, out, err = run(*key, "--anchor", anchor)
    assert (code, err) == (0, "")
    assert out.startswith(f"{image}: recorded: first use: update counter ")
    assert run(*key, "--anchor", anchor)[1].startswith(f"{image}: current: ")

    clone = copy(image, "clone.img")
    cocoonfs_tool.write_file(image, 16, b"the guest's state")
    cocoonfs_tool.write_file(image, 16, b"the guest's state, later")
    advanced = run.json(*key, "--anchor", anchor)
    assert advanced["status"] == "advanced"
    assert advanced["written"] is True
    assert advanced["updates"] == 2
    assert advanced["generation"] == 2
    assert advanced["volume_id"] == VOLUME_ID
    assert advanced["update_counter"] == advanced["anchored_update_counter"] + 2

    code, out, err = run(*key, "--anchor", anchor, image=old)
    assert (code, out) == (8, "")
    assert err.startswith(f"cvmstore: error: {old}: the image's update counter ")
    assert "2 updates older" in err
    assert err.count("\n") == 1

    cocoonfs_tool.write_file(clone, 16, b"the host's state")
    cocoonfs_tool.write_file(clone, 16, b"the host's state, later")
    code, out, err = run(*key, "--anchor", anchor, image=clone)
    assert (code, out) == (9, "")
    assert "is the anchored one, but its root HMAC is not" in err
    assert run.json(*key, "--anchor", anchor)["status"] == "current"


def test_check_only_writes_nothing(cocoonfs_tool: Tool, image: Path, run: Run, tmp_path: Path):
    path = tmp_path / "state.anchor"
    key = ("-k", tmp_path / "key.bin")
    (tmp_path / "key.bin").write_bytes(KEY)
    old = copy(image, "old.img")

    unanchored = run.json(*key, "--anchor", f"file:{path}", "--check-only")
    assert (unanchored["status"], unanchored["written"]) == ("unanchored", False)
    assert unanchored["anchored_update_counter"] is None
    assert not path.exists()

    run(*key, "--anchor", f"file:{path}")
    recorded = path.read_bytes()
    cocoonfs_tool.write_file(image, 16, b"next")
    code, out, _ = run(*key, "--anchor", f"file:{path}", "--check-only")
    assert code == 0
    assert out.startswith(f"{image}: ahead: 1 update newer than anchor file {path}")
    assert "not advanced (--check-only)" in out
    assert run(*key, "--anchor", f"file:{path}", "--check-only", image=old)[0] == 0
    assert path.read_bytes() == recorded

    run(*key, "--anchor", f"file:{path}")
    assert run(*key, "--anchor", f"file:{path}", "--check-only", image=old)[0] == 8


def test_refusals_before_anything_is_written(
    cocoonfs_tool: Tool, image: Path, run: Run, tmp_path: Path
) -> None:
    path = tmp_path / "state.anchor"
    anchor = ("--anchor", f"file:{path}")

    code, _, err = run("-K", "ff" * 24, *anchor)
    assert code == 6
    assert "wrong key" in err
    code, _, err = run("-K", KEY.hex(), *anchor, image=tmp_path / "missing.img")
    assert code == 2
    assert "cannot read the image" in err
    assert not path.exists()

    path.write_text(json.dumps({"volume": "00", "generation": 0, "digest": "00" * 48}))
    code, _, err = run("-K", KEY.hex(), *anchor)
    assert code == 13
    assert "belongs to volume 00" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--anchor", "none"], "use file:PATH or kbs"),
        (["--anchor", "file:"], "use file:PATH or kbs"),
        (["--anchor", "kbs:http://kbs"], "use file:PATH or kbs"),
        (["--anchor", "kbs"], "--anchor kbs needs --volume NAME"),
        (["--anchor", "file:a", "--volume", "vm1"], "--volume: only with --anchor kbs"),
        (["--anchor", "file:a", "--evidence", "simulator"], "--evidence: only with --anchor kbs"),
        (["--anchor", "kbs", "--volume", "vm1"], "no KBS given"),
        (["--anchor", "kbs", "--volume", "vm1", "--kbs", "http://k:1"], "no KBS key to pin"),
        (["--anchor", "kbs", "--volume", "../x", "--kbs", "http://k:1"], "--volume '../x'"),
        ([], "the following arguments are required: --anchor"),
    ],
)
def test_usage_errors(run: Run, args: list[str], message: str) -> None:
    code, out, err = run("-K", KEY.hex(), *args)
    assert (code, out) == (2, "")
    assert message in err


def test_a_key_is_required(run: Run) -> None:
    code, _, err = run("--anchor", "file:a")
    assert code == 2
    assert "one of the arguments -k/--key-file -K/--key is required" in err


def test_help_lists_the_anchors_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["cocoonfs", "-i", "x", "anchor", "--help"])
    text = capsys.readouterr().out
    for needle in ("file:PATH", "--check-only", "--volume NAME", "--kbs-key THUMBPRINT"):
        assert needle in text
    for code in ("8 RollbackError", "9 ForkError", "13 AnchorError"):
        assert code in " ".join(text.split())


# ---------------------------------------------------------------- the KBS ledger


def test_kbs_ledger(
    cocoonfs_tool: Tool, image: Path, run: Run, guest: Guest, tmp_path: Path
) -> None:
    # `=` keeps a thumbprint that starts with "-" (base64url) from reading as an option.
    kbs = ["--anchor", "kbs", "--kbs", guest.live.url, f"--kbs-key={guest.live.thumbprint}"]
    kbs += ["--volume", "vm1", "--evidence", "simulator", "--simulator-root", str(guest.root)]
    kbs += ["--measurement", MEASUREMENT, "--retries", "0", "-K", KEY.hex()]
    old = copy(image, "old.img")

    unanchored = run.json(*kbs, "--check-only")
    assert unanchored["status"] == "unanchored"
    assert guest.ledger_generation() is None
    recorded = run.json(*kbs)
    assert recorded["status"] == "recorded"
    assert recorded["anchor"] == "the KBS ledger of volume 'vm1'"
    clone = copy(image, "clone.img")
    cocoonfs_tool.write_file(image, 16, b"the guest's state")
    assert run.json(*kbs, "--check-only")["status"] == "ahead"
    assert guest.ledger_generation() == 0
    code, out, err = run(*kbs)
    assert code == 0, err
    assert out.startswith(f"{image}: advanced: 1 update since it was anchored")
    assert guest.ledger_generation() == 1

    code, _, err = run(*kbs, image=old)
    assert code == 8
    assert "is 1 update older than the anchored counter" in err
    cocoonfs_tool.write_file(clone, 16, b"the host's state")
    assert run(*kbs, image=clone)[0] == 9
    assert run(*kbs, "--kbs-key", "A" * 43)[0] == 45  # a forged KBS
    assert run(*kbs, "--measurement", "cd" * 48)[0] == 43  # the policy refuses it
    assert guest.ledger_generation() == 1
    assert run.json(*kbs)["status"] == "current"
