"""The image commands as a new user types them: a subprocess, exit codes, the bytes on disk.

Every failure is checked for its documented exit code (docs/errors.md), for one line on stderr,
and for leaving the image *and* its anchor byte-for-byte as they were.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvmstore.errors import all_error_classes

BLOCK = 4096
IMAGE_SIZE = 4 << 20  # 1024 blocks; ~3.9 MB free for files
MIB = 1 << 20

Proc = subprocess.CompletedProcess[bytes]


def cvmstore(
    *args: str | Path,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Run `python -m cvmstore ARGS` with no cvmstore settings but those in `env`."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CVMSTORE_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cvmstore", *map(str, args)],
        input=stdin,
        capture_output=True,
        env=clean,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def ok(proc: Proc) -> Proc:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.decode()}"
    return proc


def fails(proc: Proc, code: int, *needles: str) -> str:
    """Exit `code`, and exactly one `cvmstore[ CMD]: error: ...` line on stderr naming `needles`.

    Usage errors from the argument parser itself print the usage line first; everything else
    must be the single error line.
    """
    err = proc.stderr.decode()
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    assert re.match(r"cvmstore( \w+)?: error: \S", lines[0]), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        (byte,) = f.read(1)
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def changed_blocks(before: bytes, after: bytes) -> list[int]:
    return [
        i
        for i in range(len(before) // BLOCK)
        if before[i * BLOCK : (i + 1) * BLOCK] != after[i * BLOCK : (i + 1) * BLOCK]
    ]


def longest_run(indexes: list[int]) -> list[int]:
    runs: list[list[int]] = []
    for i in indexes:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return max(runs, key=len)


@dataclass
class Vol:
    """An image with its key; `run` passes --key-file and the image to a command."""

    dir: Path
    key: Path
    other_key: Path
    image: Path

    @property
    def anchor(self) -> Path:
        return Path(f"{self.image}.anchor")

    def run(
        self,
        command: str,
        *args: str | Path,
        key: Path | None = None,
        stdin: bytes = b"",
        image: Path | None = None,
    ) -> Proc:
        return cvmstore(
            command,
            "--key-file",
            key or self.key,
            image or self.image,
            *args,
            stdin=stdin,
            cwd=self.dir,
        )

    def snapshot(self) -> dict[str, str]:
        return {"image": sha256(self.image), "anchor": sha256(self.anchor)}

    def local(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def info(self) -> dict[str, object]:
        data = json.loads(ok(self.run("info", "--json")).stdout)
        assert isinstance(data, dict)
        return data

    def tree(self, path: str = "/") -> list[tuple[str, str, str, int]]:
        listing = json.loads(ok(self.run("ls", "-R", "--json", path)).stdout)
        return sorted((e["path"], e["name"], e["kind"], e["size"]) for e in listing)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two keys and a fresh 4 MiB image made once; each test works on its own copy."""
    where = tmp_path_factory.mktemp("template")
    ok(cvmstore("keygen", where / "key"))
    ok(cvmstore("keygen", where / "other.key"))
    ok(cvmstore("mkfs", "--key-file", where / "key", "--size", "4M", where / "disk.img"))
    return where


@pytest.fixture
def vol(template: Path, tmp_path: Path) -> Vol:
    for name in ("key", "other.key", "disk.img", "disk.img.anchor"):
        shutil.copy(template / name, tmp_path / name)
    return Vol(tmp_path, tmp_path / "key", tmp_path / "other.key", tmp_path / "disk.img")


@pytest.fixture
def unchanged(vol: Vol) -> Iterator[None]:
    """The test's failures must leave the image and the anchor exactly as they were."""
    before = vol.snapshot()
    yield
    assert vol.snapshot() == before


def shape(tree: list[tuple[str, str, str, int]], prefix: str = "") -> list[tuple[str, ...]]:
    """A listing with `prefix` cut from the paths and directory sizes left out."""
    return sorted(
        (path[len(prefix) :] or "/", name, kind, str(size) if kind == "file" else "")
        for path, name, kind, size in tree
    )


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def tar_contents(data: bytes) -> dict[str, bytes | None]:
    """Member name -> bytes (None for a directory); anything else fails the test."""
    found: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if member.isdir():
                found[member.name.rstrip("/")] = None
            else:
                assert member.isfile(), member.name
                extracted = tar.extractfile(member)
                assert extracted is not None
                found[member.name] = extracted.read()
    return found


