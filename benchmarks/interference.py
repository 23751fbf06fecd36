"""Interference benchmark: what each way of running retraining beside a live service costs the service.

One serving app (``examples/serving.py`` on a private loopback Ray cluster) under an open-loop replay
of one day of the NASA July 1995 trace (``examples/loadgen.py``: latency from the intended send time),
compressed into ``--seconds-per-policy`` and scaled so its peak is ``--peak-fraction`` of the capacity
measured at start. The same retraining (``benchmarks/train_loop.py``: the governed job's model, data
and batch size, one thread) runs under each policy in turn:

- ``none``       no training (the serving baseline);
- ``unmanaged``  training at full speed;
- ``nice``       training at full speed under ``nice -n 19``;
- ``idle``       training at full speed in Linux's ``SCHED_IDLE`` class (what the governed job's workers
                 and driver use by default: this row shows what the scheduling class alone buys);
- ``static``     a fixed CPU share, like a Kubernetes CPU limit (cgroup CPU quota, else ``taskset`` one core);
- ``cron``       training only inside a fixed off-peak window of the replayed day (default 01:00-05:00);
- ``offpeak``    the bound for any governor that pauses at the peak: ``idle``'s loop, held (``SIGSTOP``)
                 exactly in the peak hours, known ahead from the trace, at no cost (no reaction time, no
                 checkpoint, no measuring); its rows are the most a job paused through the peak can train;
- ``governed``   ``run_job`` under this project's governor, guarding what users feel: Ray Serve's own
                 ingress histogram and queue (every node's metrics endpoint, refreshed every ~1 s), its
                 workers and driver in ``SCHED_IDLE``, ``--max-utilization`` its load ceiling (Heracles'
                 knob); ``--probe-interval-s`` adds an active probe through the proxy (off by default:
                 measured here, a probe every 0.2 s doubles serving's p99 at 70 % load on 2 cores).

Repetitions are interleaved (A B C ... A B C) because host speed drifts within minutes; the report
gives medians and the spread. Writes ``results.json``, ``results.md`` and ``timeline-<policy>-rep<k>.png``.

    python -m benchmarks.interference [--quick] [--reps N] [--seconds-per-policy S] [--out bench-out/interference]

Targets (reported, never asserted): governed peak-hour p99 within 1.10x of none and 0 SLO-violation
seconds; more training rows than cron and static and >= 80 % of nice's; reaction (PAUSE decided ->
workers released) median <= 0.3 s, p95 <= 0.6 s, printed also from the reading that showed the loss
(the telemetry's read before the decision). It also prints how fresh each signal is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.train_loop import TrainProcess, release_limit, static_limit
from examples.loadgen import LoadProcess, sleep_until

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "jobs" / "demo.yaml"
TRACE = ROOT / "data" / "nasa-http-1995-07.csv"
DEFAULT_WORK = ".headroom/bench-interference"
POLICIES = ("none", "unmanaged", "nice", "idle", "static", "cron", "offpeak", "governed")
TRAIN_LOOP_POLICIES = ("unmanaged", "nice", "idle", "static", "cron", "offpeak")
# Night-rate traffic before the governed window: the job starts and warms up, as the other policies'
# trainers are warm when theirs opens. Its office (a process of its own: start-up, MLflow's run, the
# checklist, all at SCHED_IDLE) took 11-18 s before the job registered, in run G, and a worker then
# starts; 10 s left a shortened run's window (8 s) with no training at all.
GOVERNED_LEAD_S = 30.0
FAILED_MS = 2000.0  # a failed request counts as the load generator's timeout (OpenLoopLoad's default)
FULL_DAY_S, QUICK_DAY_S = 60.0, 25.0  # one replayed day, full run and quick run (--seconds-per-policy)
PEAK_RATE_FRACTION = 0.8  # peak hours: replay seconds where the trace rate is >= 80 % of its peak


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.interference", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"1 rep, {QUICK_DAY_S:g} s per policy (~5 min in all)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of the whole policy sequence (default 3, quick 1)")
    p.add_argument("--seconds-per-policy", type=float, default=None, help=f"one replayed day lasts this long (default {FULL_DAY_S:g}, quick {QUICK_DAY_S:g})")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset, run in this order")
    p.add_argument("--out", default="bench-out/interference", help="folder for results.json, results.md, timelines")
    p.add_argument("--peak-fraction", type=float, default=0.75, help="trace peak as a fraction of measured capacity")
    p.add_argument("--slo-factor", type=float, default=2.5, help="SLO p99 = this x the calibrated serving-alone p99")
    p.add_argument("--day-start", default="1995-07-03T00:00", help="trace local time the replayed day starts at")
    p.add_argument("--cron-window", default="01:00-05:00", help="local hours of the replayed day the cron policy trains in")
    p.add_argument("--static-cpus", type=float, default=0.5, help="CPU limit of the static policy (cgroup quota)")
    p.add_argument("--max-utilization", type=float, default=None,
                   help="the governed job's load ceiling, as a fraction of measured capacity (serving.max_utilization; "
                        "default: what serving may use of a host whose one core trains, 1 - 1/cores, at most 0.85)")
    p.add_argument("--probe-interval-s", type=float, default=0.0,
                   help="the governed job's active probe through the proxy, one request this often (0: none)")
    p.add_argument("--impact-max-ratio", type=float, default=None,
                   help="the governed job's impact guard (serving.impact.max_ratio; default: jobs/demo.yaml's; 0: no guard)")
    p.add_argument("--worker-sched", choices=("idle", "normal"), default=None,
                   help="the governed job's scheduling class (budget.worker_sched; default: jobs/demo.yaml's, idle)")
    p.add_argument("--worker-nice", type=int, default=None,
                   help="the governed job's niceness (budget.worker_nice; default: jobs/demo.yaml's); 19 with "
                        "--worker-sched normal trains as the nice policy does")
    p.add_argument("--checkpoint-every-steps", type=int, default=None,
                   help="the governed job's round length in steps (checkpoint.every_steps; default: jobs/demo.yaml's)")
    p.add_argument("--work", default=DEFAULT_WORK, help="scratch folder: training data, checkpoints, logs, MLflow store")
    p.add_argument("--calibration-seconds", type=float, default=None,
                   help="serving alone, one replayed day in this many seconds, at start: the SLO's baseline "
                        "(default: half a policy's day, 15-30 s)")
    p.add_argument("--port", type=int, default=0, help="Serve's HTTP port on 127.0.0.1 (0: a free one)")
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.max_utilization is None:
        from runtime.loopback import shared_host_ceiling

        args.max_utilization = shared_host_ceiling()
    args.seconds_per_policy = args.seconds_per_policy or (QUICK_DAY_S if args.quick else FULL_DAY_S)
    args.calibration_seconds = args.calibration_seconds or min(30.0, max(15.0, args.seconds_per_policy / 2))
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    unknown = sorted(set(args.policies) - set(POLICIES))
    if unknown:
        p.error(f"--policies: unknown {unknown}; choose from {','.join(POLICIES)}")
    return args


# ---- pure metrics ------------------------------------------------------------------------------------
def _pct(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def latency_metrics(records: list, rate_fn, duration_s: float, slo_ms: float) -> dict:
    """Client latency figures of one run: overall, in the peak hours, and seconds with p99 above the SLO.

    ``records`` are ``(intended_t_s, latency_s or None, ok)``. A failed request (timeout, error, drop)
    counts as taking the client timeout: a lower bound, so the percentiles never flatter a run in
    which the service stopped answering.
    """
    t = np.array([r[0] for r in records], dtype=float)
    ok = np.array([bool(r[2]) for r in records], dtype=bool)
    lat_ms = np.array([r[1] * 1e3 if r[2] and r[1] is not None else FAILED_MS for r in records], dtype=float)
    peak_s = peak_seconds(rate_fn, duration_s)
    bins = np.floor(t).astype(int)
    in_peak = np.isin(bins, peak_s)
    out = {"requests": int(len(t)), "errors": int((~ok).sum()), "peak_requests": int(in_peak.sum())}
    for name, sel in (("", np.ones(len(t), dtype=bool)), ("peak_", in_peak)):
        for q, key in ((50, "p50_ms"), (99, "p99_ms"), (99.9, "p999_ms")):
            out[name + key] = _pct(lat_ms[sel], q)
    violating = [s for s in np.unique(bins) if np.percentile(lat_ms[bins == s], 99) > slo_ms]
    out["slo_violation_s"] = len(violating)
    out["peak_slo_violation_s"] = int(np.isin(violating, peak_s).sum())
    return out


def peak_seconds(rate_fn, duration_s: float) -> np.ndarray:
    centres = np.arange(int(math.ceil(duration_s))) + 0.5
    rates = np.array([rate_fn(c) for c in centres])
    return np.flatnonzero(rates >= PEAK_RATE_FRACTION * rates.max()) if len(rates) else np.zeros(0, dtype=int)


def climb_s(rate_fn, duration_s: float, step_s: float = 0.05) -> float | None:
    """Seconds the replay takes to climb from half its peak rate into the peak hours (from the end of
    its last stretch under 50 % to its first instant at >= ``PEAK_RATE_FRACTION``): about how many of
    the governor's ~1-s readings it gets on the way up. ``None`` if it starts above half its peak.

    >>> climb_s(lambda t: t, 10.0)  # a straight ramp to 10: from 5 to 8
    3.0
    """
    t = np.arange(0.0, duration_s, step_s)
    rates = np.array([rate_fn(x) for x in t])
    if not len(rates) or rates.max() <= 0:
        return None
    top = np.flatnonzero(rates >= PEAK_RATE_FRACTION * rates.max())[0]
    under = np.flatnonzero(rates[:top] < 0.5 * rates.max())
    return None if not len(under) else round(float(t[top] - t[under[-1]] - step_s), 2)


def peak_intervals(peak_s) -> list[tuple[int, int]]:
    """The peak seconds as ``[start, end)`` runs of consecutive seconds.

    >>> peak_intervals([3, 4, 5, 9, 10])
    [(3, 6), (9, 11)]
    """
    runs: list[tuple[int, int]] = []
    for s in sorted(int(x) for x in peak_s):
        if runs and s == runs[-1][1]:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))
    return runs


def rows_in_window(progress: list[dict], start_s: float, end_s: float) -> int:
    """Rows consumed in ``[start_s, end_s]`` (epoch), interpolated between progress records."""
    pts = sorted((p["t"], p["rows_consumed"]) for p in progress if p.get("t") is not None)
    if not pts:
        return 0
    t, rows = np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=float)
    at = np.interp([start_s, end_s], t, rows, left=0.0)
    return int(round(at[1] - at[0]))


def with_rates(progress: list[dict]) -> list[dict]:
    """Progress records with ``rows_per_s`` (difference quotient), as plot_timeline wants them."""
    out, prev = [], None
    for p in sorted(progress, key=lambda p: p["t"]):
        rate = (p["rows_consumed"] - prev["rows_consumed"]) / max(1e-6, p["t"] - prev["t"]) if prev else 0.0
        out.append({"t": p["t"], "rows_consumed": p["rows_consumed"], "rows_per_s": max(0.0, rate)})
        prev = p
    return out


def spread(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": float(np.median(vals)), "min": float(min(vals)), "max": float(max(vals)), "n": len(vals)}


# ---- the governed policy -----------------------------------------------------------------------------
class _WindowOver(Exception):
    """Raised from run_job's status callback at the window's end: run_job has no deadline of its own."""


def governed_spec(ctx: dict, checkpoint_dir: Path):
    from runtime.spec.job import load_spec, spec_from_dict

    base = load_spec(SPEC, check_paths=False).model_dump()
    base["name"] = "bench-governed"
    base["model"]["warm_start"] = "none"  # every policy trains the same fresh model
    base["data"]["path"] = str(ctx["data_dir"])
    base["validation"]["holdout"] = str(ctx["holdout"])
    base["serving"].update(telemetry="ray_serve", application=ctx["app"], url=None, slo_p99_ms=ctx["slo_ms"],
                           capacity_rps=ctx["capacity_rps"], max_utilization=ctx["max_utilization"],
                           probe={"url": ctx["predict_url"], "interval_s": ctx["probe_interval_s"], "window_s": 1.0}
                           if ctx["probe_interval_s"] else None)
    if ctx["impact_max_ratio"] == 0:
        base["serving"]["impact"] = None
    elif ctx["impact_max_ratio"] is not None:
        base["serving"]["impact"] = dict(base["serving"]["impact"] or {}, max_ratio=ctx["impact_max_ratio"])
    base["budget"]["max_rows_per_s"] = ctx["max_rows_per_s"]
    for key in ("worker_sched", "worker_nice"):
        if ctx.get(key) is not None:
            base["budget"][key] = ctx[key]
    base["checkpoint"]["storage"] = str(checkpoint_dir)
    if ctx["checkpoint_every_steps"]:
        base["checkpoint"]["every_steps"] = ctx["checkpoint_every_steps"]
    base["tracking"].update(uri=ctx["mlflow_uri"], experiment="bench-interference")
    return spec_from_dict(base, source=str(SPEC))


def run_governed(ctx: dict, run_dir: Path, checkpoint_dir: Path, end_s: float) -> dict:
    """``run_job`` from now until ``end_s``; the governor's record of it (decisions, pauses, reactions)."""
    import ray

    from runtime.training.checkpoint import CheckpointStore
    from runtime.control.governor import get_or_create_governor
    from runtime.driver.job import run_job
    from runtime.control.reaction import reaction_stats

    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # a fresh job: no checkpoint to resume from
    spec = governed_spec(ctx, checkpoint_dir)
    gov = get_or_create_governor(spec.budget.poll_interval_s)
    progress, captured = [], {}

    def on_status(snap: dict) -> None:
        progress.append({"t": time.time(), "rows_consumed": snap["rows_consumed"]})
        if time.time() >= end_s:
            captured.update(ray.get(gov.snapshot.remote(spec.name, 0), timeout=10) or {})
            raise _WindowOver

    # In a thread of its own: run_job lowers its calling thread's priority for good (SCHED_IDLE, nice),
    # and this process goes on to start the other policies' trainers, which must not inherit it.
    outcome: dict = {}

    def drive() -> None:
        try:
            outcome["summary"] = run_job(spec, on_status=on_status, artifacts_dir=str(run_dir))
        except _WindowOver:
            outcome["summary"] = None  # run_job released the lease and stopped its workers on the way out
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread below
            outcome["error"] = exc

    driver = threading.Thread(target=drive, name="governed-driver")
    driver.start()
    driver.join()
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome["summary"]
    if summary is not None:  # the data ran out inside the window (it is sized not to): take run_job's own record
        captured = dict(summary, reactions_s=summary["reaction"]["all_s"], stops_s=summary["stopped"]["all_s"],
                        reads_s=summary["read"]["all_s"], data_exhausted=True,
                        decisions=json.loads((run_dir / "decisions.json").read_text()))
    latest = CheckpointStore(spec.checkpoint.storage, spec.name).latest()
    left = [j["job"] for j in ray.get(gov.status.remote(), timeout=10)["jobs"]]
    decisions = captured.get("decisions", [])
    (run_dir / "decisions.json").write_text(json.dumps(decisions, default=str))
    (run_dir / "progress.json").write_text(json.dumps(progress))
    return {"progress": progress, "decisions": decisions, "pauses": captured.get("pauses", 0),
            "resumes": captured.get("resumes", 0), "checkpoints": latest.counters.get("rounds", 0) if latest else 0,
            "reaction": reaction_stats(captured.get("reactions_s", [])), "stopped": reaction_stats(captured.get("stops_s", [])),
            "read": reaction_stats(captured.get("reads_s", [])), "jobs_left_on_governor": left,
            "data_exhausted": captured.get("data_exhausted", False)}


