"""Superblock slots: encode/decode round-trip; arbitrary bytes raise only FormatError."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cvmstore.block import MemoryDevice
from cvmstore.errors import CvmstoreError, FormatError, NotAnImageError
from cvmstore.integrity import MemoryAnchor, format_store, open_store
from cvmstore.integrity.entry import Entry
from cvmstore.integrity.superblock import MAGIC, SLOT_SIZE, Algorithms, SuperblockSlot


def sample_slot() -> SuperblockSlot:
    return SuperblockSlot(
        algorithms=Algorithms(),
        block_size=4096,
        volume_id=os.urandom(16),
        salt=os.urandom(32),
        physical_blocks=100,
        logical_blocks=80,
        data_blocks=84,
        kcv=os.urandom(32),
        wrapped_key=os.urandom(40),
        generation=7,
        root=Entry(5, 7, os.urandom(12), os.urandom(16)),
        cursor=3,
        used_blocks=9,
        previous_digest=os.urandom(32),
        anchored_generation=6,
        anchored_digest=os.urandom(32),
        mac=os.urandom(32),
    )


def test_round_trip() -> None:
    slot = sample_slot()
    data = slot.encode()
    assert len(data) == SLOT_SIZE
    assert SuperblockSlot.decode(data) == slot
    assert SuperblockSlot.decode(data).encode() == data


@pytest.mark.parametrize(
    ("offset", "value", "error"),
    [
        (0, b"X", "magic"),
        (9, b"\x01", "version"),
        (12, b"\x02", "algorithms"),
        (10, b"\x01", "size"),
        (100, b"\x01", "reserved"),
        (400, b"\x01", "reserved"),
    ],
)
def test_each_field_check(offset: int, value: bytes, error: str) -> None:
    data = bytearray(sample_slot().encode())
    data[offset : offset + 1] = value
    with pytest.raises(FormatError, match=error):
        SuperblockSlot.decode(bytes(data))


@given(st.binary(max_size=600))
@example(MAGIC + bytes(504))
def test_arbitrary_bytes_raise_only_format_errors(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        SuperblockSlot.decode(data)


@given(st.binary(min_size=0, max_size=512), st.integers(0, 1))
def test_arbitrary_superblock_bytes_never_open_or_crash(data: bytes, slot: int) -> None:
    device = MemoryDevice(16)
    format_store(device, bytes(32), MemoryAnchor()).close()
    image = bytearray(device.image())
    for i in range(2):  # both slots garbled
        image[i * 4096 : i * 4096 + len(data)] = data
    with pytest.raises(CvmstoreError):
        open_store(MemoryDevice.from_image(bytes(image)), bytes(32), MemoryAnchor())


def test_garbage_image_is_not_an_image() -> None:
    with pytest.raises(NotAnImageError):
        open_store(MemoryDevice.from_image(os.urandom(16 * 4096)), bytes(32), MemoryAnchor())
