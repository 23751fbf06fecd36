"""``headroom run | status | pause | resume``: thin fronts over :mod:`runtime.driver.job` and the governor."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

from runtime.errors import GovernorError


def add_out(p, what: str) -> None:
    """The one name every command uses for its output file (``--summary-out`` and ``--output`` still work)."""
    p.add_argument("-o", "--out", "--summary-out", "--output", dest="out", metavar="FILE", help=f"also write {what} here")


def add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts), not as text")


def register(sub) -> None:
    p = sub.add_parser("run", help="run one governed retraining job to completion",
                       description="Run one governed retraining job to completion: on the cluster at --address or "
                                   "$RAY_ADDRESS, else on a private local cluster (loopback only, token auth) that later "
                                   "headroom status / pause / resume commands of this user find.")
    p.add_argument("spec", help="job spec (YAML; see docs/spec.md)")
    add_out(p, "the summary (JSON)")
    add_json(p)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a private local cluster)")
    p.add_argument("--window", metavar="START/END", type=parse_window,
                   help="the job's planned window, two ISO 8601 times (or epoch seconds) joined by '/': at END the job "
                        "checkpoints, hands its workers back and exits with status window_ended (exit 0); the next run "
                        "resumes from the checkpoint (headroom submit sets this)")
    p.add_argument("--base-dir", metavar="DIR",
                   help="resolve the spec's relative paths (data, holdout, checkpoints, a sqlite MLflow store) against DIR, "
                        "not the working directory: under ray job submit, pass --base-dir $PWD to keep them in your checkout")
    p.add_argument("--outcome-key", help=argparse.SUPPRESS)  # the window scheduler reads the summary from the cluster here
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="queue a job for its next planned window (the governor still guards inside it)")
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("--window", choices=["auto"], required=True, help="auto: the job's next window in --plan")
    p.add_argument("--plan", required=True, help="plan.json written by headroom plan --out")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else the local one)")
    add_json(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("queue", help="jobs queued for their windows: queued, running (as Ray jobs), finished",
                       description="The window scheduler's queue: each job's state, its planned windows and the Ray "
                                   "job of every window it used (see them with ray job list / ray job logs).")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else the local one)")
    add_json(p)
    add_out(p, "the queue (JSON)")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("status", help="jobs under the governor: level, lease, rows/s, last decision")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else this user's headroom run, else the local one)")
    add_json(p)
    p.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    p.set_defaults(func=cmd_status)

    for verb in ("pause", "resume"):
        p = sub.add_parser(verb, help=f"{verb} a running job by hand")
        p.add_argument("job", help="the job's name (see headroom status)")
        p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else this user's headroom run, else the local one)")
        add_json(p)
        p.set_defaults(func=cmd_manual)


class StatusLine:
    """One live line on a terminal; one line every few seconds in a log."""

    def __init__(self, stream=sys.stderr, every_s: float = 3.0):
        self.stream, self.every_s, self._last = stream, every_s, 0.0
        self.tty = stream.isatty()

    def __call__(self, snap: dict) -> None:
        p99 = f"{snap['p99_ms']:.1f}ms" if snap.get("p99_ms") is not None else "n/a"
        queue = f" in_flight={snap['in_flight']:g}" if snap.get("in_flight") is not None else ""
        line = (f"[headroom] {snap['job']}: {snap['level']:<8} ({snap['reason']}) p99={p99}{queue} "
                f"workers={snap['active']} rows={snap['rows_consumed']}/{snap['rows_total']} "
                f"rows/s={snap['rows_per_s_observed']:.0f} pauses={snap['pauses']}")
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
            self.stream.flush()
        elif time.time() - self._last >= self.every_s:
            self._last = time.time()
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def parse_window(text: str) -> tuple[float, float]:
    """``START/END`` (ISO 8601 with a UTC offset, or epoch seconds) -> ``(start_s, end_s)``."""
    from datetime import datetime

    def one(part: str) -> float:
        part = part.strip()
        try:
            return float(part)
        except ValueError:
            pass
        when = datetime.fromisoformat(part)
        if when.tzinfo is None:
            raise ValueError(f"{part!r} has no UTC offset")
        return when.timestamp()

    try:
        start, end = (one(p) for p in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: not START/END ({exc}); e.g. "
                                         "2026-11-28T02:00:00+00:00/2026-11-28T04:00:00+00:00") from None
    if end <= start:
        raise argparse.ArgumentTypeError(f"{text!r}: the window ends before it starts")
    return start, end


def cmd_run(args) -> int:
    from runtime.driver.job import run_job
    from runtime.spec.job import load_spec

    spec = load_spec(args.spec, base_dir=args.base_dir)
    line = StatusLine()
    try:
        summary = run_job(spec, address=args.address, on_status=line, window=args.window)
    finally:
        line.close()
    text = json.dumps(summary, indent=2, default=str)
    if args.out:
        write_atomically(args.out, text)
    if args.outcome_key:
        from runtime.windows.scheduler import put_outcome

        put_outcome(args.outcome_key, summary)
    print(text if args.json else summary_text(summary))
    return 0 if summary["status"] in ("completed", "window_ended") else 1


def summary_text(s: dict) -> str:
    """The summary as a person reads it (``--json`` gives all of it)."""
    v, c, r = s.get("validation") or {}, s.get("compute") or {}, s.get("reaction") or {}
    lines = [f"{s['job']}: {s['status']} in {s.get('duration_s', 0):.0f} s -- MLflow run {s.get('mlflow_run_id')}",
             f"  rows {s.get('rows_consumed')} of {s.get('rows_total')}, duplicated {s.get('rows_duplicated')}; "
             f"pauses {s.get('pauses')}, resumes {s.get('resumes')}"
             + (f"; reaction median {r['median_s']:.2f} s" if r.get("count") else "")]
    if "candidate" in v:
        champion = "no champion" if v.get("champion") is None else f"champion {v['champion']:.4f}"
        lines.append(f"  holdout {v.get('metric')}: candidate {v['candidate']:.4f} vs {champion}; registered "
                     f"v{s.get('registered_version')} alias {s.get('registered_alias') or 'none'}")
    elif v.get("skipped"):
        lines.append(f"  validation skipped: {v['skipped']}")
    if c:
        lines.append(f"  compute {c.get('cpu_s', 0):.1f} CPU-s (driver {c.get('driver_cpu_s', 0):.1f}, "
                     f"office {c.get('office_cpu_s', 0):.1f}, workers {c.get('worker_cpu_s', 0):.1f})")
    if s.get("error"):
        lines.append(f"  error: {s['error']}")
    return "\n".join(lines)


def write_atomically(path: str | Path, text: str) -> Path:
    """Write a result file the way checkpoints are written: never half a file (runtime.training.checkpoint)."""
    from runtime.errors import HeadroomError
    from runtime.training.checkpoint import atomic_write_text

    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        raise HeadroomError(f"cannot write {path} ({exc.strerror or exc})", where=str(path),
                            fix="pass --out a writable file path") from None


def cmd_submit(args) -> int:
    from datetime import datetime, timezone

    from runtime.windows.scheduler import submit
    from runtime.spec.job import load_spec

    spec = load_spec(args.spec)
    _connect(args.address)
    entry = submit(spec, args.plan)
    if args.json:
        print(json.dumps(entry, indent=2, default=str))
        return 0
    start, end = (datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") for t in entry["next_window"])
    more = len(entry["windows"]) - 1
    print(f"{spec.name}: queued for its window {start} .. {end} (UTC)" + (f" and {more} later one(s)" if more else "")
          + "; it runs as a Ray job there (ray job list), the governor guards inside it; see headroom queue")
    return 0


def cmd_queue(args) -> int:
    from runtime.windows.scheduler import queue_status

    _connect(args.address)
    entries = queue_status()
    text = json.dumps(entries, indent=2, default=str)
    if args.out:
        write_atomically(args.out, text)
    print(text if args.json else queue_text(entries, time.time()))
    return 0


def queue_text(entries: list[dict], now: float) -> str:
    """The queue as a person reads it: one line per job, one indented line per window it used."""
    from runtime.windows.scheduler import iso

    if not entries:
        return "the queue is empty (headroom submit SPEC --window auto --plan plan.json)"
    lines = []
    for e in entries:
        nxt = e.get("next_window")
        when = f"next window {iso(nxt[0])} .. {iso(nxt[1])}" if nxt and e["state"] == "queued" else ""
        lines.append(f"{e['job']}: {e['state']} {when}".rstrip() + (f" -- {e['error']}" if e.get("error") else ""))
        for r in e["runs"]:
            rows = "" if r.get("rows_consumed") is None else f", rows {r['rows_consumed']}"
            lines.append(f"  {iso(r['window'][0])} .. {iso(r['window'][1])}: Ray job {r['submission_id']} "
                         f"{r['ray_status']}{' (' + r['status'] + ')' if r.get('status') else ''}{rows}")
    return "\n".join(lines)


def _connect(address):
    import os

    from runtime.driver.job import connect
    from runtime.loopback import join_private_cluster

    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = join_private_cluster() or "auto"  # this user's headroom run, with its token; else the local one
    try:
        connect(address)
    except ConnectionError as exc:
        raise GovernorError(f"no Ray cluster to connect to ({exc})", where=str(address),
                            fix="start one (ray start --head) or pass --address") from None


def _governor(address):
    import ray

    from runtime.control.governor import find_governor

    _connect(address)
    gov = find_governor()
    if gov is None:
        raise GovernorError("no governor is running on this cluster", where=str(address),
                            fix="start a job first (headroom run SPEC.yaml)")
    return ray, gov


def cmd_status(args) -> int:
    """One table of the jobs under the governor; with ``--watch``, refreshed every second until Ctrl-C
    (``rich.live`` when rich is installed, else a plain reprint). ``--json``: the raw status (under
    ``--watch``, one compact JSON object per line)."""
    ray, gov = _governor(args.address)
    if getattr(args, "watch", False):
        return _watch_status(lambda: ray.get(gov.status.remote(), timeout=10), as_json=args.json)
    status = ray.get(gov.status.remote())
    print(json.dumps(status, indent=2, default=str) if args.json else _status_table(status))
    return 0


# (heading, alignment, width) of the status table; workers = computing / slots leased;
# share = workers the governor grants the job / slots in the training pool
STATUS_COLUMNS = (("job", "<", 24), ("prio", ">", 4), ("level", "<", 9), ("workers", ">", 7), ("share", ">", 5),
                  ("rows/s", ">", 8), ("p99 ms", ">", 8), ("slack", ">", 6), ("pauses", ">", 7), ("last reason", "<", 0))


def _status_rows(status: dict) -> list[tuple[str, ...]]:
    """Each job as display strings. The last reason is the last directive's, plus "(manual)" when
    paused by hand and the telemetry error behind it, if any."""
    rows = []
    for j in status.get("jobs", []):
        p99, slack = j.get("p99_ms"), j.get("slack")
        reason = str(j.get("reason", "-")) + (" (manual)" if j.get("manual") else "")
        if j.get("error"):
            reason += f": {j['error']}"
        pool = j.get("pool_slots")
        rows.append((str(j["job"]), str(j.get("priority", 0)), str(j.get("level", "-")), f"{j.get('active', 0)}/{j.get('lease', 0)}",
                     f"{j.get('workers', 0)}/{'?' if pool is None else pool}",
                     f"{j.get('rows_per_s') or 0:.0f}", "-" if p99 is None else f"{p99:.1f}",
                     "-" if slack is None else f"{slack:+.2f}", str(j.get("pauses", 0)), reason[:100]))
    return rows


def _status_header(status: dict) -> str:
    return (f"governor: poll {status['poll_interval_s']}s, ticks {status['ticks']}, "
            f"errors {status['tick_errors']}, last tick {status['last_tick_ms']:.1f} ms")


def _status_table(status: dict) -> str:
    def line(cells) -> str:
        return " ".join(f"{c:{align}{width}}" for c, (_, align, width) in zip(cells, STATUS_COLUMNS)).rstrip()

    rows = [line(row) for row in _status_rows(status)] or ["(no jobs under the governor)"]
    return "\n".join([_status_header(status), line(name for name, _, _ in STATUS_COLUMNS), *rows])


def _watch_status(fetch, *, as_json: bool = False, interval_s: float = 1.0, stream=None) -> int:
    """``headroom status --watch``: refresh every ``interval_s`` until Ctrl-C. A failed fetch (the
    governor restarting, a busy cluster) is shown and retried, not fatal."""
    stream = stream or sys.stdout

    def snapshot() -> tuple[dict | None, str | None]:
        try:
            return fetch(), None
        except Exception as exc:  # keep watching: the governor actor restarts itself
            return None, f"governor unreachable ({type(exc).__name__}: {exc}); retrying"

    with _interruptible():
        return _watch_loop(snapshot, as_json, interval_s, stream)


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C ends a watch even when the shell that started it ignores SIGINT (a background job in a
    script inherits SIG_IGN, and Python then never raises KeyboardInterrupt); restored afterwards."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _watch_loop(snapshot, as_json: bool, interval_s: float, stream) -> int:
    try:
        if as_json:  # one compact object per refresh: pipeable into jq
            while True:
                status, error = snapshot()
                print(json.dumps(status if error is None else {"error": error}, default=str), file=stream, flush=True)
                time.sleep(interval_s)
        tty = stream.isatty()
        if tty:  # rich.live redraws in place on a terminal; a pipe or log gets the plain tables
            from rich.console import Console
            from rich.live import Live

            with Live(_rich_status(*snapshot()), console=Console(file=stream), refresh_per_second=4) as live:
                while True:
                    time.sleep(interval_s)
                    live.update(_rich_status(*snapshot()))
        while True:  # a pipe or a log: one table per refresh
            status, error = snapshot()
            stream.write(f"[{time.strftime('%H:%M:%S')}] " + (error or _status_table(status)) + "\n\n")
            stream.flush()
            time.sleep(interval_s)
    except KeyboardInterrupt:
        stream.write("\n")
        stream.flush()
        return 0


def _rich_status(status: dict | None, error: str | None):
    """The status as a rich renderable for ``--watch``: the same columns, levels in colour."""
    from rich.table import Table
    from rich.text import Text

    stamp = time.strftime("%H:%M:%S")
    if error:
        return Text(f"[{stamp}] {error}", style="bold red")
    table = Table(title=f"[{stamp}] {_status_header(status)}", title_justify="left")
    for name, align, _ in STATUS_COLUMNS:
        table.add_column(name, justify="right" if align == ">" else "left", no_wrap=name != "last reason")
    colour = {"RUN": "green", "THROTTLE": "yellow", "PAUSE": "red"}
    for row in _status_rows(status):
        table.add_row(row[0], row[1], Text(row[2], style=colour.get(row[2], "")), *row[3:])
    return table


def cmd_manual(args) -> int:
    """``headroom pause JOB`` / ``headroom resume JOB``."""
    ray, gov = _governor(args.address)
    paused = args.command == "pause"
    if not ray.get(gov.set_manual_pause.remote(args.job, paused)):
        raise GovernorError(f"no job named {args.job!r} under the governor", where=f"headroom {args.command}",
                            fix="see headroom status")
    if args.json:
        print(json.dumps({"job": args.job, "manual_pause": paused}))
    else:
        print(f"{args.job}: paused (manual)" if paused else f"{args.job}: manual pause lifted; the control law decides again")
    return 0
