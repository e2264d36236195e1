"""Entry point of `cvmstore`: the subcommands and the mapping of errors to exit codes.

Each subcommand group lives in its own module with `register(subparsers)`; this module only
assembles them, runs the chosen handler, and turns a `CvmstoreError` into one line on stderr
and the class's documented exit code. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cvmstore import __version__
from cvmstore.cli import archive, bench, cocoonfs, demo, guest, igvm, image, kbs, snp
from cvmstore.cli.usage import UsageError
from cvmstore.errors import CvmstoreError, all_error_classes

__all__ = ["build_parser", "entry_point", "main"]


def _exit_code_table() -> str:
    rows = [
        f"  {cls.exit_code:>3}  {cls.__name__}"
        for cls in sorted(all_error_classes(), key=lambda c: c.exit_code)
    ]
    return "exit status:\n    0  success\n    2  usage error\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="cvmstore",
        description=(
            "Trusted persistent storage for confidential VMs: an encrypted, authenticated, "
            "rollback-protected store on an image file the host controls."
        ),
        epilog=_exit_code_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cvmstore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (image, archive, demo, bench, snp, igvm, kbs, guest, cocoonfs):
        module.register(commands)
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)
    return parser


def _parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(arguments)
    if not extras:
        return args
    if arguments.index(args.command) != 0:
        parser.parse_args(arguments)  # unknown options before the command: report, exit 2
    # Before Python 3.12.7 (CPython gh-59317), an option between positionals makes argparse
    # fill an optional positional with its default too early, so `ls IMAGE -l DIR` is
    # refused. Parse the command's arguments again, options and positionals intermixed;
    # arguments that really are unknown are still refused there.
    command: argparse.ArgumentParser = args.command_parser
    return command.parse_intermixed_args(arguments[1:], argparse.Namespace(command=args.command))


def main(argv: Sequence[str] | None = None) -> int:
    """Run `cvmstore` with `argv` (default: `sys.argv[1:]`) and return the exit status."""
    parser = build_parser()
    args = _parse_args(parser, argv)
    try:
        code: int = args.handler(args)
    except UsageError as exc:
        parser.exit(2, f"cvmstore {args.command}: error: {exc}\n")
    except CvmstoreError as exc:
        print(f"cvmstore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cvmstore: interrupted", file=sys.stderr)
        return 130
    return code


def entry_point() -> None:
    """The console script."""
    sys.exit(main())
