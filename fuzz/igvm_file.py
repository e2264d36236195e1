"""atheris target: IGVM parsing, and measuring what parses, raises only FormatError.

Each input is parsed as is (almost always refused for its magic, size or CRC), and again
behind a repaired fixed header (magic, version 1, variable headers at 24 with a size that
fits, the real total size and a correct CRC-32), so the record walk and the per-type rules
are reached. A file that parses and supports SEV-SNP is measured in both styles, with and
without native zero pages and the KVM rules; only the `FormatError` family may escape.
"""

import contextlib
import struct
import sys
import zlib

import atheris

with atheris.instrument_imports():
    from cvmstore.errors import FormatError
    from cvmstore.igvm.format import FIXED_HEADER_SIZE, PlatformType, parse_igvm
    from cvmstore.igvm.measure import measure_snp


def repaired(data: bytes) -> bytes:
    """`data` behind a valid fixed header: its bytes from offset 24 become the headers."""
    body = data[FIXED_HEADER_SIZE:]
    vh_size = 0
    if len(data) >= 16 and body:
        vh_size = struct.unpack_from("<I", data, 12)[0] % len(body)
    fixed = struct.pack("<4sIIII", b"IGVM", 1, FIXED_HEADER_SIZE, vh_size, 24 + len(body))
    crc = zlib.crc32(fixed + bytes(4) + body[:vh_size])
    return fixed + struct.pack("<I", crc) + body


def parse_and_measure(data: bytes) -> None:
    try:
        igvm = parse_igvm(data)
    except FormatError:
        return
    if igvm.platform_mask(PlatformType.SEV_SNP) is None:
        return
    with contextlib.suppress(FormatError):
        measure_snp(igvm)
    with contextlib.suppress(FormatError):
        measure_snp(igvm, style="igvmmeasure", native_zero=True)
    with contextlib.suppress(FormatError):
        measure_snp(igvm, check_kvm=True)


def test_one_input(data: bytes) -> None:
    parse_and_measure(data)
    parse_and_measure(repaired(data))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
