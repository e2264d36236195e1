"""The whole exception tree of cvmstore, and the command line's exit code for each class.

```
CvmstoreError                       root: `except CvmstoreError` catches every library failure
├── FormatError                     malformed bytes: bad length, reserved bytes, enum values
│   ├── NotAnImageError             no cvmstore magic: this is not a cvmstore image at all
│   └── UnsupportedVersionError     a cvmstore image of a format version we cannot read
├── WrongKeyError                   the image is authentic to another key (header MAC fails)
├── IntegrityError                  authentication failed: AEAD tag, Merkle path, commit record
│   ├── RollbackError               authentic but older than the trusted anchor
│   └── ForkError                   authentic, same version as the anchor, another root
├── DeviceError                     I/O failure below us (wraps OSError), or a bad image geometry
│   └── DeviceFullError             no free block left; the operation was not applied
├── StateError                      object closed, or failed after an integrity error
├── AnchorError                     the trusted anchor itself is unreadable or inconsistent
├── FsError                         filesystem-level failures
│   ├── PathNotFoundError, PathExistsError, NotADirectoryPathError,
│   ├── IsADirectoryPathError, DirectoryNotEmptyError, NameTooLongError,
│   └── InvalidPathError, FsCorruptError
├── AttestationError                evidence rejected: `check` names the failed check
│   ├── ReportSignatureError, CertificateChainError, PolicyError
└── KbsError                        key broker failures
    ├── KbsUnreachableError, KbsProtocolError, KbsAuthError, ResourceNotFoundError
```

Wrong arguments from a caller are `TypeError`/`ValueError`, as in Python; this tree is for
failures of data and environment. Messages never contain key material or plaintext.

Every class carries `exit_code`, the status the command line exits with (documented in
`docs/errors.md`; a test keeps the two in step). 1 is any other `CvmstoreError`, 2 a usage
error from the argument parser.
"""

from __future__ import annotations

__all__ = [
    "AnchorError",
    "AttestationError",
    "CertificateChainError",
    "CvmstoreError",
    "DeviceError",
    "DeviceFullError",
    "DirectoryNotEmptyError",
    "ForkError",
    "FormatError",
    "FsCorruptError",
    "FsError",
    "IntegrityError",
    "InvalidPathError",
    "IsADirectoryPathError",
    "KbsAuthError",
    "KbsError",
    "KbsIdentityError",
    "KbsProtocolError",
    "KbsUnreachableError",
    "NameTooLongError",
    "NotADirectoryPathError",
    "NotAnImageError",
    "PathExistsError",
    "PathNotFoundError",
    "PolicyError",
    "ReportSignatureError",
    "ResourceNotFoundError",
    "RollbackError",
    "StateError",
    "UnsupportedVersionError",
    "WrongKeyError",
    "all_error_classes",
]


class CvmstoreError(Exception):
    """Root of every failure the library reports on purpose."""

    exit_code = 1


class FormatError(CvmstoreError):
    """Bytes that do not follow the format (bad length, reserved bytes, enum values).

    Attributes:
        offset: byte offset of the problem within the structure, when known.
    """

    exit_code = 3

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at offset {offset:#x})")


class NotAnImageError(FormatError):
    """The bytes carry no cvmstore magic: this is not a cvmstore image."""

    exit_code = 4


class UnsupportedVersionError(FormatError):
    """A cvmstore image (or other structure) of a version this code cannot read."""

    exit_code = 5


class WrongKeyError(CvmstoreError):
    """The image header verifies under no key derived from the given secret."""

    exit_code = 6


class IntegrityError(CvmstoreError):
    """Data failed authentication: it was changed, swapped or replayed by someone.

    Attributes:
        location: where the failure was seen (for example "block 17" or "commit record B").
    """

    exit_code = 7

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.location = location
        super().__init__(message if location is None else f"{message} [{location}]")


class RollbackError(IntegrityError):
    """The image is authentic but older than the version the trusted anchor holds."""

    exit_code = 8


class ForkError(IntegrityError):
    """The image is authentic and at the anchored version, but with another root: a clone."""

    exit_code = 9


class DeviceError(CvmstoreError):
    """The storage below failed (an OSError), or its geometry cannot serve the request."""

    exit_code = 10


class DeviceFullError(DeviceError):
    """No free space is left; the operation that needed it was not applied."""

    exit_code = 11


class StateError(CvmstoreError):
    """The object is closed, or it failed earlier and refuses further use."""

    exit_code = 12


class AnchorError(CvmstoreError):
    """The trusted anchor itself cannot be read or updated consistently."""

    exit_code = 13


class FsError(CvmstoreError):
    """A filesystem operation cannot be done on the current tree."""

    exit_code = 20


class PathNotFoundError(FsError):
    """No file or directory at that path."""

    exit_code = 21


class PathExistsError(FsError):
    """Something already exists at that path."""

    exit_code = 22


class NotADirectoryPathError(FsError):
    """A path component, or the target, is a file where a directory is needed."""

    exit_code = 23


class IsADirectoryPathError(FsError):
    """The target is a directory where a file is needed."""

    exit_code = 24


class DirectoryNotEmptyError(FsError):
    """The directory still has entries."""

    exit_code = 25


class NameTooLongError(FsError):
    """A name exceeds 255 bytes or a path 4096 bytes (UTF-8)."""

    exit_code = 26


class InvalidPathError(FsError):
    """A name that cannot be stored (empty, `.`, `..`, NUL, not UTF-8) or a forbidden move."""

    exit_code = 27


class FsCorruptError(FsError):
    """The filesystem metadata is inconsistent, or the store holds no filesystem."""

    exit_code = 28


class AttestationError(CvmstoreError):
    """Attestation evidence was rejected.

    Attributes:
        check: the name of the check that failed (for example "measurement").
    """

    exit_code = 30

    def __init__(self, message: str, *, check: str | None = None) -> None:
        self.check = check
        super().__init__(message if check is None else f"{check}: {message}")


class ReportSignatureError(AttestationError):
    """The report signature does not verify under the endorsement key."""

    exit_code = 31


class CertificateChainError(AttestationError):
    """The VCEK/VLEK, ASK/ASVK, ARK chain does not verify or is not trusted."""

    exit_code = 32


class PolicyError(AttestationError):
    """The report is authentic but does not satisfy the policy."""

    exit_code = 33


class KbsError(CvmstoreError):
    """A key broker request failed."""

    exit_code = 40


class KbsUnreachableError(KbsError):
    """The key broker could not be reached (after the configured retries)."""

    exit_code = 41


class KbsProtocolError(KbsError):
    """The key broker, or its client, broke the protocol."""

    exit_code = 42


class KbsAuthError(KbsError):
    """The key broker refused the request (not attested, or a policy denied it)."""

    exit_code = 43


class ResourceNotFoundError(KbsError):
    """The key broker has no resource at that path."""

    exit_code = 44


class KbsIdentityError(KbsError):
    """The answer did not come from the pinned key broker (wrong signing key or TLS identity)."""

    exit_code = 45


def all_error_classes() -> list[type[CvmstoreError]]:
    """Every class of the tree, root first, in definition order."""
    found: list[type[CvmstoreError]] = []
    pending: list[type[CvmstoreError]] = [CvmstoreError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(sub for sub in cls.__subclasses__() if sub.__module__ == __name__)
    return found
