"""headroom plan: read traffic history and a jobs file, place the windows, write JSON / iCalendar / PNG.

    headroom plan --history data/nasa-http-1995-07.csv --jobs examples/portfolio.yaml \\
        --start 1995-07-22T00:00:00-04:00 --horizon-days 7 --out plan.json --ics plan.ics --plot plan.png

Exit status: 0 when every run got a window, 1 when some could not be placed (the plan is still
written, the table says why), 2 on bad input (one line naming the file, line or field, and the fix).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from runtime.cli.jobs import add_json, add_out
from runtime.errors import SpecError
from runtime.windows.history import History, read_history_csv, read_history_prometheus
from runtime.windows.plan_report import local_datetime, plan_records, plot_plan, render_table, write_ics, write_plan_json
from runtime.windows.plan import PlanResult, PlanSpec, load_plan_spec, make_plan
from runtime.windows.profile import zone
from runtime.windows.placement import Plan, Reason

DAY_S = 86_400.0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="plan retraining windows in the traffic's quiet hours",
                              description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", metavar="FILE", help="CSV with 'timestamp,requests' rows (ISO-8601 with offset)")
    source.add_argument("--prometheus-url", metavar="URL", help="Prometheus server to read history from instead")
    p.add_argument("--query", default="sum(rate(http_requests_total[5m]))",
                   help="PromQL returning requests per second (with --prometheus-url)")
    p.add_argument("--history-days", type=float, default=28.0, help="days of Prometheus history before --start")
    p.add_argument("--step-s", type=float, default=60.0, help="Prometheus query step in seconds")
    p.add_argument("--timeout-s", type=float, default=10.0, help="Prometheus request timeout in seconds")
    p.add_argument("--jobs", required=True, metavar="JOBS.yaml", help="jobs, pool, threshold, blackouts, prices")
    p.add_argument("--start", required=True, metavar="ISO", help="horizon start, e.g. 1995-07-22T00:00:00-04:00")
    p.add_argument("--horizon-days", type=float, default=7.0, help="horizon length in days (default 7)")
    add_out(p, "the windows as a JSON list (plan.json, for headroom submit)")
    add_json(p)
    p.add_argument("--tz", metavar="ZONE", help="IANA time zone of the profile (overrides the jobs file)")
    p.add_argument("--ics", metavar="FILE", help="also write an iCalendar file of the windows")
    p.add_argument("--plot", metavar="FILE", help="also write a PNG of the profile with the windows shaded")
    p.set_defaults(func=run_plan)


def parse_start(text: str, tz_name: str) -> float:
    """``--start``: ISO-8601; without an offset it is read on the plan's local clock."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SpecError(f"bad timestamp {text!r}", where="--start",
                        fix="use ISO-8601, e.g. 1995-07-22T00:00:00-04:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone(tz_name))
    return moment.timestamp()


def load_history(args: argparse.Namespace, start_epoch_s: float) -> History:
    if args.history:
        return read_history_csv(args.history)
    if args.history_days <= 0:
        raise SpecError(f"--history-days must be > 0, got {args.history_days}", where="--history-days",
                        fix="use at least 7 (one week), better 21-28")
    return read_history_prometheus(args.prometheus_url, args.query, start_epoch_s - args.history_days * DAY_S,
                                   start_epoch_s, step_s=args.step_s, timeout_s=args.timeout_s)


def print_table(plan: Plan) -> None:
    """The plan as a rich table (pipes and logs get whole rows), with the plain table's summary lines."""
    from rich.console import Console
    from rich.table import Table

    plain = render_table(plan).splitlines()
    rows = len(plan.windows)
    table = Table(title=f"Headroom plan ({plan.tz_name})")
    fmt = "%a %Y-%m-%d %H:%M"
    for column in ("job", "run", "start", "end", "workers", "load rps", "peak rps", "price", "cost"):
        table.add_column(column, justify="right" if column not in ("job", "start", "end") else "left", no_wrap=True)
    for w in plan.windows:
        table.add_row(w.job, str(w.run), local_datetime(w.start_epoch_s, plan.tz_name).strftime(fmt),
                      local_datetime(w.end_epoch_s, plan.tz_name).strftime(fmt), str(w.workers), f"{w.mean_load_rps:.3f}",
                      f"{w.peak_load_rps:.3f}", "-" if w.mean_price is None else f"{w.mean_price:.3f}", f"{w.cost:.3f}")
    console = Console(width=None if sys.stdout.isatty() else 160)  # pipes and logs get whole rows
    console.print(table)
    for line in plain[2 + rows:]:  # summary, unplaced runs, notes: same text as the plain table
        console.print(line, markup=False, highlight=False)


def run_plan(args: argparse.Namespace) -> int:
    spec: PlanSpec = load_plan_spec(args.jobs, tz_override=args.tz)
    start_epoch_s = parse_start(args.start, spec.tz_name)
    if not args.horizon_days > 0:
        raise SpecError(f"--horizon-days must be > 0, got {args.horizon_days}", where="--horizon-days", fix="use e.g. 7")
    history = load_history(args, start_epoch_s)
    result: PlanResult = make_plan(history, spec, start_epoch_s, args.horizon_days)
    plan = result.plan
    if result.profile.weeks_seen < 2:
        print(f"note: the profile rests on {result.profile.weeks_seen} week(s) of history; 3 or more are better",
              file=sys.stderr)
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print  # --json: stdout is the JSON alone
    if args.json:
        print(json.dumps({"windows": plan_records(plan), "unplaced": [
            {"job": u.job, "run": u.run, "reason": u.reason.value, "detail": u.detail} for u in plan.unplaced]},
            indent=2, default=str))
    else:
        print_table(plan)
    if args.out:
        say(f"wrote {write_plan_json(plan, args.out)}")
    if args.ics:
        say(f"wrote {write_ics(plan, args.ics)}")
    if args.plot:
        say(f"wrote {plot_plan(plan, result.forecast, args.plot, max_load_rps=spec.constraints.max_load_rps, blackouts=spec.constraints.blackouts)}")
    missing = [u for u in plan.unplaced if u.reason is not Reason.BEYOND_HORIZON]
    if missing:
        print(f"headroom plan: {len(missing)} run(s) could not be placed; see UNPLACED above", file=sys.stderr)
        return 1
    return 0