# ---- one run of one policy ---------------------------------------------------------------------------
def window_offsets_s(window: str, day_start_local: str, seconds_per_day: float) -> tuple[float, float]:
    """``"01:00-05:00"`` -> replay seconds ``(start, end)`` of that local window in the replayed day."""
    from datetime import datetime

    day0 = datetime.fromisoformat(day_start_local)
    start_h, end_h = ((int(x.split(":")[0]) + int(x.split(":")[1]) / 60.0) for x in window.split("-"))
    base_h = day0.hour + day0.minute / 60.0
    to_s = lambda h: ((h - base_h) % 24.0) / 24.0 * seconds_per_day  # noqa: E731
    return to_s(start_h), to_s(start_h) + ((end_h - start_h) % 24.0) / 24.0 * seconds_per_day


def run_one(ctx: dict, load: LoadProcess, policy: str, rep: int, trainer: TrainProcess | None) -> dict:
    from runtime.plots import plot_timeline

    seconds, rate = ctx["seconds"], ctx["rate"]
    run_dir = ctx["out"] / "runs" / f"{policy}-rep{rep}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # Every policy's training is warm when the replay starts: the train loops have imported and run a
    # batch; the governed job gets GOVERNED_LEAD_S of night-rate traffic first, so the governor can
    # resume it and its worker can start (seconds of imports) before the measured window opens.
    warmup_s = GOVERNED_LEAD_S if policy == "governed" else 0.0
    t0 = time.time() + 1.0 + warmup_s
    load.begin(ctx["predict_url"], rate, seconds, seed=rep, start_at_s=t0, warmup_s=warmup_s)
    loadavg = os.getloadavg()
    gov: dict = {}
    if trainer is not None:
        trainer.go(t0 + (ctx["cron_s"][0] if policy == "cron" else 0.0))
        if policy == "offpeak":
            for start, end in peak_intervals(peak_seconds(rate, seconds)):
                sleep_until(t0 + start, 0.02)
                trainer.hold()
                sleep_until(t0 + end, 0.02)
                trainer.release()
        sleep_until(t0 + seconds)
        progress = trainer.stop()
    elif policy == "governed":
        gov = run_governed(ctx, run_dir, ctx["work"] / "checkpoints" / f"rep{rep}", t0 + seconds)
        progress = gov["progress"]
    else:
        sleep_until(t0 + seconds)
        progress = []
    res = load.result(seconds + 60)
    start_s = res["start_epoch_s"] or t0
    lat = latency_metrics(res["records"], rate, seconds, ctx["slo_ms"])
    rows = rows_in_window(progress, start_s, start_s + seconds)
    inside = lambda recs: [r for r in recs if start_s - 1 <= r["t"] <= start_s + seconds + 1]  # noqa: E731
    plot = plot_timeline(inside(gov.get("decisions", [])), inside(with_rates(progress)),
                         ctx["out"] / f"timeline-{policy}-rep{rep}.png",
                         client_latency=[(start_s + t, lat_s if ok else None) for t, lat_s, ok in res["records"]],
                         slo_p99_ms=ctx["slo_ms"], title=f"interference: {policy}, rep {rep}")
    return {"policy": policy, "rep": rep, "start_epoch_s": start_s, "loadavg_at_start": loadavg,
            "latency": lat, "send_lag_p99_ms": res["stats"].get("send_lag_p99_ms"), "loadgen_error": res["error"],
            "train_rows": rows if policy != "none" else 0, "train_rows_per_s": rows / seconds,
            "train_rows_run": max((p["rows_consumed"] for p in progress), default=0),
            "pauses": gov.get("pauses"), "resumes": gov.get("resumes"), "checkpoints": gov.get("checkpoints"),
            "reaction": gov.get("reaction"), "stopped": gov.get("stopped"), "read": gov.get("read"),
            "jobs_left_on_governor": gov.get("jobs_left_on_governor"), "data_exhausted": gov.get("data_exhausted"),
            "timeline": str(plot.relative_to(ctx["out"]))}


