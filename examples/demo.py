"""The end-to-end demo behind ``make demo``: governed retraining beside a live, trace-loaded service.

1. a private local Ray cluster (node address 127.0.0.1, token auth) with a ``training_pool`` slot;
2. a Ray Serve app serving a CPU-bound model, exporting its own latency histogram;
3. an open-loop load generator replaying the real NASA July 1995 trace from a Monday night, one day per
   ``--seconds-per-day``, scaled so its peak is ~60 % of the service's measured capacity, until the job ends;
4. a governed retraining job (``jobs/demo.yaml``: an MLP updated with ``partial_fit`` on fresh slices),
   which the governor pauses when the service's p99 nears its SLO and resumes when it recovers.

It prints a live status line, then a table and the path of a timeline plot, and how to open MLflow.

    python -m examples.demo [--seconds-per-day 100] [--out demo-out]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "jobs" / "demo.yaml"
TRACE = ROOT / "data" / "nasa-http-1995-07.csv"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.splitlines()[0])
    p.add_argument("--seconds-per-day", type=float, default=100.0, help="replay one trace day in this many seconds")
    p.add_argument("--peak-rps", type=float, default=None, help="load at the trace's peak (default: 60%% of measured capacity)")
    p.add_argument("--port", type=int, default=8000, help="Serve's HTTP port on 127.0.0.1")
    p.add_argument("--out", default="demo-out", help="folder for the summary, decision log and timeline plot")
    p.add_argument("--rows", type=int, default=96_000, help="rows of new training data")
    p.add_argument("--day-start", default="1995-07-03T03:00", help="trace local time the replay starts at (a Monday night)")
    p.add_argument("--workdir", default=str(ROOT / ".headroom" / "demo"), help="folder for the demo's data and checkpoints")
    p.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}", help="MLflow store for the job's run and model")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import runtime.loopback  # noqa: F401  -- before Ray: a loopback-only local cluster
    import ray

    from examples.loadgen import OpenLoopLoad, trace_rate_fn
    from examples.serving import measure_capacity_rps, start_serving, stop_serving
    from runtime.training.datagen import write_regression_slices
    from runtime.windows.history import read_history_csv
    from runtime.driver.job import run_job
    from runtime.cli.jobs import StatusLine
    from runtime.plots import plot_timeline
    from runtime.spec.job import load_spec, spec_from_dict

    out = ROOT / args.out
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)  # each demo run is a fresh "day" of data; the champion persists
    data, holdout = write_regression_slices(work / "data", slices=12, rows_per_slice=args.rows // 12, features=8, seed=int(time.time()) % 1000)

    base = load_spec(SPEC, check_paths=False).model_dump()
    print("[demo] starting a local Ray cluster ...", flush=True)
    ray.init(address="local", num_cpus=4, resources={"training_pool": 1}, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        print("[demo] deploying the serving app on Ray Serve ...", flush=True)
        endpoints = start_serving(http_port=args.port)
        peak = args.peak_rps
        if peak is None:
            capacity = measure_capacity_rps(endpoints.predict_url, clients=4, duration_s=4.0)["rps"]
            peak = 0.6 * capacity
            print(f"[demo] measured capacity {capacity:.0f} req/s -> trace peak at {peak:.0f} req/s (60 %)", flush=True)
        base["data"].update(path=str(data))
        base["validation"].update(holdout=str(holdout))
        base["serving"].update(url=endpoints.metrics_url, capacity_rps=peak / 0.6)
        base["checkpoint"].update(storage=str(work / "checkpoints"))
        base["tracking"].update(uri=args.tracking_uri)
        spec = spec_from_dict(base, source=str(SPEC))

        # Up to a week of trace, stopped when the job ends: without traffic the serving histogram freezes,
        # which the governor must read as "no headroom" (a hung server looks the same), so load must outlast the job.
        rate = trace_rate_fn(read_history_csv(TRACE), day_start_local=args.day_start, days=7,
                             seconds_per_day=args.seconds_per_day, peak_rps=peak)
        load = OpenLoopLoad(endpoints.predict_url, rate, duration_s=rate.duration_s).start()
        print(f"[demo] replaying the NASA trace, one day every {args.seconds_per_day:.0f} s; training {args.rows} rows "
              f"under the governor (SLO p99 {spec.serving.slo_p99_ms:.0f} ms)", flush=True)
        line = StatusLine(sys.stdout, every_s=2.0)
        try:
            summary = run_job(spec, on_status=line, artifacts_dir=str(out))
        finally:
            line.close()
            load.stop()
        if summary["status"] == "checklist_failed":
            failed = [i for i in summary["checklist"]["items"] if not i["passed"]]
            print("[demo] the pre-work checklist stopped the job: " + "; ".join(f"{i['item']}: {i['detail']}" for i in failed))
            stop_serving()
            return 1
        decisions = json.loads((out / "decisions.json").read_text())
        progress = json.loads((out / "progress.json").read_text())
        plot = plot_timeline(decisions, progress, out / "timeline.png", client_latency=load.latency_series(),
                             slo_p99_ms=spec.serving.slo_p99_ms, title="headroom demo: NASA trace replay + governed retraining")
        stop_serving()
    finally:
        ray.shutdown()
    _report(summary, plot, load, args.tracking_uri)
    return 0 if summary["pauses"] >= 1 and summary["resumes"] >= 1 else 1


def _report(summary: dict, plot: Path, load, tracking_uri: str) -> None:
    stats = load.window_stats()
    r = summary["reaction"]
    v = summary["validation"]
    rows = [
        ("rows consumed / total", f"{summary['rows_consumed']} / {summary['rows_total']}"),
        ("rows duplicated", summary["rows_duplicated"]),
        ("pauses / resumes", f"{summary['pauses']} / {summary['resumes']}"),
        ("reaction (pause -> released)", f"median {_s(r['median_s'])}, p95 {_s(r['p95_s'])}" if r["count"] else "n/a"),
        ("checkpoints", summary["checkpoints"]),
        ("serving p50 / p99 (client)", f"{_ms(stats.get('p50_ms'))} / {_ms(stats.get('p99_ms'))}"),
        ("holdout " + str(v.get("metric")), f"candidate {_f(v.get('candidate'))} vs champion {_f(v.get('champion'))}"),
        ("registered", f"v{summary['registered_version']} alias={summary['registered_alias']}"),
        ("checklist / gate", f"{'passed' if summary.get('checklist', {}).get('passed') else 'failed'} / "
                             f"{'passed' if v.get('passed') else 'failed'}"),
        ("compute", f"{summary.get('compute', {}).get('cpu_s', 0):.0f} CPU-s = {summary.get('compute', {}).get('cost', 0):.4f} "
                    f"{summary.get('compute', {}).get('currency', '')}"),
        ("duration", f"{summary['duration_s']:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    print(f"\n  timeline plot: {plot}")
    print(f"  post-mortem: {plot.parent / 'postmortem' / 'postmortem.md'} (on the MLflow run too: "
          f".venv/bin/headroom report {summary['mlflow_run_id']} --tracking-uri {tracking_uri})")
    print(f"  MLflow run {summary['mlflow_run_id']}: open the UI with\n"
          f"    .venv/bin/mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")
    if summary["pauses"] < 1 or summary["resumes"] < 1:
        print("\n  note: the governor never had to pause this time (the host was quieter than the trace needed); "
              "rerun, or raise --peak-rps", flush=True)


def _s(v):
    return "n/a" if v is None else f"{v:.2f} s"


def _ms(v):
    return "n/a" if v is None else f"{v:.1f} ms"


def _f(v):
    return "n/a" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    sys.exit(main())
