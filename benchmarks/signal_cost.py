"""What reading the serving side costs it: the governor's signals, measured by what users feel.

One Ray Serve replica (``examples/serving.py``) under a steady open-loop load at ``--fraction`` of its
measured capacity (client latency from each request's intended send time, in a process of its own).
Phases of ``--phase-s`` seconds, interleaved and repeated:

- ``none``: nobody reads anything;
- ``ingress``: the ``ray_serve`` source (every node's metrics endpoint, read at most once a second),
  polled every 0.25 s as the governor polls it;
- ``ingress_calm``: the same source read at the governor's calm pace (``serving.calm_read_s``, every
  3 s), as it reads while nothing moves and the slack is wide;
- ``probe``: an active probe through the proxy every ``--probe-interval-s``;
- ``both``: the two together (``serving.probe`` on top of ``ray_serve``).

Prints the client p99 of each phase and the ratio of its median to ``none``'s, and the CPU each phase
cost Ray's metrics agent (the process that renders the node's whole metrics endpoint at each read);
writes JSON to ``--out``.

    python -m benchmarks.signal_cost [--fraction 0.7] [--phase-s 15] [--reps 2] [--phases none ingress ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("none", "ingress", "ingress_calm", "probe", "both")
CALM_READ_S = 3.0  # the governor's default calm pace (runtime.spec.job: serving.calm_read_s)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.signal_cost", description=__doc__.splitlines()[0])
    p.add_argument("--fraction", type=float, default=0.7, help="load as a fraction of the measured capacity")
    p.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase")
    p.add_argument("--reps", type=int, default=2, help="repetitions of the interleaved phases")
    p.add_argument("--probe-interval-s", type=float, default=0.2, help="one probe request this often")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES), help="which phases, in this order")
    p.add_argument("--out", default="bench-out/signal_cost.json", help="where to write the JSON figures")
    return p.parse_args(argv)


def reader(phase: str, app: str, predict_url: str, probe_interval_s: float):
    """The source the phase polls (``None`` for nobody)."""
    from runtime.control.telemetry import Prober, build_source

    if phase == "none":
        return None
    probe = {"url": predict_url, "interval_s": probe_interval_s, "window_s": 1.0}
    if phase == "ingress":
        return build_source("ray_serve", application=app, window_s=2.0)
    if phase == "ingress_calm":
        source = build_source("ray_serve", application=app, window_s=2.0)
        source.set_pace(CALM_READ_S)
        return source
    if phase == "both":
        return build_source("ray_serve", application=app, window_s=2.0, probe=probe)

    class ProbeOnly:
        def __init__(self):
            self.prober = Prober(predict_url, interval_s=probe_interval_s)

        def sample(self):
            self.prober.window(time.time(), 1.0)

        def close(self):
            self.prober.close()

    return ProbeOnly()


def metrics_agent():
    """The process that serves this node's metrics endpoint (Ray's dashboard agent), or None."""
    import psutil

    from runtime.control.telemetry import RayNodeTargets

    urls = RayNodeTargets()()
    port = int(urls[0].rsplit(":", 1)[1].split("/")[0]) if urls else None
    for proc in psutil.process_iter():
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections("tcp")):
                return proc
        except psutil.Error:
            continue
    return None


def _cpu_s(proc) -> float:
    import psutil

    try:
        return sum(proc.cpu_times()[:2]) if proc is not None else float("nan")
    except psutil.Error:
        return float("nan")


def poll(source, until: float) -> None:
    while time.time() < until:
        started = time.time()
        source.sample()
        time.sleep(max(0.0, 0.25 - (time.time() - started)))


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from examples.loadgen import LoadProcess, TraceRate
    from examples.serving import APP_NAME, measure_capacity_rps, start_serving, stop_serving
    from runtime.loopback import start_private_cluster

    order = [p for _ in range(args.reps) for p in args.phases]
    start_private_cluster(num_cpus=4, resources={"training_pool": 1})
    load = LoadProcess()
    try:
        from benchmarks.interference import free_port

        endpoints = start_serving(http_port=free_port())
        time.sleep(2.0)
        capacity = measure_capacity_rps(endpoints.predict_url, clients=4, duration_s=5.0)["rps"]
        rate = args.fraction * capacity
        total = args.phase_s * len(order)
        print(f"[signal_cost] capacity {capacity:.0f} req/s; load {rate:.0f} req/s for {len(order)} phases of "
              f"{args.phase_s:g} s", flush=True)
        t0 = time.time() + 1.0
        load.begin(endpoints.predict_url, TraceRate(np.array([0.0, total]), np.array([rate, rate]), total, rate),
                   total, seed=1, start_at_s=t0)
        agent = metrics_agent()
        agent_cpu_s = []
        for i, phase in enumerate(order):
            start, end = t0 + i * args.phase_s, t0 + (i + 1) * args.phase_s
            time.sleep(max(0.0, start - time.time()))
            agent_before = _cpu_s(agent)
            source = reader(phase, APP_NAME, endpoints.predict_url, args.probe_interval_s)
            if source is not None:
                thread = threading.Thread(target=poll, args=(source, end), daemon=True)
                thread.start()
                thread.join()
                getattr(source, "close", lambda: None)()
            time.sleep(max(0.0, end - time.time()))
            agent_cpu_s.append(_cpu_s(agent) - agent_before)
        result = load.result(120)
        stop_serving()
    finally:
        load.close()
        ray.shutdown()
    records = [(t, lat * 1e3) for t, lat, ok in result["records"] if ok]
    phases = []
    for i, phase in enumerate(order):
        lat = [ms for t, ms in records if i * args.phase_s + 1.0 <= t < (i + 1) * args.phase_s]  # 1 s to settle
        phases.append({"phase": phase, "requests": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                       "p99_ms": float(np.percentile(lat, 99)), "agent_cpu_per_s": agent_cpu_s[i] / args.phase_s})
        print(f"[signal_cost] {phase:<12} p50 {phases[-1]['p50_ms']:6.1f} ms  p99 {phases[-1]['p99_ms']:6.1f} ms  "
              f"metrics agent {phases[-1]['agent_cpu_per_s'] * 1000:5.1f} ms CPU/s", flush=True)
    names = list(dict.fromkeys(args.phases))
    med = {p: statistics.median(x["p99_ms"] for x in phases if x["phase"] == p) for p in names}
    agent_med = {p: statistics.median(x["agent_cpu_per_s"] for x in phases if x["phase"] == p) for p in names}
    first = names[0]
    print(f"\n  client p99 (median over repetitions; ratios to {first}): " + ", ".join(
        f"{p} {med[p]:.0f} ms ({med[p] / med[first]:.2f}x)" for p in names))
    print("  the metrics agent's CPU (median): " + ", ".join(f"{p} {agent_med[p] * 1000:.0f} ms/s" for p in names))
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"capacity_rps": capacity, "load_rps": rate, "args": vars(args), "phases": phases,
                               "median_p99_ms": med,
                               "median_agent_cpu_per_s": agent_med}, indent=1))
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
