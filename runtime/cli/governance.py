"""``headroom report RUN_ID`` and ``headroom runbook SPEC.yaml``: governance documents for humans.

``report`` prints a job's post-mortem, fetched from its MLflow run; ``runbook`` renders the on-call
runbook of a spec (steps, pause criteria, risk budget, rollback, contacts) as Markdown.
"""

from __future__ import annotations

import json
import os

from runtime.cli.jobs import add_json, add_out, write_atomically

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def register(sub) -> None:
    p = sub.add_parser("report", help="print a job's post-mortem (Markdown) from its MLflow run")
    p.add_argument("run_id", help="the MLflow run id (the summary's mlflow_run_id)")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})")
    add_out(p, "the post-mortem (Markdown)")
    add_json(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("schema", help="print the JSON Schema of the job spec (or of the planner's jobs file)",
                       description="Print the JSON Schema pydantic builds for a job spec (default) or for the "
                                   "planner's jobs file (--jobs-file). Editors use it to check YAML as it is typed: "
                                   "see docs/spec.md.")
    p.add_argument("--jobs-file", action="store_true", help="the schema of headroom plan's --jobs file instead")
    add_out(p, "the schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("runbook", help="render a job's on-call runbook from its spec (Markdown)")
    p.add_argument("spec", help="job spec (YAML)")
    add_out(p, "the runbook instead of printing it")
    p.set_defaults(func=cmd_runbook)


def cmd_report(args) -> int:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    from runtime.governance.job import fetch_postmortem

    text = fetch_postmortem(args.run_id, uri)
    if args.out:
        write_atomically(args.out, text)
    print(json.dumps({"run_id": args.run_id, "tracking_uri": uri, "postmortem_md": text}) if args.json else text, end="\n" if args.json else "")
    return 0


def cmd_schema(args) -> int:
    if args.jobs_file:
        from runtime.windows.plan import PlanFileModel as model
        title = "Headroom planner jobs file"
    else:
        from runtime.spec.job import JobSpec as model
        title = "Headroom job spec"
    schema = dict(model.model_json_schema(), title=title)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    text = json.dumps(schema, indent=2) + "\n"
    if args.out:
        write_atomically(args.out, text)
    else:
        print(text, end="")
    return 0


def cmd_runbook(args) -> int:
    from runtime.governance.runbook import render_runbook
    from runtime.spec.job import load_spec

    text = render_runbook(load_spec(args.spec, check_paths=False))
    if args.out:
        write_atomically(args.out, text)
    else:
        print(text, end="")
    return 0
