"""``headroom`` command line: parses arguments and calls library functions, nothing more.

Each subcommand lives with the library code it fronts and registers itself here through a
``register(subparsers)`` function that sets ``func`` (``args -> exit code``) on its parser.
"""

from __future__ import annotations

import argparse
import sys

from runtime.errors import HeadroomError


def build_parser() -> argparse.ArgumentParser:
    from runtime.cli import governance, jobs, planning, release

    parser = argparse.ArgumentParser(prog="headroom", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (jobs, planning, governance, release):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HeadroomError as exc:
        print(f"headroom {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
