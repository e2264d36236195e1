"""Trusted anchors: the (generation, digest) of a volume's newest commit, kept off the image.

The host can restore an older copy of the whole image, and every block of it will verify. Only
something the host cannot reset tells the store that a newer commit exists: the anchor. The
store writes and flushes a commit, then advances the anchor from N to N+1 by compare-and-swap,
then reports success (docs/format.md, "Commit protocol").

- `FileAnchor`: a small file, updated crash-safely (temp file, fsync, rename, fsync directory).
  It is exactly as trustworthy as the place it lives: on a disk the host controls, the host can
  roll it back together with the image. For development and single-host use.
- `NoAnchor`: an explicit opt-out; the store says at every open that whole-image rollback
  cannot be detected.
- `MemoryAnchor`: in-process, for tests and for sharing one anchor between store objects.
- The KBS ledger (`cvmstore.kbs`) implements the same protocol remotely.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cvmstore.block.file import fsync_directory
from cvmstore.errors import AnchorError, ForkError

__all__ = ["Anchor", "AnchorState", "FileAnchor", "MemoryAnchor", "NoAnchor"]


@dataclass(frozen=True, slots=True)
class AnchorState:
    """What the anchor holds for a volume: its newest anchored commit."""

    generation: int
    digest: bytes


class Anchor(Protocol):
    """Trusted storage of one volume's newest commit, advanced by compare-and-swap."""

    @property
    def enforcing(self) -> bool:
        """False only for `NoAnchor`: the anchor detects nothing."""
        ...

    def read(self, volume_id: bytes) -> AnchorState | None:
        """The anchored state, or None if the volume has none yet."""
        ...

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        """Set `new` if the anchor still holds `expected`; raise `ForkError` otherwise."""
        ...


def _conflict(
    volume_id: bytes, expected: AnchorState | None, found: AnchorState | None
) -> ForkError:
    return ForkError(
        f"the anchor of volume {volume_id.hex()} moved underneath us: expected generation "
        f"{expected.generation if expected else 'none'}, found "
        f"{found.generation if found else 'none'}; another copy of this image advanced it",
        location="anchor",
    )


class MemoryAnchor:
    """An anchor in process memory (tests; several stores sharing one anchor)."""

    def __init__(self) -> None:
        self._states: dict[bytes, AnchorState] = {}
        self.advances = 0

    @property
    def enforcing(self) -> bool:
        """Memory anchors enforce."""
        return True

    def read(self, volume_id: bytes) -> AnchorState | None:
        """The anchored state."""
        return self._states.get(volume_id)

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        """Compare-and-swap."""
        found = self._states.get(volume_id)
        if found != expected:
            raise _conflict(volume_id, expected, found)
        self._states[volume_id] = new
        self.advances += 1


class NoAnchor:
    """No anchor at all: whole-image rollback and clones cannot be detected."""

    @property
    def enforcing(self) -> bool:
        """Never."""
        return False

    def read(self, volume_id: bytes) -> AnchorState | None:
        """Nothing is ever anchored."""
        return None

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        """Nothing to do."""


class FileAnchor:
    """An anchor in a local JSON file, one volume per file, updated crash-safely."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def enforcing(self) -> bool:
        """File anchors enforce (as far as the file itself is safe)."""
        return True

    def read(self, volume_id: bytes) -> AnchorState | None:
        """The anchored state, None when the file does not exist yet.

        Raises:
            AnchorError: the file is unreadable, malformed, or belongs to another volume.
        """
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AnchorError(f"cannot read anchor {self.path}: {exc.strerror}") from exc
        try:
            record = json.loads(text)
            stored_id = bytes.fromhex(record["volume"])
            state = AnchorState(int(record["generation"]), bytes.fromhex(record["digest"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise AnchorError(f"anchor {self.path} is malformed") from exc
        if stored_id != volume_id:
            raise AnchorError(
                f"anchor {self.path} belongs to volume {stored_id.hex()}, not {volume_id.hex()}"
            )
        return state

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        """Compare-and-swap, then replace the file atomically and durably."""
        found = self.read(volume_id)
        if found != expected:
            raise _conflict(volume_id, expected, found)
        record = {
            "volume": volume_id.hex(),
            "generation": new.generation,
            "digest": new.digest.hex(),
        }
        directory = self.path.resolve().parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(record, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            fsync_directory(directory)
        except OSError as exc:
            raise AnchorError(f"cannot update anchor {self.path}: {exc.strerror}") from exc
