"""atheris target: SuperblockSlot.decode on arbitrary bytes raises only FormatError."""

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from cvmstore.errors import FormatError
    from cvmstore.integrity.superblock import SuperblockSlot


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        SuperblockSlot.decode(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
