"""``headroom`` command line: parses arguments and calls library functions, nothing more.

Each command group (``runtime/cli/jobs.py``, ``planning.py``, ``governance.py``, ``release.py``)
registers its commands here through a ``register(subparsers)`` function that sets ``func``
(``args -> exit code``) on each parser. Exit codes: 0 success, 1 a runtime failure, 2 a usage or spec
error.
"""

from __future__ import annotations

import argparse
import sys

from runtime.errors import DataError, HeadroomError, SpecError

DESCRIPTION = """Retrain models in the latency headroom of a live serving cluster.

A governor watches what the service's users feel and pauses, throttles or resumes every training job
accordingly; each job checkpoints when it yields and resumes with every row consumed exactly once."""
EPILOG = """exit codes: 0 success; 1 a runtime failure (no governor running, MLflow unreachable, a job
that failed, a rollout rolled back); 2 a usage or spec error.
docs: README.md and docs/ (the job spec: docs/spec.md); headroom COMMAND --help for each command."""
USAGE_ERRORS = (SpecError, DataError)  # the user's input is wrong: exit 2, as argparse does


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("headroom")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from runtime.cli import governance, jobs, planning, release

    parser = argparse.ArgumentParser(prog="headroom", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"headroom {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
        return 2 if isinstance(exc, USAGE_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