# ---- set-up and calibration --------------------------------------------------------------------------
def machine_info() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    return {"cores": os.cpu_count(), "cpu_model": model, "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def calibrate(load: LoadProcess, endpoints, rate, seconds: float, window_s: float = 3.0) -> dict:
    """Serving alone under the replayed day (compressed into ``seconds``): the baseline the SLO comes from.

    The baseline is the median over ``window_s`` windows of the client p99: on this shared host one
    neighbour's burst moves the p99 of a whole short phase 2-3x (84-240 ms in four back-to-back
    15-s replays), but only the window it falls in. A replay rather than a steady peak rate, because a
    steady rate at the peak builds queues the trace's short peak never does.
    """
    from examples.serving import APP_NAME
    from runtime.control.telemetry import PrometheusScrapeSource

    source = PrometheusScrapeSource(endpoints.metrics_url)
    source.sample()
    load.begin(endpoints.predict_url, rate, seconds, seed=12345, start_at_s=time.time() + 0.2)
    freshness = measure_freshness(APP_NAME, seconds=min(5.0, seconds / 2))  # while the replay runs
    res = load.result(seconds + 60)
    server = source.sample()
    ok = [(t, lat * 1e3) for t, lat, good in res["records"] if good]
    windows = [[ms for t, ms in ok if lo <= t < lo + window_s] for lo in np.arange(0.0, seconds - window_s / 2, window_s)]
    p99s = [_pct(w, 99) for w in windows if w]
    return {"seconds": seconds, "requests": len(res["records"]), "client_p50_ms": _pct([ms for _, ms in ok], 50),
            "client_p99_ms": _pct([ms for _, ms in ok], 99), "window_s": window_s,
            "client_p99_windows_ms": [round(v, 1) for v in p99s], "baseline_p99_ms": float(np.median(p99s)),
            "server_p99_ms": server.p99_ms, "errors": sum(not good for *_, good in res["records"]),
            "freshness": freshness}


def measure_freshness(app: str, seconds: float = 5.0) -> dict:
    """How often Serve's ingress histogram changes on Ray's metrics endpoints (read 10 times a second
    while the calibration load still runs), and what one read costs."""
    import httpx

    from runtime.control.telemetry import RAY_SERVE_HISTOGRAM, RayNodeTargets

    urls = RayNodeTargets()()
    changes, costs, last = [], [], None
    deadline = time.time() + seconds
    with httpx.Client(timeout=2.0) as client:
        while time.time() < deadline:
            started = time.perf_counter()
            total = 0.0
            for url in urls:
                for line in client.get(url).text.splitlines():
                    if line.startswith(f"{RAY_SERVE_HISTOGRAM}_count") and f'application="{app}"' in line:
                        total += float(line.rsplit(" ", 1)[1])
            costs.append((time.perf_counter() - started) * 1e3)
            if last is not None and total != last:
                changes.append(time.time())
            last = total
            time.sleep(0.1)
    gaps = np.diff(changes) if len(changes) >= 2 else np.array([math.nan])
    return {"ingress_refresh_median_s": float(np.median(gaps)), "ingress_refresh_p95_s": float(np.percentile(gaps, 95)),
            "scrape_ms_median": float(np.median(costs)), "targets": len(urls)}


def prepare_data(work: Path, seconds: float) -> dict:
    """Slices for both the governed job and the train loop, enough that neither runs out in a window."""
    from benchmarks.train_loop import measure_rows_per_s
    from runtime.training.datagen import write_regression_slices

    shutil.rmtree(work / "data", ignore_errors=True)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    probe, _ = write_regression_slices(work / "probe", slices=1, rows_per_slice=20_000, features=8, seed=7)
    solo = measure_rows_per_s(str(probe), seconds=4.0)
    # The governor's full speed: a little above the best one thread did alone, so RUN never throttles
    # (a probe slowed by a noisy neighbour must not cap the governed job below the others).
    max_rows_per_s = float(max(1000, round(1.2 * solo, -2)))
    slices = int(math.ceil((max_rows_per_s * (seconds + GOVERNED_LEAD_S) * 1.2 + 20_000) / 50_000))
    data, holdout = write_regression_slices(work / "data", slices=slices, rows_per_slice=50_000, features=8, seed=7)
    return {"data_dir": data, "holdout": holdout, "solo_rows_per_s": solo, "max_rows_per_s": max_rows_per_s,
            "data_rows": slices * 50_000}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- report ------------------------------------------------------------------------------------------
METRICS = {  # name in the summary -> how to read it from one run
    "p50_ms": lambda r: r["latency"]["p50_ms"], "p99_ms": lambda r: r["latency"]["p99_ms"],
    "p999_ms": lambda r: r["latency"]["p999_ms"], "peak_p50_ms": lambda r: r["latency"]["peak_p50_ms"],
    "peak_p99_ms": lambda r: r["latency"]["peak_p99_ms"], "peak_p999_ms": lambda r: r["latency"]["peak_p999_ms"],
    "slo_violation_s": lambda r: r["latency"]["slo_violation_s"], "errors": lambda r: r["latency"]["errors"],
    "train_rows": lambda r: r["train_rows"], "pauses": lambda r: r["pauses"], "checkpoints": lambda r: r["checkpoints"],
    "reaction_median_s": lambda r: (r["reaction"] or {}).get("median_s"),
    "reaction_p95_s": lambda r: (r["reaction"] or {}).get("p95_s"),
}


def paired_ratio(runs: list[dict], policy: str, metric: str = "peak_p99_ms", base: str = "none") -> dict | None:
    """``metric`` of ``policy`` over ``base``'s in the same rep (the policies interleave, so a rep's runs
    share the host's minute): each rep's ratio, their geometric mean and its 90 % interval (t, on the
    logs). An interval that holds the target's 1.10 is a run that cannot tell the policy from it.

    >>> run = lambda policy, rep, ms: {"policy": policy, "rep": rep, "latency": {"peak_p99_ms": ms}}
    >>> r = paired_ratio([run("none", 1, 100), run("none", 2, 80), run("x", 1, 110), run("x", 2, 100)], "x")
    >>> r["per_rep"], round(r["geomean"], 3), [round(v, 2) for v in r["ci90"]]
    ([1.1, 1.25], 1.173, [0.78, 1.76])
    """
    from scipy import stats

    get = METRICS[metric]
    bases = {r["rep"]: get(r) for r in runs if r["policy"] == base}
    ratios = [get(r) / bases[r["rep"]] for r in runs if r["policy"] == policy and r.get("rep") in bases
              and get(r) is not None and bases[r["rep"]]]
    if not ratios:
        return None
    logs = np.log(ratios)
    mean, n = float(logs.mean()), len(logs)
    half = float(stats.t.ppf(0.95, n - 1) * logs.std(ddof=1) / math.sqrt(n)) if n >= 2 else None
    return {"per_rep": [round(v, 3) for v in ratios], "geomean": math.exp(mean), "n": n,
            "ci90": None if half is None else [math.exp(mean - half), math.exp(mean + half)]}


def summarize(runs: list[dict], policies: list[str]) -> dict:
    out = {}
    for policy in policies:
        mine = [r for r in runs if r["policy"] == policy]
        out[policy] = {name: spread([get(r) for r in mine]) for name, get in METRICS.items()}
        if policy != "none":
            out[policy]["peak_p99_vs_none"] = paired_ratio(runs, policy)
        every = {key: [(r.get(key) or {}).get("all_s") or [] for r in mine] for key in ("reaction", "stopped", "read")}
        # from the reading that showed the loss: its read and the reaction, pause by pause (paired in each rep)
        every["from_reading"] = [[a + b for a, b in zip(read, react)] if len(read) == len(react) else []
                                 for read, react in zip(every["read"], every["reaction"])]
        for key, per_rep in every.items():  # every pause of every rep, pooled
            pooled = [v for values in per_rep for v in values]
            out[policy][f"{key}_pooled"] = {"count": len(pooled), "median_s": _pct(pooled, 50), "p95_s": _pct(pooled, 95)}
    return out


def median_of(summary: dict, policy: str, metric: str):
    """``summary[policy][metric]["median"]``; None where that policy did not run."""
    return ((summary.get(policy) or {}).get(metric) or {}).get("median")


def check_targets(summary: dict) -> list[dict]:
    """The issue's targets on the medians; ``met`` is None where a policy needed for it did not run."""
    med = lambda p, m: median_of(summary, p, m)  # noqa: E731
    g = "governed"
    pooled = (summary.get(g) or {}).get("reaction_pooled", {})
    reading = (summary.get(g) or {}).get("from_reading_pooled", {})
    checks = [
        ("governed peak-hour p99 <= 1.10 x none", med(g, "peak_p99_ms"), med("none", "peak_p99_ms"), lambda a, b: a <= 1.10 * b),
        ("governed SLO-violation s == 0", med(g, "slo_violation_s"), 0, lambda a, b: a == b),
        ("governed rows > cron", med(g, "train_rows"), med("cron", "train_rows"), lambda a, b: a > b),
        ("governed rows > static", med(g, "train_rows"), med("static", "train_rows"), lambda a, b: a > b),
        ("governed rows >= 0.8 x nice", med(g, "train_rows"), med("nice", "train_rows"), lambda a, b: a >= 0.8 * b),
        ("reaction median <= 0.3 s (pooled)", pooled.get("median_s"), 0.3, lambda a, b: a <= b),
        ("reaction p95 <= 0.6 s (pooled)", pooled.get("p95_s"), 0.6, lambda a, b: a <= b),
        ("... counted from the reading: median <= 0.3 s", reading.get("median_s"), 0.3, lambda a, b: a <= b),
        ("... counted from the reading: p95 <= 0.6 s", reading.get("p95_s"), 0.6, lambda a, b: a <= b),
    ]
    out = []
    for name, a, b, ok in checks:
        met = None if a is None or b is None else bool(ok(a, b))
        out.append({"target": name, "value": a, "reference": b, "met": met, "note": None})
    paired = (summary.get(g) or {}).get("peak_p99_vs_none")
    if paired:  # how sure the medians' verdict is: the same rep's ratios, and a policy that cannot touch the peak
        out[0]["note"] = f"paired per rep {_paired(paired)}" + "".join(
            f"; `{p}` {_paired(summary[p]['peak_p99_vs_none'])}" for p in ("cron", "offpeak")
            if (summary.get(p) or {}).get("peak_p99_vs_none"))
    return out


def _paired(r: dict) -> str:
    """``1.17x [0.87-1.58] (1.10, 1.25)``: the geometric mean, its 90 % interval, each rep's ratio."""
    ci = f" [{r['ci90'][0]:.2f}-{r['ci90'][1]:.2f}]" if r.get("ci90") else ""
    return f"{r['geomean']:.2f}x{ci} ({', '.join(f'{v:.2f}' for v in r['per_rep'])})"


def _cell(s: dict, digits: int = 0) -> str:
    if not s or s.get("median") is None:
        return "–"
    f = lambda v: f"{v:.{digits}f}"  # noqa: E731
    return f(s["median"]) if s["n"] < 2 or s["min"] == s["max"] else f"{f(s['median'])} [{f(s['min'])}–{f(s['max'])}]"


def markdown(meta: dict, summary: dict, targets: list[dict]) -> str:
    cal, m = meta["calibration"], meta["machine"]
    lines = [
        f"# Interference benchmark ({meta['mode']}: {meta['reps']} rep(s) x {meta['seconds_per_policy']:g} s per policy)",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), load average at start {m['loadavg_at_start']}, at end "
        f"{meta['loadavg_at_end']}, at the start of each run {meta['loadavg_runs']} (1-min); {m['platform']}. "
        f"Wall time {meta['wall_s']:.0f} s.",
        f"Serving: one Ray Serve replica, capacity {meta['capacity']['rps']:.0f} req/s (closed loop, measured at start); "
        f"trace peak {meta['peak_rps']:.0f} req/s = {meta['peak_fraction']:.0%} of it (NASA {meta['day_start']}, one day in "
        f"{meta['seconds_per_policy']:g} s; peak hours = rate >= {PEAK_RATE_FRACTION:.0%} of peak: {meta['peak_seconds']} s of the replay)"
        + (f"; the load climbs from half its peak into the peak hours in {meta['climb_s']:g} s, about as many of the "
           "governor's readings (its signal is ~1 s fresh)." if meta.get("climb_s") else "."),
        f"SLO p99 {meta['slo_ms']:g} ms = {meta['slo_factor']:g} x the serving-alone baseline: a calibration replay of the "
        f"day in {cal['seconds']:g} s at start, client p99 per {cal['window_s']:g}-s window {cal['client_p99_windows_ms']} ms, "
        f"median {cal['baseline_p99_ms']:.1f} ms (whole-phase p99 {_ms(cal['client_p99_ms'])}, server-side "
        f"{_ms(cal['server_p99_ms'])}); the governor gets the same SLO for the server-side histogram.",
        f"Training: the governed job's MLPRegressor(256,256) partial_fit, 256-row batches, 1 thread; alone (best second of a "
        f"4-s probe) {meta['solo_rows_per_s']:.0f} rows/s; governor budget max_rows_per_s {meta['max_rows_per_s']:g}, "
        f"load ceiling {meta['max_utilization']:g} of capacity ({meta['max_utilization'] * meta['capacity']['rps']:.0f} req/s). "
        f"static = {meta['static']['kind']} ({meta['static']['cpus']} CPU); cron = {meta['cron_window']} local "
        f"({meta['cron_s'][0]:.1f}-{meta['cron_s'][1]:.1f} s of the replay). Training is warm when a window opens: the "
        f"train loops have imported and run a batch; the governed job gets {GOVERNED_LEAD_S:g} s of night-rate traffic "
        "first (its rows then are not counted).",
        "Cells: median [min–max] over reps. Latencies are client-side, from the intended send time; a failed request "
        f"(errors column) counts as the {FAILED_MS / 1e3:g}-s client timeout. s p99>SLO: seconds of the replay whose "
        "requests' p99 exceeded the SLO. Reaction: PAUSE decided -> workers released, pooled over reps; in brackets, the "
        "part of it until every worker's last step ended (training takes no CPU after that; the state's return, the "
        "merge and the hand-back follow at the job's priority), and the read before it: the reading that showed the "
        "loss taken -> the PAUSE decided (a read of Ray's metrics endpoint takes 0.2 s or more).",
        "",
        "| policy | p50 ms | p99 ms | p99.9 ms | peak p99 ms | peak p99.9 ms | s p99>SLO | errors | training rows | pauses | checkpoints | reaction median / p95 s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, s in summary.items():
        pooled = s["reaction_pooled"]
        stops, read = s.get("stopped_pooled") or {}, s.get("read_pooled") or {}
        reaction = (f"{pooled['median_s']:.2f} / {pooled['p95_s']:.2f} (n={pooled['count']})"
                    + (f" [stopped {stops['median_s']:.2f} / {stops['p95_s']:.2f}]" if stops.get("count") else "")
                    + (f" [read {read['median_s']:.2f} / {read['p95_s']:.2f}]" if read.get("count") else "")
                    if pooled["count"] else "–")
        lines.append(f"| {policy} | {_cell(s['p50_ms'], 1)} | {_cell(s['p99_ms'], 1)} | {_cell(s['p999_ms'], 1)} | "
                     f"{_cell(s['peak_p99_ms'], 1)} | {_cell(s['peak_p999_ms'], 1)} | {_cell(s['slo_violation_s'])} | "
                     f"{_cell(s['errors'])} | {_cell(s['train_rows'])} | {_cell(s['pauses'])} | {_cell(s['checkpoints'])} | {reaction} |")
    caveat = ""
    if meta["mode"] == "quick":  # what `make benchmark` prints first: say what one short rep can and cannot show
        caveat = (f"; set for the full run, `--reps 3` of a {FULL_DAY_S:g}-s day: this quick run's "
                  f"{meta['seconds_per_policy']:g}-s day climbs to its peak {FULL_DAY_S / meta['seconds_per_policy']:.1f}x "
                  "as fast for the same ~1-s signal, and one repetition on a shared host is within the spread of any "
                  "policy, so it shows that every policy runs, not whether the targets hold")
    lines += ["", f"Targets (medians; reported, not asserted{caveat}):", ""]
    for t in targets:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        note = f"; {t['note']}" if t.get("note") else ""
        lines.append(f"- {t['target']}: {mark} (value {_fmt(t['value'])}, reference {_fmt(t['reference'])}{note})")
    paired = {p: s["peak_p99_vs_none"] for p, s in summary.items() if s.get("peak_p99_vs_none")}
    if paired:
        lines += ["", "Peak p99 over the same rep's `none` (geometric mean [90 % interval] (each rep)); an interval "
                  "that holds 1.10 cannot tell that policy from the target, and `cron` trains only in "
                  f"{meta['cron_s'][0]:.1f}-{meta['cron_s'][1]:.1f} s of the day, far from the peak: " +
                  "; ".join(f"`{p}` {_paired(r)}" for p, r in paired.items())]
    rows = lambda p: median_of(summary, p, "train_rows")  # noqa: E731
    if rows("offpeak") and rows("nice"):
        lines += ["", f"Bound: `offpeak` (idle's loop held for free in the {meta['peak_seconds']} peak s) trained "
                  f"{rows('offpeak') / rows('nice'):.2f}x `nice`'s rows: the most a job paused through the peak can train"
                  + (f"; `governed` trained {rows('governed') / rows('offpeak'):.2f}x of it." if rows("governed") else ".")]
    return "\n".join(lines) + "\n"


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.3g}" if isinstance(v, float) and abs(v) < 100 else f"{v:.0f}")


