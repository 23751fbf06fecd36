"""``headroom report RUN_ID`` and ``headroom runbook SPEC.yaml``: governance documents for humans.

``report`` prints a job's post-mortem, fetched from its MLflow run; ``runbook`` renders the on-call
runbook of a spec (steps, pause criteria, risk budget, rollback, contacts) as Markdown.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import HeadroomError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def register(sub) -> None:
    p = sub.add_parser("report", help="print a job's post-mortem (Markdown) from its MLflow run")
    p.add_argument("run_id", help="the MLflow run id (the summary's mlflow_run_id)")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("runbook", help="render a job's on-call runbook from its spec (Markdown)")
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("-o", "--output", help="write the runbook to this file instead of stdout")
    p.set_defaults(func=cmd_runbook)


def cmd_report(args) -> int:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    from runtime.governance.job import fetch_postmortem

    print(fetch_postmortem(args.run_id, uri), end="")
    return 0


def cmd_runbook(args) -> int:
    from runtime.governance.runbook import render_runbook
    from runtime.spec.job import load_spec

    text = render_runbook(load_spec(args.spec, check_paths=False))
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise HeadroomError(f"cannot write the runbook ({exc.strerror})", where=args.output,
                            fix="pass -o a writable file path") from None
    else:
        print(text, end="")
    return 0
