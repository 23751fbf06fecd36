"""What a running governed job costs serving at a low, fixed rate: is its impact its compute, or a
standing cost of running at all?

The interference benchmark's impact guard judged the governed job at 1.13-1.44x serving's p90 at
every rate from 17,000 down to 3,400 rows/s (6 % of one core), and kept it out for the rest of the
replay. Either running costs serving something whatever the rate (the worker's threads, Ray's
traffic, the driver's loop), or the guard's with/without comparison reads the replay's moving load
as the job's. This benchmark tells the two apart at a steady load, where the load cannot move:

One Ray Serve replica (``examples/serving.py``) under a steady open-loop load at ``--fraction`` of
its measured capacity; the governed job of ``jobs/demo.yaml`` (no impact guard, an SLO it cannot
reach: only an operator's hand moves it) at ``--rows-per-s``; phases of ``--phase-s`` seconds,
``paused`` and ``running`` interleaved (``headroom pause`` / ``resume`` through the governor), the
first ``--settle-s`` of each left out. Prints each phase's client p50/p90/p99 (from each request's
intended send time), the ratio of running to paused per pair of phases and its median, and the
host's CPU (all processes) per phase; writes JSON to ``--out``.

    python -m benchmarks.standing_cost [--fraction 0.3] [--rows-per-s 3400] [--phase-s 10] [--reps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = ROOT / ".headroom" / "bench-standing"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.standing_cost", description=__doc__.splitlines()[0])
    p.add_argument("--fraction", type=float, default=0.3, help="load as a fraction of the measured capacity")
    p.add_argument("--rows-per-s", type=float, default=3400.0, help="the governed job's rate while running")
    p.add_argument("--phase-s", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--settle-s", type=float, default=2.0, help="the first seconds of a phase left out")
    p.add_argument("--reps", type=int, default=5, help="pairs of phases (paused, running)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="scratch folder: data, checkpoints, MLflow store")
    p.add_argument("--out", default="bench-out/standing_cost.json", help="where to write the JSON figures")
    return p.parse_args(argv)


def cpu_busy_s() -> float:
    """CPU-seconds the whole host has been busy (every process)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def job_spec(work: Path, data_dir: Path, holdout: Path, rows_per_s: float, app: str):
    """The interference benchmark's governed job, with no impact guard and an SLO it cannot reach:
    only an operator's hand (the governor's manual pause) moves it."""
    from benchmarks.interference import governed_spec

    spec = governed_spec({"data_dir": data_dir, "holdout": holdout, "app": app, "slo_ms": 60_000.0, "capacity_rps": None,
                          "max_utilization": 0.85, "probe_interval_s": 0, "impact_max_ratio": 0,
                          "max_rows_per_s": rows_per_s, "checkpoint_every_steps": None,
                          "mlflow_uri": f"sqlite:///{work / 'mlflow.db'}"}, work / "checkpoints")
    return spec.model_copy(update={"name": "bench-standing"})


def phase_latencies(phases: list[dict], records: list[tuple[float, float]], phase_s: float, settle_s: float) -> None:
    """Each phase's client p50/p90/p99 (ms) and request count, from ``(intended send time, ms)``
    records: the requests sent in ``[begin + settle_s, begin + phase_s)``. Adds them to each phase."""
    for ph in phases:
        lat = [ms for t, ms in records if ph["begin_s"] + settle_s <= t < ph["begin_s"] + phase_s]
        if not lat:
            raise RuntimeError(f"no request succeeded in the {ph['phase']} phase at {ph['begin_s']:.0f} s: the load "
                               "generator or the service failed; see the Serve logs above")
        ph.update(requests=len(lat), **{f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 90, 99)})


def pair_ratios(phases: list[dict]) -> tuple[dict[str, list[float]], float]:
    """Per (paused, running) pair: running over paused for p50, p90 and p99; and the median CPU the
    running phases used over their paused partners (cores)."""
    pairs = list(zip(phases[0::2], phases[1::2]))
    assert all(p["phase"] == "paused" and r["phase"] == "running" for p, r in pairs), "phases alternate, paused first"
    ratios = {q: [run[f"{q}_ms"] / paused[f"{q}_ms"] for paused, run in pairs] for q in ("p50", "p90", "p99")}
    return ratios, statistics.median(run["cpu_per_s"] - paused["cpu_per_s"] for paused, run in pairs)


