"""`cvmstore bench`: run benchmark suites and print figures as ratios to same-run baselines."""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

from cvmstore.bench import SUITES, BenchConfig

__all__ = ["register"]


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `bench` to the command line."""
    listing = "\n".join(f"  {name:<8} {text}" for name, (text, _) in SUITES.items())
    parser = commands.add_parser(
        "bench",
        help="measure speed against baselines from the same run",
        description=(
            "Run benchmarks. Every figure is printed beside a baseline that does the same "
            "work without cvmstore, measured in the same run, and as a ratio (the convention "
            "of `cryptsetup benchmark`)."
        ),
        epilog=f"suites:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="a short run (smaller, fewer rounds)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--dir",
        default=tempfile.gettempdir(),
        help="where to create scratch images (default: %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per figure")
    parser.add_argument(
        "--ops",
        type=int,
        default=None,
        metavar="N",
        help="operations per run, for suites that take a count (cocoonfs: 1000)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        print(
            f"cvmstore bench: unknown suite {', '.join(unknown)}; choose from {', '.join(SUITES)}",
            file=sys.stderr,
        )
        return 2
    rounds = args.rounds or (3 if args.quick else 7)
    config = BenchConfig(quick=args.quick, directory=args.dir, rounds=rounds, ops=args.ops)
    reports = []
    for name in args.suites or list(SUITES):
        _, runner = SUITES[name]
        if not args.json:
            print(f"running {name} ...", file=sys.stderr, flush=True)
        reports.append(runner(config))
    if args.json:
        print("[" + ",\n".join(report.to_json() for report in reports) + "]")
    else:
        print("\n\n".join(report.to_text() for report in reports))
    return 0
