"""``headroom run | status | pause | resume``: thin fronts over :mod:`runtime.job` and the governor."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import GovernorError


def register(sub) -> None:
    p = sub.add_parser("run", help="run one governed retraining job to completion")
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("--summary-out", help="also write the summary JSON here")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a private local cluster)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="jobs under the governor: level, lease, rows/s, last decision")
    p.add_argument("--address")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.set_defaults(func=cmd_status)

    for verb in ("pause", "resume"):
        p = sub.add_parser(verb, help=f"{verb} a running job by hand")
        p.add_argument("job")
        p.add_argument("--address")
        p.set_defaults(func=cmd_pause if verb == "pause" else cmd_resume)


class StatusLine:
    """One live line on a terminal; one line every few seconds in a log."""

    def __init__(self, stream=sys.stderr, every_s: float = 3.0):
        self.stream, self.every_s, self._last = stream, every_s, 0.0
        self.tty = stream.isatty()

    def __call__(self, snap: dict) -> None:
        p99 = f"{snap['p99_ms']:.1f}ms" if snap.get("p99_ms") is not None else "n/a"
        line = (f"[headroom] {snap['job']}: {snap['level']:<8} ({snap['reason']}) p99={p99} "
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


def cmd_run(args) -> int:
    from .job import run_job
    from .spec import load_spec

    spec = load_spec(args.spec)
    line = StatusLine()
    try:
        summary = run_job(spec, address=args.address, on_status=line)
    finally:
        line.close()
    text = json.dumps(summary, indent=2)
    if args.summary_out:
        Path(args.summary_out).write_text(text)
    print(text)
    return 0 if summary["status"] == "completed" else 1


def _governor(address):
    import ray

    from .governor import find_governor
    from .job import connect

    if address is None and not __import__("os").environ.get("RAY_ADDRESS"):
        address = "auto"
    try:
        connect(address)
    except ConnectionError as exc:
        raise GovernorError(f"no Ray cluster to connect to ({exc})", where=str(address),
                            fix="start one (ray start --head) or pass --address") from None
    gov = find_governor()
    if gov is None:
        raise GovernorError("no governor is running on this cluster", where=str(address),
                            fix="start a job first (headroom run SPEC.yaml)")
    return ray, gov


def cmd_status(args) -> int:
    ray, gov = _governor(args.address)
    status = ray.get(gov.status.remote())
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(f"governor: poll {status['poll_interval_s']}s, ticks {status['ticks']}, "
          f"errors {status['tick_errors']}, last tick {status['last_tick_ms']:.1f} ms")
    print(f"{'job':<24}{'level':<10}{'reason':<20}{'lease':>6}{'rows/s':>10}{'p99 ms':>9}{'pauses':>8}")
    for j in status["jobs"]:
        p99 = f"{j['p99_ms']:.1f}" if j["p99_ms"] is not None else "-"
        print(f"{j['job']:<24}{j['level']:<10}{j['reason']:<20}{j['lease']:>6}{j['rows_per_s']:>10.0f}{p99:>9}{j['pauses']:>8}")
    return 0


def cmd_pause(args) -> int:
    ray, gov = _governor(args.address)
    if not ray.get(gov.pause.remote(args.job)):
        raise GovernorError(f"no job named {args.job!r} under the governor", where="headroom pause", fix="see headroom status")
    print(f"{args.job}: paused (manual)")
    return 0


def cmd_resume(args) -> int:
    ray, gov = _governor(args.address)
    if not ray.get(gov.resume.remote(args.job)):
        raise GovernorError(f"no job named {args.job!r} under the governor", where="headroom resume", fix="see headroom status")
    print(f"{args.job}: manual pause lifted; the control law decides again")
    return 0
