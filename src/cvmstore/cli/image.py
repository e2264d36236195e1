"""The image commands: keygen, mkfs, info, ls, put, get, cat, rm, mv, mkdir, fsck, rekey.

Commands that only read open the image read-only, so they cannot change it. Commands that
write check everything they can before the first change, and run as one transaction: on
any error the image is left as it was.

The same handlers run as `cvmstore guest ...` (`register(..., guest=True)`): there the image
is `--image FILE` and the key and the anchor come from a KBS (`cli.common.opened`,
`cli.common.formatter`); keygen and rekey are not guest commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat as stat_module
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cvmstore._units import parse_size
from cvmstore.block.file import FileDevice
from cvmstore.block.profile import ImageProfile
from cvmstore.cli.common import (
    NestedParser,
    add_guest_options,
    add_image_options,
    anchor_name,
    formatter,
    opened,
)
from cvmstore.cli.keys import load_key, write_new_key
from cvmstore.cli.progress import Progress
from cvmstore.cli.usage import UsageError
from cvmstore.errors import (
    FsCorruptError,
    IntegrityError,
    IsADirectoryPathError,
    PathNotFoundError,
)
from cvmstore.fs import DirEntry, Filesystem, Stat

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]
_SPOOL_IN_MEMORY = 8 << 20  # stdin beyond this is spooled to a temporary file


def register(commands: Any, *, guest: bool = False) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add the image commands to the command line; with `guest`, those of `cvmstore guest`."""
    if not guest:
        p = _add(commands, "keygen", _keygen, "make a new random 256-bit key file")
        p.add_argument("keyfile", metavar="KEYFILE", type=Path)
        p.add_argument("--hex", action="store_true", help="write 64 hex characters, not raw bytes")
        p.add_argument("--force", action="store_true", help="replace an existing file")

    p = _add(
        commands,
        "mkfs",
        _mkfs,
        "create an image with an empty filesystem",
        "Create IMAGE (a sparse file), format the secure store and an empty filesystem in "
        "it, and record its first commit in the anchor. Takes the same short time for any "
        "size: only a few blocks are written.",
        image=True,
        guest=guest,
    )
    p.add_argument("--size", required=True, help="image size, e.g. 4M, 64M, 10G (binary units)")
    p.add_argument(
        "--profile",
        choices=[profile.value for profile in ImageProfile],
        default=ImageProfile.VIRTIO.value,
        help="pflash: an OVMF variable-store slot (multiple of 4 KiB, code + state <= 8 MiB "
        "on q35); virtio: a virtio-blk disk (default: %(default)s)",
    )
    p.add_argument(
        "--firmware-code", metavar="FILE", help="for pflash: check the fit beside this OVMF code"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing IMAGE (and its anchor file)",
    )

    p = _add(
        commands, "info", _info, "show the volume and filesystem summary", image=True, guest=guest
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _add(commands, "ls", _ls, "list a directory", image=True, guest=guest)
    p.add_argument("path", nargs="?", default="/", metavar="PATH")
    p.add_argument("-l", action="store_true", dest="long", help="kind, size and time too")
    p.add_argument("-R", action="store_true", dest="recursive", help="list subdirectories too")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _add(
        commands,
        "put",
        _put,
        "copy a local file (or stdin) into the image",
        "Copy SOURCE (a local file, or - for stdin) to PATH in the image, replacing a file "
        "there, as one atomic commit. The space is checked first: a file that does not fit "
        "changes nothing.",
        image=True,
        guest=guest,
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("path", metavar="PATH")
    p.add_argument("-p", "--parents", action="store_true", help="make missing directories")
    _progress_option(p)

    p = _add(
        commands,
        "get",
        _get,
        "copy a file out of the image (to a local file or stdout)",
        "Copy PATH from the image to DEST (default: stdout). A local DEST is written to a "
        "temporary file and renamed into place, so a failed get leaves no partial file.",
        image=True,
        guest=guest,
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("dest", nargs="?", default="-", metavar="DEST")
    _progress_option(p)

    p = _add(commands, "cat", _cat, "print files of the image to stdout", image=True, guest=guest)
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = _add(commands, "rm", _rm, "remove files (and directories with -r)", image=True, guest=guest)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-r", "--recursive", action="store_true", help="remove directories too")
    p.add_argument("-f", "--force", action="store_true", help="ignore paths that do not exist")

    p = _add(
        commands,
        "mv",
        _mv,
        "move or rename, atomically replacing a file at DEST",
        image=True,
        guest=guest,
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST")

    p = _add(commands, "mkdir", _mkdir, "make directories", image=True, guest=guest)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-p", "--parents", action="store_true", help="make parents; no error if there")

    p = _add(
        commands,
        "fsck",
        _fsck,
        "verify every block and all filesystem metadata",
        "Read and authenticate every reachable block of the image, then check every piece "
        "of filesystem metadata. Prints every problem with its location. Exit status: 0 "
        "clean, 7 (IntegrityError) when blocks fail authentication, 28 (FsCorruptError) "
        "when only filesystem metadata is inconsistent.",
        image=True,
        guest=guest,
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _progress_option(p)

    if guest:
        return
    p = _add(
        commands,
        "rekey",
        _rekey,
        "move the image to a new key",
        "Rewrap the volume key under the key in --new-key-file, crash-safely; afterwards "
        "the old key no longer opens the image.",
        image=True,
    )
    p.add_argument("--new-key-file", required=True, metavar="FILE", help="the new key")


def _add(
    commands: Any,  # noqa: ANN401
    name: str,
    handler: Handler,
    summary: str,
    description: str | None = None,
    *,
    image: bool = False,
    guest: bool = False,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description or summary[0].upper() + summary[1:] + "."
    )
    if guest:  # `--image FILE` and the KBS's options; nested in the `guest` group
        add_guest_options(parser)
        parser.set_defaults(command_parser=NestedParser(parser))
    elif image:
        parser.add_argument("image", metavar="IMAGE", help="the image file")
        add_image_options(parser)
    parser.set_defaults(handler=handler, guest=guest)
    return parser


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )


# ---------------------------------------------------------------- commands


def _keygen(args: argparse.Namespace) -> int:
    write_new_key(args.keyfile, hex_text=args.hex, force=args.force)
    print(f"wrote a new 256-bit key to {args.keyfile} (mode 0600); keep it secret")
    return 0


def _mkfs(args: argparse.Namespace) -> int:
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise UsageError(f"--size {args.size!r}: {exc}") from None
    make = formatter(args)  # checks the key and anchor options before any file is made
    profile = ImageProfile(args.profile)
    device = FileDevice.create(
        args.image,
        size,
        profile=profile,
        firmware_code=args.firmware_code,
        overwrite=args.force,
    )
    try:
        with make(device) as fs:
            usage = fs.usage()
    except BaseException:
        device.close()
        Path(args.image).unlink(missing_ok=True)
        raise
    device.close()
    print(
        f"made {args.image}: {size} bytes ({profile.value}), "
        f"{usage.free_bytes} bytes free for files, anchor {anchor_name(args)}"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    with opened(args, write=False) as fs:
        store = fs.store.info()
        usage = fs.usage()
    data = {
        "image": args.image,
        "anchor": anchor_name(args),
        "volume_id": store.volume_id,
        "generation": store.generation,
        "anchored_generation": store.anchored_generation,
        "block_size": store.block_size,
        "physical_blocks": store.physical_blocks,
        "logical_blocks": store.logical_blocks,
        "tree_depth": store.tree_depth,
        "metadata_blocks": store.metadata_blocks,
        "store_used_blocks": store.used_blocks,
        "fs_used_blocks": usage.used_blocks,
        "fs_free_blocks": usage.free_blocks,
        "free_bytes": usage.free_bytes,
        "files": usage.files,
        "directories": usage.directories,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    width = max(len(key) for key in data)
    for key, value in data.items():
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    with opened(args, write=False) as fs:
        listing = _listing(fs, args.path, recursive=args.recursive)
    if args.json:
        print(
            json.dumps(
                [{"path": where, "name": e.name, **_stat_dict(e.stat)} for where, e in listing],
                indent=2,
            )
        )
        return 0
    for where, entry in listing:
        name = f"{where.rstrip('/')}/{entry.name}" if args.recursive else entry.name
        if args.long:
            kind = "d" if entry.stat.is_dir else "-"
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.stat.mtime_ns / 1e9))
            print(f"{kind} {entry.stat.size:>12}  {when}  {name}{'/' if entry.stat.is_dir else ''}")
        else:
            print(name + ("/" if entry.stat.is_dir else ""))
    return 0


def _listing(fs: Filesystem, path: str, *, recursive: bool) -> list[tuple[str, DirEntry]]:
    stat = fs.stat(path)
    if not stat.is_dir:
        return [(os.path.dirname(path) or "/", DirEntry(os.path.basename(path), stat))]
    if not recursive:
        return [(path, entry) for entry in fs.scandir(path)]
    return [(where, entry) for where, _, _ in fs.walk(path) for entry in fs.scandir(where)]


def _stat_dict(stat: Stat) -> dict[str, object]:
    return {
        "kind": stat.kind,
        "size": stat.size,
        "inode": stat.ino,
        "mtime_ns": stat.mtime_ns,
        "ctime_ns": stat.ctime_ns,
    }


def _put(args: argparse.Namespace) -> int:
    source, size = _open_source(args.source)
    try:
        with opened(args, write=True) as fs:
            bar = Progress(f"put {args.path}", size, enabled=args.progress)
            fs.write_from(args.path, source, size, parents=args.parents, progress=bar.update)
            bar.close()
    finally:
        source.close()
    return 0


def _open_source(name: str) -> tuple[IO[bytes], int]:
    """A readable source and its exact size; stdin is spooled first to learn its size."""
    if name == "-":
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
        size = spool.tell()
        spool.seek(0)
        return spool, size
    try:
        source = open(name, "rb")  # noqa: SIM115 (closed by the caller)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    if not stat_module.S_ISREG(os.fstat(source.fileno()).st_mode):
        source.close()
        raise UsageError(f"{name} is not a regular file")
    return source, os.fstat(source.fileno()).st_size


def _get(args: argparse.Namespace) -> int:
    with opened(args, write=False) as fs:
        size = fs.stat(args.path).size
        bar = Progress(f"get {args.path}", size, enabled=args.progress)
        if args.dest == "-":
            fs.read_to(args.path, sys.stdout.buffer, progress=bar.update)
            sys.stdout.buffer.flush()
        else:
            dest = Path(args.dest)
            if dest.is_dir():  # like cp: into the directory, under the file's own name
                dest /= os.path.basename(args.path.rstrip("/"))
            _write_atomically(dest, lambda f: fs.read_to(args.path, f, progress=bar.update))
        bar.close()
    return 0


def _write_atomically(dest: Path, fill: Callable[[IO[bytes]], object]) -> None:
    directory = dest.resolve().parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=directory)
    except OSError as exc:
        raise UsageError(f"cannot write {dest}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise UsageError(f"cannot write {dest}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cat(args: argparse.Namespace) -> int:
    with opened(args, write=False) as fs:
        for path in args.paths:
            fs.read_to(path, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


def _rm(args: argparse.Namespace) -> int:
    with opened(args, write=True) as fs, fs.transaction():
        for path in args.paths:
            try:
                if args.recursive:
                    fs.remove_tree(path)
                else:
                    fs.remove(path)
            except PathNotFoundError:
                if not args.force:
                    raise
            except IsADirectoryPathError:  # the library's hint names its rmdir, not ours
                raise IsADirectoryPathError(f"{path} is a directory (use rm -r)") from None
    return 0


def _mv(args: argparse.Namespace) -> int:
    with opened(args, write=True) as fs:
        target = args.dest
        if fs.exists(target) and fs.stat(target).is_dir and not fs.stat(args.source).is_dir:
            target = f"{target.rstrip('/')}/{os.path.basename(args.source.rstrip('/'))}"
        fs.rename(args.source, target)
    return 0


def _mkdir(args: argparse.Namespace) -> int:
    with opened(args, write=True) as fs, fs.transaction():
        for path in args.paths:
            fs.mkdir(path, parents=args.parents)
    return 0


def _fsck(args: argparse.Namespace) -> int:
    with opened(args, write=False) as fs:
        bar = Progress("fsck", None, enabled=args.progress, unit="nodes")
        report = fs.fsck(bar.update)
        bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            print(f"problem: {problem}")
        verdict = "clean" if report.ok else f"{len(report.problems)} problem(s)"
        print(
            f"{args.image}: {verdict}; {report.directories} directories, {report.files} files, "
            f"{report.data_blocks} data and {report.metadata_blocks} metadata blocks checked"
        )
    if report.ok:
        return 0
    store_damaged = report.store is not None and not report.store.ok
    return IntegrityError.exit_code if store_damaged else FsCorruptError.exit_code


def _rekey(args: argparse.Namespace) -> int:
    new_key = load_key(args.new_key_file)
    with opened(args, write=True) as fs:
        fs.store.rekey(new_key)
    print(f"{args.image} now opens with the key in {args.new_key_file} only")
    return 0