# ---------------------------------------------------------------- happy paths


def test_keygen_raw_and_hex_keys_and_the_environment(tmp_path: Path) -> None:
    raw, hexed = tmp_path / "raw.key", tmp_path / "hex.key"
    proc = ok(cvmstore("keygen", raw))
    assert b"keep it secret" in proc.stdout
    ok(cvmstore("keygen", "--hex", hexed))
    assert len(raw.read_bytes()) == 32
    assert re.fullmatch(rb"[0-9a-f]{64}\n", hexed.read_bytes())
    assert raw.stat().st_mode & 0o777 == 0o600
    assert hexed.stat().st_mode & 0o777 == 0o600
    assert raw.read_bytes() != bytes.fromhex(hexed.read_text())

    # keygen never replaces a key by accident; --force does.
    before = raw.read_bytes()
    fails(cvmstore("keygen", raw), 2, "already exists", "--force")
    assert raw.read_bytes() == before
    ok(cvmstore("keygen", "--force", raw))
    assert raw.read_bytes() != before

    # Both kinds of key file make and open an image; the hex one also works from the env.
    for key in (raw, hexed):
        image = tmp_path / f"{key.stem}.img"
        ok(cvmstore("mkfs", "--key-file", key, "--size", "1M", image))
        assert ok(cvmstore("ls", "--key-file", key, image)).stdout == b""
    hex_image = tmp_path / "hex.img"
    env_key = {"CVMSTORE_KEY": hexed.read_text().strip()}
    ok(cvmstore("mkdir", hex_image, "/from-env", env=env_key))
    assert ok(cvmstore("ls", hex_image, env=env_key)).stdout == b"from-env/\n"
    env_file = {"CVMSTORE_KEY_FILE": str(hexed)}
    assert ok(cvmstore("ls", hex_image, env=env_file)).stdout == b"from-env/\n"
    # --key-file wins over the environment.
    fails(cvmstore("ls", "--key-file", raw, hex_image, env=env_key), 6)


def test_mkfs_creates_image_and_anchor_and_info_reports_it(tmp_path: Path, template: Path) -> None:
    key = template / "key"
    image = tmp_path / "new.img"
    proc = ok(cvmstore("mkfs", "--key-file", key, "--size", "2M", image))
    assert f"made {image}".encode() in proc.stdout
    assert image.stat().st_size == 2 * MIB
    assert Path(f"{image}.anchor").is_file()

    data = json.loads(ok(cvmstore("info", "--key-file", key, "--json", image)).stdout)
    assert data["image"] == str(image)
    assert data["anchor"] == f"file:{image}.anchor"
    assert re.fullmatch(r"[0-9a-f]{32}", data["volume_id"])
    assert data["generation"] == data["anchored_generation"] == 1
    assert data["block_size"] == BLOCK
    assert data["physical_blocks"] == 2 * MIB // BLOCK
    assert 0 < data["logical_blocks"] < data["physical_blocks"]
    assert data["files"] == 0
    assert data["directories"] == 1
    assert 0 < data["free_bytes"] == data["fs_free_blocks"] * BLOCK < 2 * MIB
    plain = ok(cvmstore("info", "--key-file", key, image)).stdout.decode()
    assert re.search(rf"^volume id +{data['volume_id']}$", plain, re.MULTILINE)

    # pflash: a 4 KiB-multiple within the 8 MiB of q35 flash.
    flash = tmp_path / "vars.img"
    ok(cvmstore("mkfs", "--key-file", key, "--size", "256K", "--profile", "pflash", flash))
    assert flash.stat().st_size == 256 << 10

    # A custom anchor path, and --anchor none.
    custom = tmp_path / "elsewhere.anchor"
    other = tmp_path / "other.img"
    ok(cvmstore("mkfs", "--key-file", key, "--size", "1M", "--anchor", f"file:{custom}", other))
    assert custom.is_file()
    assert not Path(f"{other}.anchor").exists()
    ok(cvmstore("ls", "--key-file", key, "--anchor", f"file:{custom}", other))
    bare = tmp_path / "bare.img"
    ok(cvmstore("mkfs", "--key-file", key, "--size", "1M", "--anchor", "none", bare))
    assert not Path(f"{bare}.anchor").exists()
    ok(cvmstore("ls", "--key-file", key, "--anchor", "none", bare))


