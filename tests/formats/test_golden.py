"""The on-disk format cannot drift unnoticed: a regenerated golden image matches byte for byte."""

from __future__ import annotations

import hashlib
import json

from cvmstore.block import MemoryDevice
from cvmstore.integrity import MemoryAnchor, open_store
from cvmstore.integrity.anchor import AnchorState
from cvmstore.integrity.superblock import SuperblockSlot
from tests.formats.golden import GOLDEN, KEY, build_golden_image, decode


def test_regenerated_image_is_byte_identical() -> None:
    stored = decode(GOLDEN.read_text())
    assert hashlib.sha256(stored).hexdigest() == json.loads(GOLDEN.read_text())["sha256"]
    fresh = build_golden_image()
    assert len(fresh) == len(stored)
    differing = [
        i
        for i in range(len(fresh) // 4096)
        if fresh[i * 4096 : (i + 1) * 4096] != stored[i * 4096 : (i + 1) * 4096]
    ]
    assert differing == [], f"format drift in blocks {differing}"


def test_golden_image_opens_and_reads() -> None:
    image = decode(GOLDEN.read_text())
    device = MemoryDevice.from_image(image)
    slots = [SuperblockSlot.decode(image[i * 4096 : i * 4096 + 512]) for i in range(2)]
    newest = max(slots, key=lambda s: s.generation)
    assert newest.generation == 3
    anchor = MemoryAnchor()
    anchor.advance(newest.volume_id, None, AnchorState(3, newest.digest()))
    store = open_store(device, KEY, anchor)
    assert store.read(0).startswith(b"golden block 0\n")
    assert store.read(2).startswith(b"rewritten")
    assert store.read(4) == bytes(4096)
    assert store.read(store.block_count - 1).startswith(b"last")
    assert store.check().ok
