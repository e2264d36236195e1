"""`cvmstore guest`: the image commands with the key and the anchor coming from a KBS.

`guest mkfs|info|ls|put|get|cat|rm|mv|mkdir|fsck` are the image commands themselves
(`cli.image.register(..., guest=True)`): the same handlers and arguments, except that the
image is `--image FILE` and, in place of --key-file and --anchor, each command boots as a
confidential VM does (`cvmstore.guest.boot`: attest, receive the volume's key, open under the
KBS ledger). `guest simulator-root` writes the attestation simulator's root, for a test or
demo KBS to trust.
"""

from __future__ import annotations

import argparse
import hashlib
import textwrap
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cvmstore.cli import image
from cvmstore.cli.common import (
    GUEST_EPILOG,
    GUEST_EXAMPLE,
    GUEST_FLOW,
    SIMULATOR_KEY_SIZE,
    NestedParser,
)
from cvmstore.cli.keys import write_private_file

__all__ = ["register"]

_SIMULATOR_ROOT_TEXT = (
    "Make a new root (ARK) for the attestation simulator that `--evidence simulator` uses, "
    "and write its private key and certificate to FILE (PEM, mode 0600). Guest commands "
    "sign with it (--simulator-root FILE or $CVMSTORE_SIMULATOR_ROOT); a KBS trusts it when "
    "FILE is listed in its configuration's `simulator_roots` (the KBS reads only the "
    "certificate). Tests and demos only: whoever holds FILE can sign reports this root "
    "certifies, so never give it to a production KBS. Prints the measurement the "
    f"simulator's reports carry unless --measurement says otherwise (for the volume's "
    f"policy). RSA-{SIMULATOR_KEY_SIZE}, not 4096 as AMD's roots: the simulator makes a "
    "fresh ASK of that size in every guest command."
)


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `cvmstore guest ...` to the command line."""
    guest = commands.add_parser(
        "guest",
        help="the image commands, with the key and the anchor from a KBS (attested boot)",
        description=textwrap.fill(
            "The image commands as a confidential VM runs them at boot: attest to a Key "
            "Broker Service (KBS), receive the volume's key, and open the image with the "
            "KBS's rollback ledger as its anchor. Each action's --help gives its arguments.",
            88,
        ),
        epilog=GUEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = guest.add_subparsers(dest="guest_command", metavar="ACTION", required=True)
    image.register(actions, guest=True)

    p = actions.add_parser(
        "simulator-root",
        help="make a root for the attestation simulator, for a test KBS to trust",
        description=textwrap.fill(_SIMULATOR_ROOT_TEXT, 88),
        epilog=(
            f"{GUEST_FLOW}\n{GUEST_EXAMPLE}\n"
            "exit status: 0 written; 2 usage error (FILE exists without --force, or cannot "
            "be written).\n\n"
            "example:\n"
            "  cvmstore guest simulator-root sim-root.pem\n"
            "  echo 'simulator_roots = [\"sim-root.pem\"]' >> kbs.toml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", type=Path, help="where to write the root (PEM)")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.set_defaults(handler=_simulator_root, command_parser=NestedParser(p))


def _simulator_root(args: argparse.Namespace) -> int:
    from cvmstore.attest.simulator import DEFAULT_MEASUREMENT, Simulator

    root = Simulator(key_size=SIMULATOR_KEY_SIZE).root
    path: Path = args.file
    write_private_file(path, root.to_pem(), force=args.force)
    spki = root.certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    print(
        f"wrote a new simulator root (SPKI SHA-256 {hashlib.sha256(spki).hexdigest()}) to"
        f" {path}: list it in the KBS's simulator_roots (tests and demos only)\n"
        f"its reports carry measurement {DEFAULT_MEASUREMENT.hex()} unless --measurement",
    )
    return 0