def test_put_get_cat_round_trip_byte_exact(vol: Vol) -> None:
    payload = os.urandom(MIB + 12345)
    source = vol.local("payload.bin", payload)
    free_before = vol.info()["free_bytes"]
    assert isinstance(free_before, int)

    ok(vol.run("put", source, "/payload.bin"))
    ok(vol.run("get", "/payload.bin", "back.bin"))
    assert (vol.dir / "back.bin").read_bytes() == payload
    assert ok(vol.run("get", "/payload.bin")).stdout == payload  # DEST defaults to stdout
    assert ok(vol.run("get", "/payload.bin", "-")).stdout == payload

    # stdin, -p, replacing a file, and cat of several files in order.
    ok(vol.run("put", "-", "/note", stdin=b"hello from stdin\n"))
    ok(vol.run("put", "-p", "-", "/deep/er/note", stdin=b"second\n"))
    ok(vol.run("put", "-", "/note", stdin=b"replaced\n"))
    assert ok(vol.run("cat", "/note", "/deep/er/note")).stdout == b"replaced\nsecond\n"
    ok(vol.run("put", "-", "/empty"))
    assert ok(vol.run("cat", "/empty")).stdout == b""

    info = vol.info()
    assert info["files"] == 4
    assert info["directories"] == 3
    assert info["generation"] == info["anchored_generation"] == 6
    assert isinstance(info["free_bytes"], int)
    assert free_before - info["free_bytes"] >= len(payload)


def test_get_into_an_existing_local_directory(vol: Vol) -> None:
    ok(vol.run("put", "-", "/dir/file", "-p", stdin=b"data"))
    (vol.dir / "out").mkdir()
    proc = vol.run("get", "/dir/file", "out")
    assert proc.returncode == 0, proc.stderr.decode()
    assert (vol.dir / "out" / "file").read_bytes() == b"data"
    assert sorted(p.name for p in (vol.dir / "out").iterdir()) == ["file"]


def test_options_may_sit_between_and_after_positionals(vol: Vol) -> None:
    # argparse before Python 3.12.7 (CPython gh-59317) fills `ls IMAGE [PATH]` too early when
    # an option follows IMAGE; the command line must take these as a user types them.
    key = str(vol.key)
    ok(vol.run("put", "-p", "-", "/d/f", stdin=b"data"))
    assert ok(cvmstore("ls", vol.image, "--key-file", key, "/d")).stdout == b"f\n"
    long = ok(cvmstore("ls", vol.image, "-l", "/d", "--key-file", key)).stdout.decode()
    assert re.fullmatch(r"- +4  \S+ \S+  f\n", long), long
    ok(cvmstore("get", vol.image, "/d/f", "--key-file", key, vol.dir / "out"))
    assert (vol.dir / "out").read_bytes() == b"data"
    ok(cvmstore("export", vol.image, "--key-file", key, vol.dir / "t.tar", "--path", "/d"))
    assert tar_contents((vol.dir / "t.tar").read_bytes()) == {"f": b"data"}
    ok(cvmstore("cat", vol.image, "/d/f", "--key-file", key, "/d/f"))
    # and what is not an argument is still refused, naming it
    fails(cvmstore("ls", vol.image, "--key-file", key, "/d", "extra"), 2, "arguments: extra")
    fails(cvmstore("ls", vol.image, "--bogus", "/d", "--key-file", key), 2, "--bogus")


