"""`cvmstore cocoonfs` as a script runs it: a subprocess against images the Rust tool made.

Every listing and file is compared with what the real `cocoonfs` prints for the same image,
with the same flags, so scripts can swap the tool for `cvmstore cocoonfs`.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvmstore.cocoonfs.image import CocoonFsImage
from cvmstore.cocoonfs.layout import decode_extent_ptr
from tests.cocoonfs.conftest import KEY, TOOL, Tool
from tests.conftest import require_or_skip
from tests.e2e.test_cli_image import Proc, cvmstore, fails, ok

TPM_NVCHIP = 1 << 32
AUX_UUID = uuid.UUID("12345678-1234-5678-9abc-def012345678")


@dataclass
class Made:
    """An image made by the real tool, its key file, the tool, and what was written."""

    tool: Tool
    image: Path
    key_file: Path
    files: dict[int, tuple[bytes, int]]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    require_or_skip(TOOL is not None and TOOL.is_file(), "the cocoonfs tool (cocoonfs-cli 0.1.3)")
    assert TOOL is not None
    workdir = tmp_path_factory.mktemp("cli-cocoonfs")
    tool = Tool(TOOL, workdir)
    image = workdir / "state.img"
    tool.mkfs(image, "sha2", "aes", "256", "-s", "1M")
    files = {
        16: (os.urandom(5000), 0x03),
        17: (os.urandom(20_000), 0x00),
        18: (b"", 0xFF),
        TPM_NVCHIP: (os.urandom(16384), 0x00),
    }
    for inode, (data, flags) in files.items():
        tool.write_file(image, inode, data, flags)
    for payload in (b"first", b"second"):
        tool.run(
            image, "aux-fs-metadata", "edit", "-K", KEY.hex(), "add-entry", str(AUX_UUID),
            stdin=payload,
        )  # fmt: skip
    key_file = workdir / "key.bin"
    key_file.write_bytes(KEY)
    return Made(tool, image, key_file, files)


def copy(made: Made, tmp_path: Path) -> Path:
    target = tmp_path / "copy.img"
    target.write_bytes(made.image.read_bytes())
    return target


def test_list_files_matches_the_tool(made: Made) -> None:
    ours = ok(cvmstore("cocoonfs", "-i", made.image, "list-files", "-K", KEY.hex())).stdout
    theirs = made.tool.run(made.image, "list-files", "-K", KEY.hex())
    assert ours == theirs
    assert ours.decode().splitlines()[0] == "16 0x03"


def test_read_file_matches_the_tool_with_both_key_flags(made: Made, tmp_path: Path) -> None:
    for inode, (data, _) in made.files.items():
        ours = ok(
            cvmstore(
                "cocoonfs", "-i", made.image, "-f", "read-file", "-k", made.key_file, str(inode)
            )
        ).stdout
        assert ours == data == made.tool.read_file(made.image, inode)
    out = tmp_path / "nvchip"
    proc = ok(
        cvmstore(
            "cocoonfs", "--image", made.image, "read-file", str(TPM_NVCHIP), "-n",
            "--key", KEY.hex(), "-o", out,
        )
    )  # fmt: skip
    assert proc.stdout == b""
    assert out.read_bytes() == made.files[TPM_NVCHIP][0]


def test_list_files_json(made: Made) -> None:
    proc = ok(cvmstore("cocoonfs", "-i", made.image, "list-files", "-k", made.key_file, "--json"))
    assert json.loads(proc.stdout) == [
        {"inode": n, "flags": f, "size": len(d)} for n, (d, f) in sorted(made.files.items())
    ]


def test_info(made: Made) -> None:
    proc = ok(cvmstore("cocoonfs", "-i", made.image, "info", "-k", made.key_file, "--json"))
    document = json.loads(proc.stdout)
    assert document["file_count"] == len(made.files)
    assert document["image_size"] == 1 << 20
    assert document["algorithms"]["block_cipher"] == "AES"
    assert document["algorithms"]["block_cipher_key_bits"] == 256
    assert document["algorithms"]["auth_tree_node_hash"] == "SHA512"
    assert document["geometry"]["allocation_block_size"] == 128
    assert isinstance(document["update_counter"], int)
    text = ok(cvmstore("cocoonfs", "-i", made.image, "info", "-K", KEY.hex())).stdout.decode()
    assert f"update counter  {document['update_counter']}" in text
    assert KEY.hex() not in text
    assert KEY.hex() not in proc.stdout.decode()


def test_fsck_clean(made: Made) -> None:
    text = ok(cvmstore("cocoonfs", "-i", made.image, "fsck", "-k", made.key_file)).stdout
    assert b"clean" in text
    proc = ok(cvmstore("cocoonfs", "-i", made.image, "fsck", "-k", made.key_file, "--json"))
    document = json.loads(proc.stdout)
    assert document["clean"] is True
    assert document["files"] == len(made.files)
    assert document["bytes"] == sum(len(d) for d, _ in made.files.values())


def test_aux_metadata_matches_the_tool(made: Made, tmp_path: Path) -> None:
    ours = ok(cvmstore("cocoonfs", "-i", made.image, "aux-fs-metadata", "list-entries")).stdout
    assert ours == made.tool.run(made.image, "aux-fs-metadata", "list-entries")
    assert ours.decode().split() == [str(AUX_UUID)] * 2
    for index, payload in enumerate((b"first", b"second")):
        args = ("aux-fs-metadata", "read-entry", str(AUX_UUID), str(index))
        ours = ok(cvmstore("cocoonfs", "-i", made.image, *args)).stdout
        assert ours == payload == made.tool.run(made.image, *args)
    out = tmp_path / "entry"
    ok(
        cvmstore(
            "cocoonfs",
            "-i",
            made.image,
            "aux-fs-metadata",
            "read-entry",
            str(AUX_UUID),
            "-o",
            out,
            "1",
        )
    )
    assert out.read_bytes() == b"second"
    document = json.loads(
        ok(
            cvmstore("cocoonfs", "-i", made.image, "aux-fs-metadata", "list-entries", "--json")
        ).stdout
    )
    assert [(e["uuid"], e["index"], e["size"]) for e in document["entries"]] == [
        (str(AUX_UUID), 0, 5),
        (str(AUX_UUID), 1, 6),
    ]


def test_missing_inode_and_entry(made: Made) -> None:
    fails(
        cvmstore("cocoonfs", "-i", made.image, "read-file", "-K", KEY.hex(), "99"),
        21,
        "inode 99 does not exist",
    )
    fails(
        cvmstore("cocoonfs", "-i", made.image, "aux-fs-metadata", "read-entry", str(AUX_UUID), "2"),
        21,
        "index 2",
    )


@pytest.mark.parametrize("action", ["list-files", "read-file", "info", "fsck"])
def test_wrong_key_exits_6_without_printing_a_key(made: Made, action: str) -> None:
    wrong = bytes(len(KEY)).hex()
    extra = ["16"] if action == "read-file" else []
    err = fails(cvmstore("cocoonfs", "-i", made.image, action, "-K", wrong, *extra), 6, "wrong key")
    assert wrong not in err
    assert KEY.hex() not in err


def test_tampered_file_data_exits_7(made: Made, tmp_path: Path) -> None:
    """Flip a byte inside file 16's (direct) extent: fsck and read-file refuse, exit 7."""
    image = copy(made, tmp_path)
    opened = CocoonFsImage.open(image.read_bytes(), KEY)
    entry = next(e for e in opened.list_files() if e.inode == 16)
    extent = decode_extent_ptr(entry.extent_ptr)
    assert extent is not None
    start, _, indirect = extent
    assert not indirect
    data = bytearray(image.read_bytes())
    data[(start << opened.layout.allocation_block_size_log2) + 100] ^= 0x01
    image.write_bytes(bytes(data))

    fails(cvmstore("cocoonfs", "-i", image, "fsck", "-K", KEY.hex()), 7, "copy.img")
    fails(cvmstore("cocoonfs", "-i", image, "read-file", "-K", KEY.hex(), "16"), 7)
    fails(cvmstore("cocoonfs", "-i", image, "fsck", "-k", made.key_file, "--json"), 7)
    with pytest.raises(AssertionError, match="failed"):
        made.tool.read_file(image, 16)


