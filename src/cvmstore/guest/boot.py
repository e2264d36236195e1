"""Early attestation at boot: attest to the KBS, receive the volume key, open the anchored volume.

The flow of an SVSM-like guest, for one volume:

1. Evidence bound to a fresh key (configfs-tsm on hardware, the simulator otherwise), then the
   RCAR handshake (auth, attest). The KBS's answers must be signed by the pinned KBS key.
2. The volume's root secret, released only under the volume's policy.
3. The secure store opened with the KBS ledger as its anchor: an image older than the ledger
   is a rollback, one that diverged from it a fork; either way the volume is not opened.
   A first boot (blank image, empty ledger) formats the volume; a blank image while the ledger
   holds a state is refused (the host erased or replaced it).

Every failure is one exception of the `cvmstore.errors` tree with one clear message, and
nothing is written to the image before the checks pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

from cvmstore.block.protocol import BlockDevice
from cvmstore.errors import NotAnImageError, RollbackError
from cvmstore.fs import Filesystem, make_filesystem, open_filesystem
from cvmstore.integrity import AnchorPolicy
from cvmstore.kbs.anchor import KbsAnchor
from cvmstore.kbs.client import KbsClient
from cvmstore.kbs.evidence_source import EvidenceSource
from cvmstore.kbs.protocol import volume_resource_path

__all__ = ["BootReport", "GuestConfig", "boot"]


@dataclass(frozen=True)
class GuestConfig:
    """How a guest reaches its KBS and which volume it unlocks.

    Attributes:
        kbs_url: the KBS's base URL.
        volume: the volume's name at the KBS.
        kbs_key: the pinned thumbprint of the KBS's signing key (`kbs admin token-key`);
            None accepts any KBS (development only: a forged KBS is then not detected).
        evidence: where evidence comes from.
        binding: "trustee" or "svsm" (the volume's policy must allow it).
        verify: TLS verification: True, a CA bundle path, or False.
        anchor_policy: strict (every commit anchored) by default; batched with
            `AnchorPolicy(every_commits=K, every_seconds=T)`.
        retries: connection attempts after the first, with exponential backoff.
        backoff: the first retry's delay in seconds.
        timeout: seconds per request.
    """

    kbs_url: str
    volume: str
    evidence: EvidenceSource
    kbs_key: str | None = None
    binding: str = "trustee"
    verify: bool | str = True
    anchor_policy: AnchorPolicy = field(default_factory=AnchorPolicy)
    retries: int = 4
    backoff: float = 0.25
    timeout: float = 10.0

    def client(self) -> KbsClient:
        """A fresh client for this KBS."""
        return KbsClient(
            self.kbs_url,
            self.evidence,
            kbs_key=self.kbs_key,
            binding=self.binding,
            verify=self.verify,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
        )


@dataclass
class BootReport:
    """A booted volume: the filesystem, and how it came to be."""

    fs: Filesystem
    client: KbsClient
    formatted: bool
    generation: int

    def close(self) -> None:
        """Close the filesystem (anchoring any batched commits), then the connection."""
        try:
            self.fs.close()
        finally:
            self.client.close()

    def __enter__(self) -> BootReport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def boot(device: BlockDevice, config: GuestConfig, *, format_if_blank: bool = True) -> BootReport:
    """Attest, receive the volume's key, and open (or, at first boot, format) the volume.

    Raises:
        KbsUnreachableError: the KBS cannot be reached after the retries.
        KbsAuthError: the KBS refused the evidence or the volume's policy denied it.
        KbsIdentityError: an answer was not signed by the pinned KBS key (a forged KBS).
        RollbackError: the image is older than the ledger (or blank while the ledger holds a
            state).
        ForkError: the image diverged from the ledger (a clone advanced it).
        IntegrityError, WrongKeyError, NotAnImageError: the image itself is damaged or foreign.
    """
    client = config.client()
    try:
        client.attest()
        root_secret = client.resource(volume_resource_path(config.volume))
        anchor = KbsAnchor(client, config.volume)
        try:
            fs = open_filesystem(device, root_secret, anchor, policy=config.anchor_policy)
            formatted = False
        except NotAnImageError:
            if not format_if_blank:
                raise
            anchored = client.ledger_read(config.volume)
            if anchored.generation is not None:
                raise RollbackError(
                    f"the image holds no volume, but the KBS ledger of {config.volume!r} anchors"
                    f" generation {anchored.generation}: the host erased or replaced the image",
                    location="kbs-ledger",
                ) from None
            fs = make_filesystem(device, root_secret, anchor, policy=config.anchor_policy)
            formatted = True
    except BaseException:
        client.close()
        raise
    return BootReport(fs, client, formatted, fs.store.generation)