def test_ls_plain_long_recursive_and_json(vol: Vol) -> None:
    started = time.time_ns()
    ok(vol.run("mkdir", "-p", "/dir/sub", "/empty"))
    ok(vol.run("put", "-", "/a.txt", stdin=b"12345"))
    ok(vol.run("put", "-", "/dir/b.bin", stdin=b"x" * 5000))
    ok(vol.run("put", "-", "/dir/sub/c", stdin=b""))

    assert ok(vol.run("ls")).stdout.decode().splitlines() == ["a.txt", "dir/", "empty/"]
    assert ok(vol.run("ls", "/dir")).stdout.decode().splitlines() == ["b.bin", "sub/"]
    assert ok(vol.run("ls", "/dir/b.bin")).stdout == b"b.bin\n"

    long = ok(vol.run("ls", "-l", "/dir")).stdout.decode().splitlines()
    assert len(long) == 2
    assert re.fullmatch(r"- +5000  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  b\.bin", long[0]), long
    assert re.fullmatch(r"d +\d+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  sub/", long[1]), long

    recursive = ok(vol.run("ls", "-R")).stdout.decode().splitlines()
    assert sorted(recursive) == sorted(
        ["/a.txt", "/dir/", "/empty/", "/dir/b.bin", "/dir/sub/", "/dir/sub/c"]
    )

    listing = json.loads(ok(vol.run("ls", "--json", "-R")).stdout)
    by_path = {f"{e['path'].rstrip('/')}/{e['name']}": e for e in listing}
    assert set(by_path) == {"/a.txt", "/dir", "/empty", "/dir/b.bin", "/dir/sub", "/dir/sub/c"}
    assert by_path["/a.txt"]["kind"] == "file"
    assert by_path["/a.txt"]["size"] == 5
    assert by_path["/dir/b.bin"]["size"] == 5000
    assert by_path["/dir/sub/c"]["size"] == 0
    assert by_path["/dir/sub"]["kind"] == by_path["/empty"]["kind"] == "dir"
    assert len({e["inode"] for e in listing}) == len(listing)
    for entry in listing:
        assert started - 60 * 10**9 < entry["mtime_ns"] < time.time_ns() + 60 * 10**9
    flat = json.loads(ok(vol.run("ls", "--json", "/dir")).stdout)
    assert [(e["path"], e["name"]) for e in flat] == [("/dir", "b.bin"), ("/dir", "sub")]


def test_mkdir_mv_and_rm(vol: Vol) -> None:
    ok(vol.run("mkdir", "-p", "/a/b/c"))
    ok(vol.run("mkdir", "-p", "/a/b/c"))  # no error when it is there
    ok(vol.run("mkdir", "/x", "/y"))
    ok(vol.run("put", "-", "/f", stdin=b"F"))

    ok(vol.run("mv", "/f", "/g"))  # rename
    ok(vol.run("mv", "/g", "/a/b"))  # into a directory
    assert ok(vol.run("cat", "/a/b/g")).stdout == b"F"
    ok(vol.run("mv", "/y", "/a/renamed"))  # a directory
    ok(vol.run("put", "-", "/h", stdin=b"H"))
    ok(vol.run("mv", "/h", "/a/b/g"))  # replaces the file at DEST
    assert ok(vol.run("cat", "/a/b/g")).stdout == b"H"
    assert sorted(ok(vol.run("ls", "-R")).stdout.decode().splitlines()) == [
        "/a/",
        "/a/b/",
        "/a/b/c/",
        "/a/b/g",
        "/a/renamed/",
        "/x/",
    ]

    ok(vol.run("rm", "/a/b/g"))
    ok(vol.run("rm", "-r", "/a/b"))
    ok(vol.run("rm", "-f", "/missing", "/x/missing"))
    ok(vol.run("rm", "-r", "/x"))
    assert sorted(ok(vol.run("ls", "-R")).stdout.decode().splitlines()) == ["/a/", "/a/renamed/"]
    assert vol.info()["files"] == 0


def test_fsck_clean_plain_and_json(vol: Vol) -> None:
    ok(vol.run("put", "-p", "-", "/d/f", stdin=os.urandom(3 * BLOCK + 1)))
    proc = ok(vol.run("fsck"))
    assert "problem" not in proc.stdout.decode()
    assert re.search(r": clean; 2 directories, 1 files, 4 data", proc.stdout.decode()), proc.stdout
    report = json.loads(ok(vol.run("fsck", "--json")).stdout)
    assert report["ok"] is True
    assert report["problems"] == []
    assert (report["directories"], report["files"], report["data_blocks"]) == (2, 1, 4)