def test_not_an_image_exits_4(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 16))
    fails(cvmstore("cocoonfs", "-i", junk, "fsck", "-K", KEY.hex()), 4, "junk.img")
    fails(cvmstore("cocoonfs", "-i", junk, "aux-fs-metadata", "list-entries"), 4)


def test_unsupported_version_exits_5(made: Made, tmp_path: Path) -> None:
    """Version byte 8 (after the magic) is XOR-masked; flipping a bit makes it 1 ^ 2 = 3."""
    image = copy(made, tmp_path)
    data = bytearray(image.read_bytes())
    data[8] ^= 0x02
    image.write_bytes(bytes(data))
    fails(cvmstore("cocoonfs", "-i", image, "info", "-K", KEY.hex()), 5, "version")


def usage_fails(proc: Proc, *needles: str) -> None:
    """Exit 2 with one argparse or usage error line (nested parsers name their whole path)."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1, err
    assert errors[0].startswith("cvmstore"), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_usage_errors_exit_2(made: Made, tmp_path: Path) -> None:
    usage_fails(cvmstore("cocoonfs", "-i", made.image, "read-file", "-K", "zz", "16"), "--key")
    usage_fails(
        cvmstore("cocoonfs", "-i", made.image, "read-file", "-K", KEY.hex(), "0x10"), "decimal"
    )
    usage_fails(cvmstore("cocoonfs", "-i", made.image, "list-files"), "-k")
    usage_fails(
        cvmstore("cocoonfs", "-i", made.image, "list-files", "-K", "00", "-k", made.key_file),
        "not allowed",
    )
    usage_fails(cvmstore("cocoonfs", "-i", tmp_path / "absent", "fsck", "-K", "00"), "absent")
    usage_fails(cvmstore("cocoonfs", "list-files", "-K", "00"), "-i")
    usage_fails(cvmstore("cocoonfs", "-i", made.image, "mkfs", "-K", "00"), "--hash-family")
    usage_fails(cvmstore("cocoonfs", "-i", made.image, "write-file", "-K", "00"), "INODE")
    usage_fails(
        cvmstore("cocoonfs", "-i", made.image, "write-file", "-K", KEY.hex(), "16", "256"),
        "INODE-FLAGS",
    )
    usage_fails(
        cvmstore("cocoonfs", "-i", made.image, "aux-fs-metadata", "read-entry", "nope"), "UUID"
    )


def test_help_texts() -> None:
    text = ok(cvmstore("cocoonfs", "--help")).stdout.decode()
    for action in (
        "mkfs", "write-mkfs-info-header", "write-file", "remove-file",
        "list-files", "read-file", "aux-fs-metadata", "info", "fsck",
    ):  # fmt: skip
        assert action in text
    assert "staging copy disguise" in text  # named as not implemented
    edit = ok(cvmstore("cocoonfs", "aux-fs-metadata", "edit", "--help")).stdout.decode()
    for action in ("add-entry", "remove-entry", "set-extra-reserve-capacity", "-K HEX"):
        assert action in edit
    assert "exit status" in text
    mkfs = ok(cvmstore("cocoonfs", "mkfs", "--help")).stdout.decode()
    for flag in ("-H", "-C", "-t BITS", "-I HEX", "-s SIZE", "--io-block-size", "-n"):
        assert flag in mkfs
    read = ok(cvmstore("cocoonfs", "read-file", "--help")).stdout.decode()
    for flag in ("-k FILE", "-K HEX", "-o FILE", "-n", "INODE-NUMBER"):
        assert flag in read
    aux = ok(cvmstore("cocoonfs", "aux-fs-metadata", "read-entry", "--help")).stdout.decode()
    assert "UUID" in aux
    assert "INDEX" in aux
    assert "cocoonfs" in ok(cvmstore("--help")).stdout.decode()


@pytest.fixture
def cocoonfs_tool(tmp_path: Path) -> Tool:
    require_or_skip(TOOL is not None and TOOL.is_file(), "the cocoonfs tool (cocoonfs-cli 0.1.3)")
    assert TOOL is not None
    return Tool(TOOL, tmp_path)


def test_write_commands_round_trip_with_the_rust_tool(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    """mkfs, write-file and remove-file from cvmstore; the Rust tool reads and writes on."""
    image = tmp_path / "state.img"
    key_file = tmp_path / "key.bin"
    key_file.write_bytes(KEY)
    ok(cvmstore(
        "cocoonfs", "-i", image, "-f", "mkfs", "-k", key_file, "-H", "sha3", "-C", "aes",
        "-t", "192", "-I", "c0c0", "-s", "1M",
    ))  # fmt: skip
    nvchip = os.urandom(20_000)
    source = tmp_path / "NVChip"
    source.write_bytes(nvchip)
    ok(cvmstore("cocoonfs", "-i", image, "write-file", "-k", key_file, "-i", source, "4294967296"))
    ok(cvmstore(
        "cocoonfs", "-i", image, "write-file", "-K", KEY.hex(), "4294967297", "1",
        stdin=b"manufactured",
    ))  # fmt: skip
    assert cocoonfs_tool.list_files(image) == [(4294967296, 0), (4294967297, 1)]
    assert cocoonfs_tool.read_file(image, 4294967296) == nvchip
    cocoonfs_tool.write_file(image, 99, b"from the tool", 2)
    ok(cvmstore("cocoonfs", "-i", image, "remove-file", "-K", KEY.hex(), "4294967297"))
    listing = ok(cvmstore("cocoonfs", "-i", image, "list-files", "-K", KEY.hex())).stdout
    assert listing == cocoonfs_tool.run(image, "list-files", "-K", KEY.hex())
    assert listing.decode().split() == ["99", "0x02", "4294967296", "0x00"]
    gone = cvmstore("cocoonfs", "-i", image, "remove-file", "-K", KEY.hex(), "4294967297")
    assert gone.returncode == 21
    before = image.read_bytes()
    wrong = cvmstore("cocoonfs", "-i", image, "write-file", "-K", "00" * 16, "-i", source, "50")
    assert wrong.returncode == 6
    assert image.read_bytes() == before


def test_mkfs_info_header_then_first_keyed_write_formats(
    cocoonfs_tool: Tool, tmp_path: Path
) -> None:
    """Online mkfs both ways: our CCFSMKFS header formatted by the tool's first keyed write,
    and the tool's header formatted by ours."""
    ours = tmp_path / "ours.img"
    ok(cvmstore(
        "cocoonfs", "-i", ours, "write-mkfs-info-header", "-H", "sha2", "-C", "aes", "-t",
        "128", "-I", "abcd", "-s", "1M",
    ))  # fmt: skip
    cocoonfs_tool.write_file(ours, 4294967296, b"first boot")
    assert cocoonfs_tool.read_file(ours, 4294967296) == b"first boot"
    theirs = tmp_path / "theirs.img"
    cocoonfs_tool.run(
        theirs, "write-mkfs-info-header", "-H", "sm3", "-C", "sm4", "-t", "128", "-I", "ab",
        "-s", "1M", "--aux-fs-metadata-extra-reserve-capacity", "disabled",
    )  # fmt: skip
    source = tmp_path / "in"
    source.write_bytes(b"first boot, ours")
    ok(cvmstore("cocoonfs", "-i", theirs, "write-file", "-K", KEY.hex(), "-i", source, "16"))
    assert cocoonfs_tool.read_file(theirs, 16) == b"first boot, ours"


