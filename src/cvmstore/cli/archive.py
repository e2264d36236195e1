"""`export` and `import`: the whole tree (or a subtree) as a tar stream, and back.

Only directories and regular files exist in a cvmstore filesystem, so only those are
written and accepted. An import is checked completely (names, member types, conflicts with
what exists, space) before the first change, then applied as one transaction.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

from cvmstore.cli.common import add_image_options, opened
from cvmstore.cli.image import _progress_option, _write_atomically
from cvmstore.cli.progress import Progress
from cvmstore.cli.usage import UsageError
from cvmstore.errors import (
    DeviceFullError,
    FsError,
    IsADirectoryPathError,
    NotADirectoryPathError,
)
from cvmstore.fs import Filesystem
from cvmstore.fs.paths import split_path

__all__ = ["register"]


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `export` and `import`."""
    p = commands.add_parser(
        "export",
        help="write the tree as a tar stream",
        description="Write every directory and file under PATH (default: all) as a tar "
        "stream to OUTPUT (default: stdout).",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("output", nargs="?", default="-", metavar="OUTPUT")
    p.add_argument("--path", default="/", help="the subtree to export (default: /)")
    add_image_options(p)
    _progress_option(p)
    p.set_defaults(handler=_export)

    p = commands.add_parser(
        "import",
        help="add a tar stream's directories and files to the tree, atomically",
        description="Read a tar stream from INPUT (default: stdin) and add its directories "
        "and regular files under --into (default: /), replacing files of the same name, as "
        "one atomic commit. Links, devices and other member types are refused, as are "
        "absolute names and '..'; nothing is changed then.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("input", nargs="?", default="-", metavar="INPUT")
    p.add_argument("--into", default="/", help="the directory to import into (default: /)")
    add_image_options(p)
    _progress_option(p)
    p.set_defaults(handler=_import)


def _export(args: argparse.Namespace) -> int:
    with opened(args, write=False) as fs:
        total = sum(
            fs.stat(f"{where.rstrip('/')}/{name}").size
            for where, _, files in fs.walk(args.path)
            for name in files
        )
        bar = Progress("export", total, enabled=args.progress)

        def fill(out: IO[bytes]) -> None:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _write_tree(fs, args.path, tar, bar)

        if args.output == "-":
            fill(sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:  # like get: a failed export leaves no partial file and replaces nothing
            _write_atomically(Path(args.output), fill)
        bar.close()
    return 0


def _write_tree(fs: Filesystem, root: str, tar: tarfile.TarFile, bar: Progress) -> None:
    base = "/" + "/".join(name.decode() for name in split_path(root))
    done = 0
    for where, dirs, files in fs.walk(root):
        relative = where[len(base) :].strip("/")
        for name in dirs:
            stat = fs.stat(f"{where.rstrip('/')}/{name}")
            info = tarfile.TarInfo(_join(relative, name))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, stat.mtime_ns / 1e9
            tar.addfile(info)
        for name in files:
            path = f"{where.rstrip('/')}/{name}"
            stat = fs.stat(path)
            info = tarfile.TarInfo(_join(relative, name))
            info.size, info.mode, info.mtime = stat.size, 0o644, stat.mtime_ns / 1e9
            with fs.open(path, "rb") as f:
                tar.addfile(info, f)
            done += stat.size
            bar.update(done)


def _join(relative: str, name: str) -> str:
    return f"{relative}/{name}" if relative else name


def _import(args: argparse.Namespace) -> int:
    with tempfile.TemporaryFile() as spool:
        source = sys.stdin.buffer if args.input == "-" else _open(args.input)
        try:
            shutil.copyfileobj(source, spool, 1 << 20)
        finally:
            if source is not sys.stdin.buffer:
                source.close()
        spool.seek(0)
        with _open_tar(spool, args.input) as tar:
            members = _checked_members(tar, args.into)
            with opened(args, write=True) as fs:
                _check_against(fs, members)
                total = sum(member.size for member, _ in members if member.isfile())
                bar = Progress("import", total, enabled=args.progress)
                done = 0
                with fs.transaction():
                    for member, path in members:
                        if member.isdir():
                            fs.mkdir(path, parents=True, exist_ok=True)
                            continue
                        data = tar.extractfile(member)
                        if data is None:
                            raise UsageError(f"cannot read member {member.name}")
                        fs.write_from(path, data, member.size, parents=True)
                        done += member.size
                        bar.update(done)
                bar.close()
    return 0


def _open_tar(spool: IO[bytes], name: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=spool, mode="r:*")
    except tarfile.TarError:
        raise UsageError(f"{name} is not a tar stream (plain, gzip, bzip2 or xz)") from None


def _open(name: str) -> IO[bytes]:
    try:
        return open(name, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None


def _checked_members(tar: tarfile.TarFile, into: str) -> list[tuple[tarfile.TarInfo, str]]:
    """Every member with its target path; refuses anything that is not a plain dir or file."""
    base = [name.decode() for name in split_path(into)]
    members: list[tuple[tarfile.TarInfo, str]] = []
    try:
        entries = tar.getmembers()
    except tarfile.TarError as exc:
        raise UsageError(f"the tar stream is damaged: {exc}") from None
    for member in entries:
        if not (member.isdir() or member.isfile()):
            raise UsageError(f"{member.name}: only directories and regular files can be imported")
        if member.name.startswith("/"):
            raise UsageError(f"{member.name}: absolute names are refused")
        parts = [part for part in member.name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise UsageError(f"{member.name}: '..' is refused")
        if not parts:
            continue
        path = "/" + "/".join(base + parts)
        split_path(path)  # names too long or unusable fail here, before any change
        members.append((member, path))
    return members


def _check_against(fs: Filesystem, members: list[tuple[tarfile.TarInfo, str]]) -> None:
    """Refuse conflicts with the tree (file vs directory) and a lack of space, up front."""
    kinds = {path: member.isdir() for member, path in members}
    for path, is_dir in kinds.items():
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/" + "/".join(parts[:depth])
            if kinds.get(parent) is False:
                raise NotADirectoryPathError(f"{parent} is a file in the archive")
            if fs.exists(parent) and not fs.stat(parent).is_dir:
                raise NotADirectoryPathError(f"{parent} is not a directory")
        if fs.exists(path) and fs.stat(path).is_dir != is_dir:
            error = IsADirectoryPathError if not is_dir else NotADirectoryPathError
            raise error(f"{path} is {'a directory' if not is_dir else 'a file'} already")
    usage = fs.usage()
    size = sum(member.size for member, _ in members if member.isfile())
    needed = -(-size // usage.block_size) + len(members)
    if needed > usage.free_blocks:
        raise DeviceFullError(
            f"the archive needs about {needed} blocks; {usage.free_blocks} are free"
        )
    if any(member.size < 0 for member, _ in members):
        raise FsError("a member has a negative size")