def test_rekey_old_key_fails_new_key_works(vol: Vol) -> None:
    payload = os.urandom(50_000)
    ok(vol.run("put", vol.local("p", payload), "/p"))
    new_key = vol.dir / "new.key"
    ok(cvmstore("keygen", "--hex", new_key))

    proc = ok(vol.run("rekey", "--new-key-file", new_key))
    assert str(new_key) in proc.stdout.decode()
    after = vol.snapshot()
    fails(vol.run("ls"), 6, "key")
    fails(vol.run("get", "/p", "x"), 6)
    assert not (vol.dir / "x").exists()
    assert vol.snapshot() == after
    assert ok(vol.run("get", "/p", key=new_key)).stdout == payload
    ok(vol.run("fsck", key=new_key))


def test_export_then_import_into_a_fresh_image_gives_the_same_tree(vol: Vol) -> None:
    files = {
        "top.txt": b"top\n",
        "docs/readme": b"read me\n",
        "docs/deep/er/blob": os.urandom(200_000),
        "docs/deep/empty": b"",
    }
    for name, data in files.items():
        ok(vol.run("put", "-p", "-", f"/{name}", stdin=data))
    ok(vol.run("mkdir", "-p", "/hollow/inside"))
    expected: dict[str, bytes | None] = {
        **files,
        "docs": None,
        "docs/deep": None,
        "docs/deep/er": None,
        "hollow": None,
        "hollow/inside": None,
    }

    ok(vol.run("export", "all.tar"))
    archive = (vol.dir / "all.tar").read_bytes()
    assert tar_contents(archive) == expected
    assert ok(vol.run("export")).stdout == archive  # to stdout, deterministically
    sub = tar_contents(ok(vol.run("export", "--path", "/docs/deep")).stdout)
    assert sub == {"er": None, "er/blob": files["docs/deep/er/blob"], "empty": b""}

    fresh = vol.dir / "fresh.img"
    ok(cvmstore("mkfs", "--key-file", vol.other_key, "--size", "2M", fresh))
    ok(vol.run("import", "all.tar", image=fresh, key=vol.other_key))
    ok(vol.run("import", "-", "--into", "/again", image=fresh, key=vol.other_key, stdin=archive))
    copy = Vol(vol.dir, vol.other_key, vol.key, fresh)
    assert tar_contents(ok(copy.run("export")).stdout) == {
        **expected,
        "again": None,
        **{f"again/{name}": data for name, data in expected.items()},
    }
    original = shape(vol.tree())
    assert shape(copy.tree("/again"), "/again") == original
    outside = [e for e in copy.tree() if e[:2] != ("/", "again") and not e[0].startswith("/again")]
    assert shape(outside) == original
    ok(copy.run("fsck"))


# ---------------------------------------------------------------- errors leave no trace


@pytest.mark.usefixtures("unchanged")
def test_missing_path_is_21(vol: Vol) -> None:
    fails(vol.run("get", "/nope", "out"), 21, "/nope")
    assert not (vol.dir / "out").exists()
    fails(vol.run("cat", "/nope"), 21, "/nope")
    fails(vol.run("ls", "/nope"), 21, "/nope")
    fails(vol.run("rm", "/nope"), 21, "/nope")
    fails(vol.run("mv", "/nope", "/there"), 21, "/nope")
    fails(vol.run("put", "-", "/no/parent", stdin=b"x"), 21, "/no")
    fails(vol.run("export", "--path", "/nope", "out.tar"), 21, "/nope")


