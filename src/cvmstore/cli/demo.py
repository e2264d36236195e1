"""`cvmstore demo`: run the whole story on embedded defaults."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `demo` to the command line."""
    parser = commands.add_parser(
        "demo",
        help="play the whole flow on embedded defaults, attacks included",
        description=(
            "Play the whole cvmstore story with nothing to prepare: a key broker on a free "
            "loopback port (SQLite in a temporary directory) and a simulated SEV-SNP guest. "
            "The volume is provisioned; boot 1 attests, receives the key, formats a pflash "
            "image and writes a vTPM state and a UEFI dbx; boot 2 reads them back and updates "
            "the dbx. Then the host attacks: a flipped bit, the image restored from before the "
            "dbx update, a clone, a guest from another image, a forged KBS. Every step prints "
            "what happened and what was expected; the exit status is 0 only if every "
            "expectation held."
        ),
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep the files the demo makes in DIR"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from cvmstore.demo import run_demo  # on use: it loads the whole KBS stack

    result = run_demo(sys.stdout, keep=args.keep)
    return 0 if result.ok else 1