def test_aux_metadata_edits_without_the_key(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    """`aux-fs-metadata edit` with no key, as an operator rewrapping a KBS key would."""
    image = tmp_path / "aux.img"
    cocoonfs_tool.mkfs(image, "sha2", "aes", "128", "-s", "1M")
    wrapped = "5f3c0a1e-8d2b-4c6a-9e7f-0123456789ab"
    source = tmp_path / "wrapped"
    source.write_bytes(b"wrapped for KBS 1")
    ok(
        cvmstore(
            "cocoonfs", "-i", image, "aux-fs-metadata", "edit", "add-entry", "-i", source, wrapped
        )
    )
    source.write_bytes(b"wrapped for KBS 2")
    ok(cvmstore(
        "cocoonfs", "-i", image, "aux-fs-metadata", "edit", "-K", KEY.hex(), "add-entry", "-i",
        source, wrapped,
    ))  # fmt: skip
    ok(cvmstore("cocoonfs", "-i", image, "aux-fs-metadata", "edit", "remove-entry", wrapped, "0"))
    assert cocoonfs_tool.run(image, "aux-fs-metadata", "list-entries").decode().split() == [wrapped]
    assert (
        cocoonfs_tool.run(image, "aux-fs-metadata", "read-entry", wrapped) == b"wrapped for KBS 2"
    )
    missing = cvmstore(
        "cocoonfs", "-i", image, "aux-fs-metadata", "edit", "remove-entry", wrapped, "1"
    )
    assert missing.returncode == 21
    before = image.read_bytes()
    source.write_bytes(b"x" * 5000)
    full = cvmstore(
        "cocoonfs", "-i", image, "aux-fs-metadata", "edit", "add-entry", "-i", source, wrapped
    )
    assert full.returncode == 11, full.stderr
    assert image.read_bytes() == before
    # With the key the groups are allocated anew, as large as needed.
    ok(cvmstore(
        "cocoonfs", "-i", image, "aux-fs-metadata", "edit", "-k", key_file(tmp_path), "add-entry",
        "-i", source, wrapped,
    ))  # fmt: skip
    entries = cocoonfs_tool.run(image, "aux-fs-metadata", "list-entries").decode().split()
    assert entries == [wrapped, wrapped]
    assert cocoonfs_tool.run(image, "aux-fs-metadata", "read-entry", wrapped, "1") == b"x" * 5000


def key_file(directory: Path) -> Path:
    """The test key in a file (the -k form)."""
    path = directory / "key.bin"
    path.write_bytes(KEY)
    return path
