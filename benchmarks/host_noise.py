"""How far the demo's ratio moves with no job at all: the demo's replay, day after day, and nothing else.

``make demo`` compares the client p99 while its job trains with the same hours of a baseline day
replayed just before. This replays the same NASA day ``--days`` times on the same embedded stack
(one Ray Serve replica, the trace's peak at 60 % of the capacity measured at start, client latency
from each request's intended send time) with no job, and prints each later day's p99 against the
first's, whole and in 75-s windows (a demo training phase's length, at 100 s a day). Those ratios are the host's own
drift between two runs of the same load: the resolution of the demo's 1.10x target on this machine.

    python -m benchmarks.host_noise [--days 4] [--seconds-per-day 100]

Writes ``bench-out/host_noise.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WINDOW_FRACTION = 0.75  # of a day: 75 s at the demo's 100-s day, about one of its training phases
WINDOW_OFFSETS = (0.0, 0.25)  # into the day, as fractions of it


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_noise", description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=4, help="trace days replayed, the first the reference (at least 2)")
    p.add_argument("--seconds-per-day", type=float, default=100.0, help="one trace day in this many seconds (the demo's)")
    p.add_argument("--out", default="bench-out/host_noise.json", help="where to write the JSON figures")
    args = p.parse_args(argv)
    if args.days < 2:
        p.error(f"--days must be at least 2 (a reference day and one to compare), got {args.days}")
    return args


def day_ratios(records: list[tuple[float, float]], days: int, day_s: float) -> list[dict]:
    """Each day after the first: its p99 over the first day's, whole and in windows of 3/4 of a day
    at the same offsets into the day. ``records`` are (seconds since the replay's start, latency s).

    >>> recs = [(t * 0.1, 0.01) for t in range(1000)] + [(100 + t * 0.1, 0.02) for t in range(1000)]
    >>> day_ratios(recs, 2, 100.0)[0]["ratio"]
    2.0
    """
    t = np.array([r[0] for r in records])
    lat = np.array([r[1] for r in records])

    def p99(lo: float, hi: float) -> float:
        inside = lat[(t >= lo) & (t < hi)]
        return float(np.percentile(inside, 99)) if inside.size else float("nan")

    first = p99(0.0, day_s)
    out = []
    for d in range(1, days):
        start = d * day_s
        width = WINDOW_FRACTION * day_s
        windows = [p99(start + o * day_s, start + o * day_s + width) / p99(o * day_s, o * day_s + width)
                   for o in WINDOW_OFFSETS]
        out.append({"day": d + 1, "p99_ms": p99(start, start + day_s) * 1000, "ratio": p99(start, start + day_s) / first,
                    "window_ratios": windows})
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from benchmarks.interference import free_port
    from examples.demo import PEAK_FRACTION, TRACE
    from examples.loadgen import LoadProcess, repeat_days, trace_rate_fn
    from examples.serving import measure_capacity_rps, start_serving, stop_serving
    from runtime.loopback import start_private_cluster
    from runtime.windows.history import read_history_csv

    print("[host_noise] starting a local Ray cluster and the demo's serving app ...", flush=True)
    start_private_cluster(num_cpus=4, resources={"training_pool": 1})
    load = LoadProcess()
    try:
        endpoints = start_serving(http_port=free_port())
        capacity = measure_capacity_rps(endpoints.predict_url, clients=4, duration_s=4.0)["rps"]
        day = trace_rate_fn(read_history_csv(TRACE), day_start_local="1995-07-03T03:00",
                            seconds_per_day=args.seconds_per_day, peak_rps=PEAK_FRACTION * capacity)
        total = args.days * args.seconds_per_day
        print(f"[host_noise] capacity {capacity:.0f} req/s; {args.days} days of the trace, {total:.0f} s, no job",
              flush=True)
        t0 = time.time() + 0.5
        load.begin(endpoints.predict_url, repeat_days(day, args.days), total, seed=0, start_at_s=t0)
        for d in range(args.days):
            time.sleep(max(0.0, t0 + (d + 1) * args.seconds_per_day - time.time()))
            print(f"[host_noise] day {d + 1} of {args.days} replayed", flush=True)
        result = load.result(120)
        stop_serving()
    finally:
        load.close()
        ray.shutdown()
    start = result["start_epoch_s"] or t0
    records = [(start + t - t0, lat if ok else 2.0) for t, lat, ok in result["records"]]  # a failure counts as the timeout
    ratios = day_ratios(records, args.days, args.seconds_per_day)
    print("\n  client p99 of each day against day 1, no job anywhere (the demo's ratio with nothing to measure):")
    for r in ratios:
        windows = ", ".join(f"{w:.2f}x" for w in r["window_ratios"])
        print(f"    day {r['day']}: {r['p99_ms']:.1f} ms, {r['ratio']:.2f}x (windows of 3/4 of a day: {windows})")
    spread = [r["ratio"] for r in ratios]
    print(f"  spread {min(spread):.2f}x-{max(spread):.2f}x")
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"capacity_rps": capacity, "args": vars(args), "days": ratios}, indent=1))
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
