"""The end-to-end demo behind ``make demo``: governed retraining beside a live, trace-loaded service.

1. a private local Ray cluster (loopback only, token auth) with a ``training_pool`` slot;
2. a Ray Serve app serving a CPU-bound model; its capacity is measured at start;
3. an open-loop load generator, in a process of its own, replaying the real NASA July 1995 trace from a
   Monday night, one day per ``--seconds-per-day``, scaled so its peak is 60 % of the measured capacity;
4. a baseline day: the service under that load alone; its ingress p99 sets the SLO (``--slo-factor``);
5. then the same day again, and again, with a governed retraining job (``jobs/demo.yaml``: an MLP updated
   with ``partial_fit`` on fresh slices) whose governor guards what users feel: Ray Serve's own ingress
   latency and queue, read from every node's metrics endpoint.

It prints a live status line, then a table of what users felt (the load generator's p99, from each
request's intended send time) beside what the governor saw, for the baseline, training and
post-training phases -- each phase against the same hours of the baseline day, since the load of a
replayed day changes by the hour -- the job's figures, and the path of a timeline plot and of the
post-mortem.

    python -m examples.demo [--seconds-per-day 100] [--out demo-out]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "jobs" / "demo.yaml"
TRACE = ROOT / "data" / "nasa-http-1995-07.csv"
PEAK_FRACTION = 0.6  # the trace's peak as a fraction of the measured capacity


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.splitlines()[0])
    p.add_argument("--seconds-per-day", type=float, default=100.0, help="replay one trace day in this many seconds")
    p.add_argument("--peak-rps", type=float, default=None, help="load at the trace's peak (default: 60%% of measured capacity)")
    p.add_argument("--port", type=int, default=8000, help="Serve's HTTP port on 127.0.0.1")
    p.add_argument("--out", default="demo-out", help="folder for the summary, decision log and timeline plot")
    p.add_argument("--rows", type=int, default=288_000,
                   help="rows of new training data (enough for ~40 s of training here: a p99 needs requests)")
    p.add_argument("--day-start", default="1995-07-03T03:00", help="trace local time the replay starts at (a Monday night)")
    p.add_argument("--slo-factor", type=float, default=2.5, help="SLO p99 = this x the baseline day's ingress p99")
    p.add_argument("--workdir", default=str(ROOT / ".headroom" / "demo"), help="folder for the demo's data and checkpoints")
    p.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}", help="MLflow store for the job's run and model")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from examples.loadgen import LoadProcess, repeat_days, trace_rate_fn
    from examples.serving import APP_NAME, measure_capacity_rps, start_serving, stop_serving
    from runtime.cli.jobs import StatusLine
    from runtime.driver.job import run_job
    from runtime.loopback import shared_host_ceiling, start_private_cluster
    from runtime.plots import plot_timeline
    from runtime.spec.job import load_spec, spec_from_dict
    from runtime.training.datagen import write_regression_slices
    from runtime.windows.history import read_history_csv

    out = ROOT / args.out
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)  # each demo run is a fresh "day" of data; the champion persists
    data, holdout = write_regression_slices(work / "data", slices=12, rows_per_slice=args.rows // 12, features=8, seed=int(time.time()) % 1000)

    base = load_spec(SPEC, check_paths=False).model_dump()
    print("[demo] starting a local Ray cluster ...", flush=True)
    start_private_cluster(num_cpus=4, resources={"training_pool": 1})
    load = LoadProcess()  # before the job's driver lowers this process's priority: the load keeps its own
    try:
        print("[demo] deploying the serving app on Ray Serve ...", flush=True)
        endpoints = start_serving(http_port=args.port)
        capacity = measure_capacity_rps(endpoints.predict_url, clients=4, duration_s=4.0)["rps"]
        peak = args.peak_rps or PEAK_FRACTION * capacity
        print(f"[demo] measured capacity {capacity:.0f} req/s -> trace peak at {peak:.0f} req/s", flush=True)
        # One day of trace, over and over (stopped when the job ends): day 1 is the baseline, no job.
        day = trace_rate_fn(read_history_csv(TRACE), day_start_local=args.day_start, seconds_per_day=args.seconds_per_day,
                            peak_rps=peak)
        rate = repeat_days(day, 8)
        t0 = time.time() + 0.5
        load.begin(endpoints.predict_url, rate, rate.duration_s, seed=0, start_at_s=t0)
        print(f"[demo] replaying the NASA trace, one day every {args.seconds_per_day:.0f} s; the baseline day "
              "(no job) ...", flush=True)
        baseline_p99 = _baseline_p99_ms(APP_NAME, t0, args.seconds_per_day)
        slo = float(round(args.slo_factor * baseline_p99))
        base["data"].update(path=str(data))
        base["validation"].update(holdout=str(holdout))
        base["serving"].update(application=APP_NAME, capacity_rps=capacity, slo_p99_ms=slo,
                               max_utilization=shared_host_ceiling())  # serving and training share this host
        base["checkpoint"].update(storage=str(work / "checkpoints"))
        base["tracking"].update(uri=args.tracking_uri)
        spec = spec_from_dict(base, source=str(SPEC))
        print(f"[demo] baseline ingress p99 {baseline_p99:.0f} ms -> SLO p99 {slo:.0f} ms; load ceiling "
              f"{spec.serving.max_utilization:g} of capacity ({spec.serving.max_utilization * capacity:.0f} req/s: serving "
              f"and training share this host); training {args.rows} rows under the governor", flush=True)
        line = StatusLine(sys.stdout, every_s=2.0)
        job_started = time.time()
        try:
            summary = run_job(spec, on_status=line, artifacts_dir=str(out))
        finally:
            line.close()
            job_ended = time.time()
            load.stop()
        res = load.result(60)
        if summary["status"] == "checklist_failed":
            failed = [i for i in summary["checklist"]["items"] if not i["passed"]]
            print("[demo] the pre-work checklist stopped the job: " + "; ".join(f"{i['item']}: {i['detail']}" for i in failed))
            stop_serving()
            return 1
        decisions = json.loads((out / "decisions.json").read_text())
        progress = json.loads((out / "progress.json").read_text())
        start = res["start_epoch_s"] or t0
        client = [(start + t, lat if ok else None) for t, lat, ok in res["records"]]
        phases = _phases(decisions, t0, job_started, job_ended)
        table = phase_table(client, decisions, phases, t0, args.seconds_per_day)
        impact = impact_summary(decisions)
        (out / "phases.json").write_text(json.dumps({"slo_p99_ms": slo, "phases": table, "impact": impact}, indent=1))
        (out / "client.json").write_text(json.dumps({"t0": t0, "job_started": job_started, "job_ended": job_ended,
                                                     "requests": [[round(t, 4), v] for t, v in client]}))
        plot = plot_timeline(decisions, progress, out / "timeline.png", client_latency=client, slo_p99_ms=slo,
                             title="headroom demo: NASA trace replay + governed retraining (client vs governor)")
        stop_serving()
    finally:
        load.close()
        ray.shutdown()
    _report(summary, table, slo, plot, args.tracking_uri, impact)
    return 0


def _baseline_p99_ms(app: str, t0: float, seconds: float) -> float:
    """The service alone under the replay for ``seconds``: the p99 of Ray Serve's own ingress histogram
    over the phase (the load generator reports its records only when its load ends)."""
    from runtime.control.telemetry import build_source

    src = build_source("ray_serve", application=app, window_s=max(2.0, seconds + 1.0))
    time.sleep(max(0.0, t0 - time.time()))
    src.sample()
    time.sleep(seconds)
    deadline = time.time() + 5.0
    while (sample := src.sample()).p99_ms is None and time.time() < deadline:
        time.sleep(0.5)
    if sample.p99_ms is None:
        raise RuntimeError(f"no ingress latency after the baseline phase ({sample.error})")
    return sample.p99_ms


Spans = list[tuple[float, float]]


def _phases(decisions: list[dict], t0: float, job_started: float, job_ended: float) -> dict[str, Spans]:
    """baseline (load, no job), training (the job holds its lease), post-training (validation to the end);
    and the training phase split by the governor's directive: the spans it let the job run (RUN or
    THROTTLE) and the spans it paused it, so that a tail caused by training can be told from one the
    host made while the job stood still."""
    finishing = [d["t"] for d in decisions if d.get("phase") == "finishing"]
    training_end = min(finishing) if finishing else job_ended
    running, paused = directive_spans(decisions, job_started, training_end)
    return {"baseline": [(t0, job_started)], "training": [(job_started, training_end)],
            "  running": running, "  paused": paused, "post-training": [(training_end, job_ended)]}


def directive_spans(decisions: list[dict], lo: float, hi: float) -> tuple[Spans, Spans]:
    """The spans of [lo, hi) under a directive that let the job train, and those under PAUSE (each
    decision holds until the next one; before the first, the job is starting: paused).

    >>> directive_spans([{"t": 1, "level": "RUN"}, {"t": 3, "level": "PAUSE"}, {"t": 4, "level": "THROTTLE"}], 0, 6)
    ([(1, 3), (4, 6)], [(0, 1), (3, 4)])
    """
    running: Spans = []
    paused: Spans = []
    marks = [(d["t"], d["level"] != "PAUSE") for d in decisions if lo <= d["t"] < hi]
    edges = [(lo, False), *marks]
    for (start, runs), (end, _) in zip(edges, [*edges[1:], (hi, None)]):
        if end > start:
            spans = running if runs else paused
            if spans and spans[-1][1] == start:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
    return running, paused


def phase_table(client: list[tuple[float, float | None]], decisions: list[dict], phases: dict[str, Spans],
                t0: float, day_s: float) -> list[dict]:
    """Per phase: the client's p50/p99 (a failed request counts as the 2-s timeout), the p99 of the same
    hours of the baseline day (the first ``day_s`` after ``t0``), their ratio with its 90 % interval,
    and the median p99 the governor decided on."""
    def ms(v):
        return 2000.0 if v is None else v * 1e3

    def within(t, spans):
        return any(lo <= t < hi for lo, hi in spans)

    baseline = [(t, ms(v)) for t, v in client if t0 <= t < t0 + day_s]
    rows = []
    for name, spans in phases.items():
        lat = [ms(v) for t, v in client if within(t, spans)]
        hours = {int((t - t0) % day_s) for t, _ in client if within(t, spans)}  # 1-s bins of the replayed day
        matched = [v for t, v in baseline if int(t - t0) in hours]
        gov = [d["p99_ms"] for d in decisions if within(d["t"], spans) and d.get("p99_ms") is not None]
        p99 = float(np.percentile(lat, 99)) if lat else None
        same_hours = float(np.percentile(matched, 99)) if matched else None
        rows.append({"phase": name.strip(), "part_of": "training" if name.startswith(" ") else None,
                     "seconds": round(sum(hi - lo for lo, hi in spans), 1), "requests": len(lat),
                     "client_p50_ms": float(np.percentile(lat, 50)) if lat else None, "client_p99_ms": p99,
                     "baseline_same_hours_p99_ms": same_hours,
                     "client_p99_vs_baseline": p99 / same_hours if p99 and same_hours else None,
                     "ratio_90ci": p99_ratio_interval(lat, matched),
                     "governor_p99_ms": float(np.median(gov)) if gov else None})
    return rows


def p99_ratio_interval(phase: list[float], baseline: list[float], *, resamples: int = 2000,
                       seed: int = 0) -> list[float] | None:
    """A 90 % bootstrap interval of p99(phase) / p99(baseline): how far the ratio could move by chance
    alone. A p99 of a few hundred requests is one of their few slowest, so a phase of the demo's length
    reads anywhere in a wide band on an unchanged host; the interval says how wide.

    >>> lo, hi = p99_ratio_interval(list(range(1, 1001)), list(range(1, 1001)))
    >>> lo < 1.0 < hi
    True
    """
    if len(phase) < 20 or len(baseline) < 20:
        return None
    rng = np.random.default_rng(seed)
    a, b = np.asarray(phase, dtype=float), np.asarray(baseline, dtype=float)
    ra = np.percentile(rng.choice(a, (resamples, a.size)), 99, axis=1)
    rb = np.percentile(rng.choice(b, (resamples, b.size)), 99, axis=1)
    lo, hi = np.percentile(ra / rb, [5, 95])
    return [round(float(lo), 3), round(float(hi), 3)]


def impact_summary(decisions: list[dict]) -> dict:
    """What the governor's impact guard measured and cost while the job trained: the impact it judged on
    (latency quantile with the job over without it) while the job ran, and the seconds it spent
    measuring (``MEASURING``) or held for impact (``IMPACT``, paused)."""
    training = [d for d in decisions if d.get("phase", "training") == "training"]
    seconds = {"MEASURING": 0.0, "IMPACT": 0.0}
    for d, nxt in zip(training, training[1:]):
        if d["level"] == "PAUSE" and d["reason"] in seconds:
            seconds[d["reason"]] += nxt["t"] - d["t"]
    judged = [d["impact"] for d in training if d.get("impact") is not None and d["level"] != "PAUSE"]
    return {"readings": len(judged), "median": float(np.median(judged)) if judged else None,
            "max": max(judged) if judged else None, "measuring_s": seconds["MEASURING"], "held_s": seconds["IMPACT"]}


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def _reads(read: dict) -> str:
    return f"median {_s(read['median_s'])}, p95 {_s(read['p95_s'])}" if read.get("count") else "n/a"


def _report(summary: dict, table: list[dict], slo: float, plot: Path, tracking_uri: str, impact: dict) -> None:
    r = summary["reaction"]
    v = summary["validation"]
    c = summary.get("compute", {})
    print(f"\n  what users felt (client p99 from intended send time) and what the governor saw (SLO p99 {slo:g} ms):\n")
    print(f"  {'phase':<14} {'seconds':>7} {'requests':>8} {'client p50':>10} {'client p99':>10} "
          f"{'baseline, same hours':>20} {'ratio':>6} {'90% interval':>12} {'governor p99':>12}")
    for row in table:
        ratio = "-" if row["client_p99_vs_baseline"] is None else f"{row['client_p99_vs_baseline']:.2f}x"
        ci = "-" if not row.get("ratio_90ci") or row["phase"] == "baseline" else \
            "{:.2f}-{:.2f}x".format(*row["ratio_90ci"])
        name = ("  " if row.get("part_of") else "") + row["phase"]
        print(f"  {name:<14} {row['seconds']:>7.1f} {row['requests']:>8} {_ms(row['client_p50_ms']):>10} "
              f"{_ms(row['client_p99_ms']):>10} {_ms(row['baseline_same_hours_p99_ms']):>20} {ratio:>6} {ci:>12} "
              f"{_ms(row['governor_p99_ms']):>12}")
    print("  (90% interval: where the ratio could fall by chance alone, a bootstrap of both phases' requests)")
    rows = [
        ("rows consumed / total", f"{summary['rows_consumed']} / {summary['rows_total']}"),
        ("rows duplicated", summary["rows_duplicated"]),
        ("pauses / resumes", f"{summary['pauses']} / {summary['resumes']}"),
        ("reaction (pause decided -> released)", f"median {_s(r['median_s'])}, p95 {_s(r['p95_s'])}" if r["count"] else "n/a"),
        ("  before it, the read that showed the loss", _reads(summary.get("read") or {})),
        ("checkpoints", summary["checkpoints"]),
        ("measured impact (p90 with / without the job)",
         f"median {impact['median']:.2f}x, max {impact['max']:.2f}x over {impact['readings']} readings while running; "
         f"{impact['measuring_s']:.0f} s measuring, {impact['held_s']:.0f} s held for impact"
         if impact["readings"] else f"not measured ({impact['measuring_s']:.0f} s measuring)"),
        ("job's work after training held for headroom", f"{summary.get('held', {}).get('seconds', 0):.1f} s"),
        ("holdout " + str(v.get("metric")), f"candidate {_f(v.get('candidate'))} vs champion {_f(v.get('champion'))}"),
        ("registered", f"v{summary['registered_version']} alias={summary['registered_alias']}"),
        ("checklist / gate", f"{'passed' if summary.get('checklist', {}).get('passed') else 'failed'} / "
                             f"{'passed' if v.get('passed') else 'failed'}"),
        ("compute", f"{c.get('cpu_s', 0):.1f} CPU-s (driver {c.get('driver_cpu_s', 0):.1f}, office "
                    f"{c.get('office_cpu_s', 0):.1f}, workers {c.get('worker_cpu_s', 0):.1f}) = {c.get('cost', 0):.4f} "
                    f"{c.get('currency', '')}"),
        ("driver / workers CPU", _ratio(c.get("driver_cpu_s"), c.get("worker_cpu_s"))),
        ("office / workers CPU", _ratio(c.get("office_cpu_s"), c.get("worker_cpu_s"))),
        ("duration", f"{summary['duration_s']:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    print(f"\n  timeline plot: {plot}")
    print(f"  post-mortem: {plot.parent / 'postmortem' / 'postmortem.md'} (on the MLflow run too: "
          f".venv/bin/headroom report {summary['mlflow_run_id']} --tracking-uri {tracking_uri})")
    print(f"  MLflow run {summary['mlflow_run_id']}: open the UI with\n"
          f"    .venv/bin/mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")
    if summary["pauses"] < 1:
        print("\n  note: the governor never had to pause this time (the host was quieter than the trace needed)", flush=True)


def _s(v):
    return "n/a" if v is None else f"{v:.2f} s"


def _ms(v):
    return "n/a" if v is None else f"{v:.1f} ms"


def _f(v):
    return "n/a" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    sys.exit(main())