def test_wrong_key_is_6_for_reads_and_writes(vol: Vol) -> None:
    ok(vol.run("put", "-", "/f", stdin=b"secret"))
    before = vol.snapshot()
    for args in (("ls",), ("info",), ("fsck",), ("get", "/f"), ("cat", "/f")):
        proc = vol.run(*args, key=vol.other_key)
        fails(proc, 6, "key")
        assert b"secret" not in proc.stdout + proc.stderr
    fails(vol.run("put", "-", "/g", stdin=b"x", key=vol.other_key), 6)
    fails(vol.run("rm", "/f", key=vol.other_key), 6)
    fails(vol.run("rekey", "--new-key-file", vol.other_key, key=vol.other_key), 6)
    assert vol.snapshot() == before


def test_failed_export_leaves_an_existing_output_file_alone(vol: Vol) -> None:
    out = vol.local("precious.tar", b"not to be lost")
    fails(vol.run("export", out, key=vol.other_key), 6)
    assert out.read_bytes() == b"not to be lost"
    fails(vol.run("export", "--path", "/nope", out), 21)
    assert out.read_bytes() == b"not to be lost"
    assert sorted(p.name for p in vol.dir.iterdir() if p.name.startswith(".")) == []


def test_damaged_data_block_get_is_7_and_names_the_block(vol: Vol) -> None:
    before = vol.image.read_bytes()
    payload = os.urandom(MIB)
    ok(vol.run("put", vol.local("payload", payload), "/payload"))
    run = longest_run(changed_blocks(before, vol.image.read_bytes()))
    assert len(run) >= 200  # the file's data, written in one stretch
    target = run[len(run) // 2]
    for delta in (7, 1000, 3000):
        flip(vol.image, target * BLOCK + delta, 0xFF)
    damaged = vol.snapshot()

    fails(vol.run("get", "/payload", "out"), 7, f"block {target}", "authentication")
    assert not (vol.dir / "out").exists()
    assert not [p for p in vol.dir.iterdir() if p.name.startswith(".out")]
    fails(vol.run("cat", "/payload"), 7, f"block {target}")
    assert vol.snapshot() == damaged


@pytest.mark.usefixtures("unchanged")
def test_device_full_is_11(vol: Vol) -> None:
    free = vol.info()["free_bytes"]
    assert isinstance(free, int)
    big = vol.local("big", os.urandom(free + BLOCK))
    fails(vol.run("put", big, "/big"), 11, "space")
    fails(vol.run("put", "-", "/big", stdin=big.read_bytes()), 11)
    fails(vol.run("import", "-", stdin=tar_of([tar_file("big", big.read_bytes())])), 11)


@pytest.mark.usefixtures("unchanged")
def test_name_too_long_is_26(vol: Vol) -> None:
    long_name = "/" + "n" * 256
    fails(vol.run("put", "-", long_name, stdin=b"x"), 26, "255")
    fails(vol.run("mkdir", long_name), 26)
    long_path = "/" + "/".join(["d" * 250] * 17)  # names fine, path over 4096 bytes
    fails(vol.run("mkdir", "-p", long_path), 26)
    fails(vol.run("import", "-", stdin=tar_of([tar_file("n" * 256, b"x")])), 26)


def test_file_where_a_directory_is_expected_is_23(vol: Vol) -> None:
    ok(vol.run("put", "-", "/file", stdin=b"x"))
    before = vol.snapshot()
    fails(vol.run("put", "-", "/file/x", stdin=b"y"), 23, "/file")
    fails(vol.run("put", "-p", "-", "/file/x/y", stdin=b"y"), 23, "/file")
    fails(vol.run("mkdir", "/file/x"), 23)
    fails(vol.run("ls", "/file/x"), 23)
    fails(vol.run("import", "-", stdin=tar_of([tar_file("file/x", b"y")])), 23)
    assert vol.snapshot() == before


def test_directory_where_a_file_is_expected_is_24(vol: Vol) -> None:
    ok(vol.run("put", "-p", "-", "/dir/inner", stdin=b"x"))
    ok(vol.run("mkdir", "/hollow"))
    before = vol.snapshot()
    fails(vol.run("get", "/dir", "out"), 24, "/dir")
    assert not (vol.dir / "out").exists()
    fails(vol.run("cat", "/dir"), 24, "/dir")
    fails(vol.run("put", "-", "/dir", stdin=b"y"), 24, "/dir")
    fails(vol.run("import", "-", stdin=tar_of([tar_file("dir", b"y")])), 24)
    # rm without -r refuses a directory, empty or not, and says how to do it instead.
    for path in ("/dir", "/hollow"):
        fails(vol.run("rm", path), 24, path, "rm -r")
    assert vol.snapshot() == before
    assert ok(vol.run("ls")).stdout == b"dir/\nhollow/\n"


@pytest.mark.parametrize("content", ["random", "zeros"])
def test_not_a_cvmstore_image_is_4(vol: Vol, content: str) -> None:
    junk = vol.local("junk.img", os.urandom(MIB) if content == "random" else bytes(MIB))
    before = sha256(junk)
    fails(vol.run("ls", image=junk), 4, "not a cvmstore image")
    fails(vol.run("put", "-", "/x", stdin=b"x", image=junk), 4)
    fails(vol.run("fsck", image=junk), 4)
    assert sha256(junk) == before
    assert not Path(f"{junk}.anchor").exists()


@pytest.mark.usefixtures("unchanged")
def test_no_key_is_a_usage_error(vol: Vol) -> None:
    for args in (("ls",), ("put", "-", "/x"), ("mkfs", "--size", "1M")):
        image = vol.dir / "new.img" if args[0] == "mkfs" else vol.image
        proc = cvmstore(args[0], image, *args[1:], cwd=vol.dir)
        fails(proc, 2, "no key given", "--key-file", "CVMSTORE_KEY")
    assert not (vol.dir / "new.img").exists()
    fails(cvmstore("ls", vol.image, env={"CVMSTORE_KEY_FILE": str(vol.dir / "nokey")}), 2)


@pytest.mark.usefixtures("unchanged")
def test_malformed_key_is_a_usage_error(vol: Vol) -> None:
    for name, data in [
        ("short.key", b"k" * 31),
        ("long.key", b"k" * 33),
        ("empty.key", b""),
        ("nothex.key", b"zq" * 32 + b"\n"),
    ]:
        bad = vol.local(name, data)
        err = fails(vol.run("ls", key=bad), 2, name, "not a key")
        assert "zq" not in err  # the key file's content is never echoed
        fails(vol.run("put", "-", "/x", stdin=b"x", key=bad), 2, name)
    fails(vol.run("ls", key=vol.dir / "absent.key"), 2, "absent.key")
    fails(cvmstore("ls", vol.image, env={"CVMSTORE_KEY": "zq" * 32}), 2, "CVMSTORE_KEY")
    bad = vol.local("bad-new.key", b"short")
    fails(vol.run("rekey", "--new-key-file", bad), 2, "bad-new.key")


@pytest.mark.usefixtures("unchanged")
def test_import_refuses_links_and_escapes(vol: Vol) -> None:
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "first"
    bad_members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (link, None),
        (hard, None),
        tar_file("../x", b"escape"),
        tar_file("a/../../x", b"escape"),
        tar_file("/abs", b"absolute"),
    ]
    for bad in bad_members:
        archive = tar_of([tar_file("first", b"fine"), bad])
        fails(vol.run("import", "-", stdin=archive), 2, bad[0].name)
        (vol.dir / "in.tar").write_bytes(archive)
        fails(vol.run("import", "in.tar"), 2, bad[0].name)
    fails(vol.run("import", "-", stdin=os.urandom(5000)), 2, "tar")
    assert ok(vol.run("ls")).stdout == b""


