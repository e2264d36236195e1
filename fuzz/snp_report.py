"""atheris target: SEV-SNP report decoding raises only FormatError, and round-trips exactly.

Each input is decoded as is (almost always refused for its length), fitted to the report
size (zero padded or cut, so zeros keep the reserved bytes valid and the deeper checks are
reached), and through `load_report` (raw, hex text, Azure HCL). A report that decodes must
re-encode to exactly its bytes; only the `FormatError` family may escape.
"""

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from cvmstore.attest.report import REPORT_SIZE, AttestationReport, load_report
    from cvmstore.errors import FormatError


def round_trip(data: bytes) -> None:
    try:
        report = AttestationReport.decode(data)
    except FormatError:
        return
    if report.encode() != data:
        raise AssertionError("a decoded SNP report does not re-encode to its bytes")
    report.to_dict()


def test_one_input(data: bytes) -> None:
    round_trip(data)
    round_trip(data[:REPORT_SIZE].ljust(REPORT_SIZE, b"\0"))
    with contextlib.suppress(FormatError):
        load_report(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
