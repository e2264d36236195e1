"""Getting a report inside an SNP guest through Linux configfs-tsm (kernel 6.7 and later).

The kernel ABI (Documentation/ABI/testing/configfs-tsm-report): make a directory under
`/sys/kernel/config/tsm/report/`, write up to 64 bytes to its `inblob` (and optionally the
VMPL to `privlevel`), then read `outblob`: the kernel asks the platform for a report at that
moment. For the `sev_guest` provider `outblob` is the bare attestation report (the kernel
strips the MSG_REPORT_RSP header) and `auxblob` is the GHCB certificate table the host
supplied with an extended guest request (empty when it supplied none). `generation` counts
the writes to the entry: it is read before our writes and again after `outblob` and `auxblob`,
and must have grown by exactly our own writes, or another writer changed the request (its
`privlevel`, its `inblob`) while the report was made. The report must carry the REPORT_DATA
written and, when a `privlevel` was requested, come from that VMPL. Removing the directory
frees the entry.

An SNP report always carries 64 bytes of REPORT_DATA, so `inblob` is exactly 64 bytes here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from cvmstore.errors import AttestationError

__all__ = ["DEFAULT_ROOT", "ConfigfsTsm"]

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
_REPORT_DATA = slice(0x50, 0x90)  # where REPORT_DATA sits in an SNP report
_VMPL = slice(0x30, 0x34)  # and the VMPL (u32, little-endian)
_PRIVLEVEL_MAX = 3


class ConfigfsTsm:
    """The configfs-tsm report interface under `root`.

    Failures of the interface (no configfs-tsm, another provider, a kernel error, a request
    changed underneath us) raise `AttestationError` with check "tsm".
    """

    PROVIDER = "sev_guest"

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def available(self) -> bool:
        """Whether the report directory exists (configfs mounted, a TSM provider loaded)."""
        return self.root.is_dir()

    def get_report(
        self, report_data: bytes, *, privlevel: int | None = None
    ) -> tuple[bytes, bytes]:
        """Get a fresh report whose REPORT_DATA is `report_data`, with its certificate table.

        Args:
            report_data: exactly 64 bytes; bind a nonce and your public key into them.
            privlevel: the VMPL to request (0-3). None leaves the kernel's default (the
                lowest level allowed, `privlevel_floor` under an SVSM).

        Returns:
            `(report, cert_table)`: the 1184-byte report (`outblob`) and the GHCB certificate
            table (`auxblob`; b"" when the host supplied no certificates).

        Raises:
            ValueError: `report_data` is not 64 bytes or `privlevel` not 0-3.
            AttestationError: the interface is missing or failed, another writer changed the
                request, or the report does not carry `report_data` or comes from another
                VMPL than `privlevel` (check "tsm").
        """
        report_data = bytes(report_data)
        if len(report_data) != 64:
            raise ValueError(f"report_data must be 64 bytes, not {len(report_data)}")
        if privlevel is not None and not 0 <= privlevel <= _PRIVLEVEL_MAX:
            raise ValueError(f"privlevel must be 0-{_PRIVLEVEL_MAX}, not {privlevel}")
        entry = self.root / f"cvmstore-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._mkdir(entry)
        except FileNotFoundError:
            raise AttestationError(
                f"{self.root} does not exist: no configfs-tsm here (Linux 6.7+ in an SNP "
                "guest, with configfs mounted)",
                check="tsm",
            ) from None
        except OSError as exc:
            raise _failed(f"cannot create {entry}", exc) from None
        try:
            return self._request(entry, report_data, privlevel)
        finally:
            # Leaving the entry behind only costs kernel memory; never mask the real error.
            with contextlib.suppress(OSError):
                self._rmdir(entry)

    def _request(
        self, entry: Path, report_data: bytes, privlevel: int | None
    ) -> tuple[bytes, bytes]:
        try:
            provider = self._read(entry / "provider").decode("ascii", "replace").strip()
            if provider != self.PROVIDER:
                raise AttestationError(
                    f"the TSM provider is {provider!r}, not {self.PROVIDER!r} (not an SNP guest?)",
                    check="tsm",
                )
            # Every write to the entry bumps `generation`: read it before our writes and
            # count them, so any other writer's, before or after ours, shows.
            start = self._generation(entry)
            writes = 0
            if privlevel is not None:
                self._write(entry / "privlevel", f"{privlevel}\n".encode())
                writes += 1
            self._write(entry / "inblob", report_data)
            writes += 1
            report = self._read(entry / "outblob")
            try:
                table = self._read(entry / "auxblob")
            except FileNotFoundError:
                table = b""
            after = self._generation(entry)
        except AttestationError:
            raise
        except OSError as exc:
            raise _failed(f"the report request in {entry} failed", exc) from None
        if after != start + writes:
            raise AttestationError(
                f"the request in {entry} was changed by another writer (generation {start} -> "
                f"{after}; our {writes} write(s) account for {start + writes})",
                check="tsm",
            )
        if report[_REPORT_DATA] != report_data:
            raise AttestationError(
                "the report's REPORT_DATA is not the data written to inblob", check="tsm"
            )
        vmpl = int.from_bytes(report[_VMPL], "little")
        if privlevel is not None and vmpl != privlevel:
            raise AttestationError(
                f"the report comes from VMPL {vmpl}, not the privlevel {privlevel} requested",
                check="tsm",
            )
        return report, table

    def _generation(self, entry: Path) -> int:
        text = self._read(entry / "generation").decode("ascii", "replace").strip()
        try:
            return int(text)
        except ValueError:
            raise AttestationError(
                f"{entry}/generation is not a number: {text!r}", check="tsm"
            ) from None

    # The file operations, one place each, so a test can stand in for the kernel.

    def _mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def _rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def _read(self, path: Path) -> bytes:
        return path.read_bytes()

    def _write(self, path: Path, data: bytes) -> None:
        # One write() call: configfs hands a binary attribute its whole buffer on close.
        fd = os.open(path, os.O_WRONLY)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.EIO, f"short write to {path}")
        finally:
            os.close(fd)


def _failed(what: str, exc: OSError) -> AttestationError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {
        errno.EACCES: " (needs root)",
        errno.EPERM: " (needs root)",
        errno.ENXIO: " (no TSM provider is loaded: the sev-guest module?)",
        errno.ENOTTY: " (the VMPCK is disabled or no provider is loaded)",
        errno.EINVAL: " (the platform refused the request: privlevel below the floor?)",
    }.get(exc.errno or 0, "")
    return AttestationError(f"{what}: {reason}{hint}", check="tsm")