def test_mkfs_over_an_existing_file_needs_force(vol: Vol) -> None:
    before = vol.snapshot()
    fails(vol.run("mkfs", "--size", "1M"), 10, "already exists")
    assert vol.snapshot() == before
    notes = vol.local("notes.txt", b"my notes")
    fails(vol.run("mkfs", "--size", "1M", image=notes), 10, "already exists")
    assert notes.read_bytes() == b"my notes"
    assert not Path(f"{notes}.anchor").exists()

    old_id = vol.info()["volume_id"]
    ok(vol.run("mkfs", "--size", "1M", "--force", key=vol.other_key))
    assert vol.image.stat().st_size == MIB
    info = Vol(vol.dir, vol.other_key, vol.key, vol.image).info()
    assert info["volume_id"] != old_id
    assert info["generation"] == 1
    fails(vol.run("ls"), 6)


def test_mkfs_bad_sizes(tmp_path: Path, template: Path) -> None:
    key = template / "key"
    image = tmp_path / "vars.img"
    for size, words in [
        ("16M", ("pflash", "8 MiB")),
        ("6K", ("4096",)),
        ("0", ("positive",)),
    ]:
        proc = cvmstore("mkfs", "--key-file", key, "--size", size, "--profile", "pflash", image)
        fails(proc, 10, *words)
    fails(cvmstore("mkfs", "--key-file", key, "--size", "4K", image), 10, "too small")
    fails(cvmstore("mkfs", "--key-file", key, "--size", "lots", image), 2, "--size")
    fails(cvmstore("mkfs", "--key-file", key, "--size", "1M", "--profile", "nvme", image), 2)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- attacks from the host


