"""`KbsAnchor`: the secure store's trusted anchor, kept in the KBS's rollback ledger.

It implements `cvmstore.integrity.Anchor` over an attested `KbsClient`: `read` asks the ledger
(a signed answer bound to a fresh nonce), `advance` compare-and-swaps it. The ledger entry is
bound to one store (its volume id) at the first advance; an image of another store is refused,
so a reformatted or substituted image cannot take over a volume's history.

When the KBS session expires (its token lifetime), the anchor attests again and retries once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cvmstore.errors import AnchorError, KbsAuthError
from cvmstore.integrity.anchor import AnchorState
from cvmstore.kbs.client import KbsClient, LedgerAnswer

__all__ = ["KbsAnchor"]

_T = TypeVar("_T")


class KbsAnchor:
    """The ledger entry of one KBS volume, as an `Anchor`."""

    def __init__(self, client: KbsClient, volume: str) -> None:
        self.client = client
        self.volume = volume
        self.advances = 0

    @property
    def enforcing(self) -> bool:
        """The ledger enforces."""
        return True

    def read(self, volume_id: bytes) -> AnchorState | None:
        """The anchored state, None when the ledger holds nothing yet.

        Raises:
            AnchorError: the ledger anchors another store than `volume_id`.
            KbsError: the KBS refused, could not be reached, or did not prove its identity.
        """
        answer = self._call(lambda: self.client.ledger_read(self.volume))
        return self._state(answer, volume_id)

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        """Compare-and-swap the ledger; `ForkError` when it moved (another copy advanced it)."""
        self._call(
            lambda: self.client.ledger_advance(
                self.volume,
                None if expected is None else (expected.generation, expected.digest),
                (new.generation, new.digest),
                volume_id,
            )
        )
        self.advances += 1

    def _state(self, answer: LedgerAnswer, volume_id: bytes) -> AnchorState | None:
        if answer.generation is None or answer.root is None:
            return None
        if answer.store_id != volume_id:
            held = answer.store_id.hex() if answer.store_id else "none"
            raise AnchorError(
                f"the KBS ledger of volume {self.volume!r} anchors store {held}, not this image's"
                f" store {volume_id.hex()}: the image is not that volume (substituted or"
                " reformatted)"
            )
        return AnchorState(answer.generation, answer.root)

    def _call(self, operation: Callable[[], _T]) -> _T:
        try:
            return operation()
        except KbsAuthError:
            # The session or its token expired: attest again (fresh evidence), once.
            self.client.attest()
            return operation()