class _Done(Exception):
    """Raised from run_job's status callback when the phases are over."""


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from benchmarks.interference import free_port
    from examples.loadgen import LoadProcess, TraceRate
    from examples.serving import APP_NAME, measure_capacity_rps, start_serving, stop_serving
    from runtime.control.governor import get_or_create_governor
    from runtime.driver.job import run_job
    from runtime.loopback import start_private_cluster
    from runtime.training.datagen import write_regression_slices

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    total_s = 2 * args.reps * args.phase_s
    rows = int(args.rows_per_s * (total_s + 60) * 1.2)
    slices = max(1, -(-rows // 50_000))
    data_dir, holdout = write_regression_slices(work / "data", slices=slices, rows_per_slice=50_000, features=8, seed=7)
    start_private_cluster(num_cpus=4, resources={"training_pool": 1})
    load = LoadProcess()
    state = {"done": False, "rows": 0, "active": 0}
    try:
        endpoints = start_serving(http_port=free_port())
        time.sleep(2.0)
        capacity = measure_capacity_rps(endpoints.predict_url, clients=4, duration_s=5.0)["rps"]
        rate = args.fraction * capacity
        spec = job_spec(work, data_dir, holdout, args.rows_per_s, APP_NAME)
        gov = get_or_create_governor(spec.budget.poll_interval_s)

        def on_status(snap: dict) -> None:
            state.update(rows=snap["rows_consumed"], active=snap["active"])
            if state["done"]:
                raise _Done

        def drive() -> None:  # run_job lowers its calling thread's priority for good: a thread of its own
            try:
                run_job(spec, on_status=on_status, artifacts_dir=str(work / "artifacts"))
            except _Done:
                pass

        driver = threading.Thread(target=drive, name="job-driver", daemon=True)
        warm_s = 60.0  # start-up, the checklist, a cold worker: under load from the start, not measured
        t0 = time.time() + 1.0
        load.begin(endpoints.predict_url, TraceRate(np.array([0.0, warm_s + total_s + 5]), np.array([rate, rate]),
                                                    warm_s + total_s + 5, rate), warm_s + total_s + 5, seed=1, start_at_s=t0)
        driver.start()
        deadline = t0 + warm_s
        while not (state["rows"] > 0 and state["active"] > 0):
            if time.time() > deadline or not driver.is_alive():
                raise RuntimeError("the governed job did not start training within its warm-up")
            time.sleep(0.2)
        print(f"[standing_cost] capacity {capacity:.0f} req/s; load {rate:.0f} req/s; the job trains at "
              f"<= {args.rows_per_s:.0f} rows/s; {args.reps} x (paused, running) of {args.phase_s:g} s", flush=True)
        start = t0 + warm_s
        time.sleep(max(0.0, start - time.time()))
        phases = []
        for i in range(2 * args.reps):
            name = "paused" if i % 2 == 0 else "running"
            begin = start + i * args.phase_s
            ray.get(gov.set_manual_pause.remote(spec.name, name == "paused"), timeout=30)
            cpu0, rows0 = cpu_busy_s(), state["rows"]
            time.sleep(max(0.0, begin + args.phase_s - time.time()))
            phases.append({"phase": name, "begin_s": begin - t0, "cpu_per_s": (cpu_busy_s() - cpu0) / args.phase_s,
                           "rows": state["rows"] - rows0})
        state["done"] = True
        ray.get(gov.set_manual_pause.remote(spec.name, False), timeout=30)
        result = load.result(120)
        driver.join(120)
        if driver.is_alive():
            print("[standing_cost] the job's driver did not end within 120 s; the figures below are from before it", flush=True)
    finally:
        load.close()
        with contextlib.suppress(Exception):  # a failed start's own error is the one to see
            stop_serving()
        ray.shutdown()
    phase_latencies(phases, [(t, lat * 1e3) for t, lat, ok in result["records"] if ok], args.phase_s, args.settle_s)
    for ph in phases:
        print(f"[standing_cost] {ph['phase']:<8} p50 {ph['p50_ms']:6.1f}  p90 {ph['p90_ms']:6.1f}  p99 {ph['p99_ms']:6.1f} ms"
              f"  ({ph['requests']} requests)  host CPU {ph['cpu_per_s']:.2f} cores  rows {ph['rows']}", flush=True)
    ratios, cpu = pair_ratios(phases)
    print("\n  running / paused, per pair (median): " + "; ".join(
        f"{q} {', '.join(f'{r:.2f}' for r in rs)} ({statistics.median(rs):.2f}x)" for q, rs in ratios.items()))
    print(f"  the running job's CPU (host, running minus paused, median): {cpu:.2f} cores")
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"capacity_rps": capacity, "load_rps": rate, "args": vars(args), "phases": phases,
                               "ratios": ratios, "job_cpu_cores": cpu}, indent=1))
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