def test_one_flipped_byte_in_the_middle_of_the_image(vol: Vol) -> None:
    before = vol.image.read_bytes()
    payload = os.urandom(3_500_000)  # most of the 4 MiB image is now this file's data
    ok(vol.run("put", vol.local("big", payload), "/big"))
    middle = IMAGE_SIZE // 2 // BLOCK
    assert middle in changed_blocks(before, vol.image.read_bytes())
    flip(vol.image, IMAGE_SIZE // 2 + BLOCK // 2)
    damaged = vol.snapshot()

    fails(vol.run("get", "/big", "out"), 7, f"at block {middle}")
    assert not (vol.dir / "out").exists()

    proc = vol.run("fsck")
    assert proc.returncode == 7, proc.stderr.decode()
    problems = [line for line in proc.stdout.decode().splitlines() if line.startswith("problem: ")]
    assert problems, proc.stdout
    assert any(f"block {middle}" in line for line in problems), problems
    assert f"{len(problems)} problem(s)" in proc.stdout.decode()

    proc = vol.run("fsck", "--json")
    assert proc.returncode == 7
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert any(f"block {middle}" in problem for problem in report["problems"])
    assert vol.snapshot() == damaged  # reading a damaged image changes nothing


def test_restoring_an_older_image_is_a_rollback(vol: Vol) -> None:
    ok(vol.run("put", "-", "/first", stdin=b"1"))
    old_image = vol.image.read_bytes()
    ok(vol.run("put", "-", "/second", stdin=b"2"))
    vol.image.write_bytes(old_image)
    before = vol.snapshot()

    fails(vol.run("ls"), 8, "older")
    fails(vol.run("put", "-", "/third", stdin=b"3"), 8)
    fails(vol.run("get", "/first"), 8)
    assert vol.snapshot() == before
    # The old copy is authentic: only the anchor knows it is old.
    assert ok(vol.run("ls", "--anchor", "none")).stdout == b"first\n"
    assert vol.snapshot() == before


# ---------------------------------------------------------------- help


def test_help_lists_every_exit_code_and_each_command_has_help() -> None:
    proc = ok(cvmstore("--help"))
    text = proc.stdout.decode()
    table = dict(re.findall(r"^ +(\d+)  (\w[\w ]*)$", text, re.MULTILINE))
    assert table["0"] == "success"
    assert table["2"] == "usage error"
    for cls in all_error_classes():
        assert table[str(cls.exit_code)] == cls.__name__

    listed = text.split("positional arguments:")[1].split("options:")[0]
    commands = set(re.findall(r"^    ([a-z]+) {2,}\S", listed, re.MULTILINE))
    image_commands = {
        "keygen",
        "mkfs",
        "info",
        "ls",
        "put",
        "get",
        "cat",
        "rm",
        "mv",
        "mkdir",
        "fsck",
        "rekey",
        "export",
        "import",
    }
    assert image_commands <= commands
    for command in sorted(commands):
        sub = ok(cvmstore(command, "--help"))
        assert sub.stdout.startswith(f"usage: cvmstore {command}".encode()), sub.stdout
        if command in image_commands - {"keygen"}:
            assert b"--key-file" in sub.stdout
            assert b"--anchor" in sub.stdout
