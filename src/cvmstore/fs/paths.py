"""Path and name rules: what a name may be, and how a path splits into names.

Paths are `/`-separated, absolute or relative to the root (the filesystem has no working
directory); empty components are ignored, so `a//b/` is `/a/b`. `.` and `..` are refused
rather than resolved, so a path always names what it spells.
"""

from __future__ import annotations

from cvmstore.errors import InvalidPathError, NameTooLongError

__all__ = ["MAX_NAME", "MAX_PATH", "check_name", "join", "split_path"]

MAX_NAME = 255
MAX_PATH = 4096


def check_name(name: str) -> bytes:
    """Return the UTF-8 form of one name, or raise if it cannot be stored."""
    if name in ("", ".", ".."):
        raise InvalidPathError(f"{name!r} is not a usable name")
    if "/" in name or "\0" in name:
        raise InvalidPathError(f"the name {name!r} contains '/' or NUL")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPathError(f"the name {name!r} is not valid Unicode text") from None
    if len(raw) > MAX_NAME:
        raise NameTooLongError(f"a name is {len(raw)} bytes long; the limit is {MAX_NAME}")
    return raw


def split_path(path: str) -> list[bytes]:
    """The names along `path` (the root is the empty list)."""
    if not isinstance(path, str):
        raise TypeError(f"a path is a str, not {type(path).__name__}")
    size = len(path.encode("utf-8", errors="surrogatepass"))
    if size > MAX_PATH:
        raise NameTooLongError(f"the path is {size} bytes long; the limit is {MAX_PATH}")
    return [check_name(part) for part in path.split("/") if part]


def join(names: list[bytes]) -> str:
    """The absolute path of a list of names."""
    return "/" + "/".join(name.decode("utf-8") for name in names)