# ---- main --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("timeline-*.png"):
        old.unlink()
    work = Path(args.work) if Path(args.work).is_absolute() else ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    meta = {"mode": "quick" if args.quick else "full", "reps": args.reps, "seconds_per_policy": args.seconds_per_policy,
            "policies": args.policies, "machine": machine_info(), "peak_fraction": args.peak_fraction,
            "slo_factor": args.slo_factor, "day_start": args.day_start, "cron_window": args.cron_window,
            "command": " ".join(["python -m benchmarks.interference", *(argv if argv is not None else sys.argv[1:])])}
    log = lambda msg: print(f"[bench {time.time() - started:5.0f}s] {msg}", flush=True)  # noqa: E731
    log(f"machine: {meta['machine']}")
    static = static_limit(args.static_cpus) if "static" in args.policies else {"kind": "unused", "cpus": None, "prefix": []}
    meta["static"] = {k: v for k, v in static.items() if k != "prefix"}
    trainers: dict[str, TrainProcess] = {}
    runs: list[dict] = []
    load = None
    import ray

    try:
        data = prepare_data(work, args.seconds_per_policy)
        meta.update(solo_rows_per_s=data["solo_rows_per_s"], max_rows_per_s=data["max_rows_per_s"], data_rows=data["data_rows"],
                    max_utilization=args.max_utilization)
        log(f"training alone: {data['solo_rows_per_s']:.0f} rows/s; {data['data_rows']} rows of data; static: {meta['static']}")
        mlflow_uri = f"sqlite:///{work / 'mlflow.db'}"
        if "governed" in args.policies:  # the store's schema set-up costs seconds: pay it before any measurement
            from mlflow import MlflowClient

            MlflowClient(mlflow_uri).search_experiments()
        load = LoadProcess()
        from examples.loadgen import trace_rate_fn
        from examples.serving import APP_NAME, measure_capacity_rps, start_serving, stop_serving
        from runtime.windows.history import read_history_csv

        log("starting a private Ray cluster (loopback) and the serving app ...")
        from runtime.loopback import start_private_cluster

        start_private_cluster(num_cpus=4, resources={"training_pool": 1})
        endpoints = start_serving(http_port=args.port or free_port())
        time.sleep(2.0)  # let the deployment's start-up CPU settle before measuring
        meta["capacity"] = measure_capacity_rps(endpoints.predict_url, clients=4, duration_s=6.0)
        peak = args.peak_fraction * meta["capacity"]["rps"]
        history = read_history_csv(TRACE)
        day = lambda seconds: trace_rate_fn(history, day_start_local=args.day_start, seconds_per_day=seconds,  # noqa: E731
                                            peak_rps=peak)
        cal = calibrate(load, endpoints, day(args.calibration_seconds), args.calibration_seconds)
        slo_ms = float(round(args.slo_factor * cal["baseline_p99_ms"]))
        meta.update(peak_rps=peak, calibration=cal, slo_ms=slo_ms)
        log(f"capacity {meta['capacity']['rps']:.0f} req/s -> peak {peak:.0f} req/s; serving alone: p99 per "
            f"{cal['window_s']:g}-s window {cal['client_p99_windows_ms']} ms, median {cal['baseline_p99_ms']:.1f} ms "
            f"-> SLO {slo_ms:g} ms")
        rate = day(args.seconds_per_policy)
        cron_s = window_offsets_s(args.cron_window, args.day_start, args.seconds_per_policy)
        meta.update(cron_s=cron_s, peak_seconds=int(len(peak_seconds(rate, args.seconds_per_policy))),
                    climb_s=climb_s(rate, args.seconds_per_policy))
        meta["freshness"] = cal.pop("freshness")
        log(f"signals: Serve's ingress histogram on Ray's metrics endpoint changes every "
            f"{meta['freshness']['ingress_refresh_median_s']:.2f} s (median; p95 {meta['freshness']['ingress_refresh_p95_s']:.2f} s), "
            f"read at most once a second ({meta['freshness']['scrape_ms_median']:.0f} ms a read); "
            + (f"the probe lands every {args.probe_interval_s:g} s; " if args.probe_interval_s else "no probe; ")
            + "the governor decides every 0.25 s")
        ctx = {"seconds": args.seconds_per_policy, "rate": rate, "out": out, "slo_ms": slo_ms, "cron_s": cron_s,
               "predict_url": endpoints.predict_url, "metrics_url": endpoints.metrics_url, "capacity_rps": meta["capacity"]["rps"],
               "app": APP_NAME, "max_utilization": args.max_utilization, "probe_interval_s": args.probe_interval_s,
               "impact_max_ratio": args.impact_max_ratio, "checkpoint_every_steps": args.checkpoint_every_steps,
               "worker_sched": args.worker_sched, "worker_nice": args.worker_nice,
               "mlflow_uri": mlflow_uri, "work": work, **data}
        for rep in range(1, args.reps + 1):
            # Started ahead (imports cost seconds of CPU), idle on stdin until their run begins.
            for policy in (p for p in args.policies if p in TRAIN_LOOP_POLICIES):
                seconds = cron_s[1] - cron_s[0] if policy == "cron" else args.seconds_per_policy
                trainers[policy] = TrainProcess(policy, data["data_dir"], work / f"train-{policy}.jsonl", seconds, static)
            for t in trainers.values():
                t.wait_ready()
            time.sleep(2.0)
            for policy in args.policies:
                run = run_one(ctx, load, policy, rep, trainers.pop(policy, None))
                runs.append(run)
                lat = run["latency"]
                log(f"rep {rep}/{args.reps} {policy:<9} p99 {_ms(lat['p99_ms'])}, peak p99 {_ms(lat['peak_p99_ms'])}, "
                    f"{lat['slo_violation_s']} s over SLO, {run['train_rows']} rows, pauses {run['pauses']}, "
                    f"load avg {run['loadavg_at_start'][0]:.1f}")
                (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs, "partial": True}, indent=1, default=str))
                time.sleep(1.0)  # in-flight requests and training processes settle between runs
        stop_serving()
    finally:
        for t in trainers.values():
            t.stop()
        if load is not None:
            load.close()
        ray.shutdown()
        release_limit(static)
    loads = [r["loadavg_at_start"][0] for r in runs]
    meta.update(wall_s=time.time() - started, loadavg_at_end=[round(x, 2) for x in os.getloadavg()],
                loadavg_runs=f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a")
    summary = summarize(runs, args.policies)
    targets = check_targets(summary)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "targets": targets, "runs": runs},
                                                 indent=1, default=str))
    md = markdown(meta, summary, targets)
    (out / "results.md").write_text(md)
    print("\n" + md, flush=True)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'} and {len(runs)} timelines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
