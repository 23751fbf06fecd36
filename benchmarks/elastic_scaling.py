"""Rows/s of a governed PyTorch job at 1 and at 2 data-parallel workers, measured side by side.

Each repetition runs the same job (a small MLP, ``examples.torch_models:make_mlp``, on generated
tabular slices) under the governor on a private local Ray cluster with a two-slot training pool,
once with ``budget.max_workers: 1`` and once with ``2``, interleaved (1 2 1 2 ...) because this
host's speed drifts within minutes. The serving side is a stand-in that always reports a 1 ms p99,
so the governor grows the job to its full size; ingestion is not rate-limited. Throughput is
measured over the second half of the rows, when every worker is up (see :func:`second_half_rate`).

Prints a table and the ratio of the medians (2 workers / 1 worker); writes JSON to ``--out``.
Nothing here is asserted: on a shared 2-core machine the figure is what it is.

    python -m benchmarks.elastic_scaling --reps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.elastic_scaling", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2, help="repetitions of each worker count (default 2)")
    p.add_argument("--rows", type=int, default=240_000, help="rows per job (default 240,000)")
    p.add_argument("--out", default="bench-out/elastic_scaling.json", help="where to write the JSON figures")
    return p.parse_args(argv)


class QuietServing:
    """A /metrics endpoint whose latency histogram always shows a fresh 1 ms observation (loopback only)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Histogram, start_http_server

        self.registry = CollectorRegistry()
        self.hist = Histogram("serving_latency_seconds", "stand-in serving latency", registry=self.registry,
                              buckets=(0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0))
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        self._stop = threading.Event()
        threading.Thread(target=self._observe, daemon=True).start()

    def _observe(self) -> None:
        while not self._stop.wait(0.01):
            self.hist.observe(0.0008)

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()


def job_spec(workdir: Path, data: Path, holdout: Path, workers: int, rep: int, metrics_url: str):
    from runtime.spec.job import spec_from_dict

    name = f"bench-scaling-w{workers}-r{rep}"
    return spec_from_dict({
        "name": name,
        "model": {"framework": "torch", "estimator": "examples.torch_models:make_mlp",
                  "params": {"in_features": 8, "hidden": 64, "lr": 0.003}, "warm_start": "none"},
        "data": {"path": str(data), "target": "y", "id_column": "row_id", "batch_rows": 256},
        "validation": {"holdout": str(holdout), "metric": "r2"},
        "serving": {"url": metrics_url, "slo_p99_ms": 100, "window_s": 0.5},
        "budget": {"max_workers": workers, "max_rows_per_s": 1e7, "cooldown_s": 0.0, "holddown_s": 0.2,
                   "poll_interval_s": 0.25, "worker_nice": 0},
        "checkpoint": {"storage": str(workdir / "ckpt" / name), "every_steps": 20},
        "tracking": {"uri": f"sqlite:///{workdir}/mlflow.db", "experiment": "bench-scaling"},
    })


def second_half_rate(snaps: list[dict], total: int) -> dict:
    """Rows/s over the second half of the rows: by then every worker has started (a new worker's
    process start and imports take seconds and hold up the round it joins), so this is the job's
    steady training rate, round merges, heartbeats and checkpoints included."""
    start = next((s for s in snaps if s["rows_consumed"] >= total / 2), None)
    end = next((s for s in snaps if s["rows_consumed"] >= total), None)
    if start is None or end is None or end["seen"] <= start["seen"]:
        return {"rows_per_s": None, "rows": 0, "seconds": 0.0, "workers_at_half": None}
    rows, seconds = end["rows_consumed"] - start["rows_consumed"], end["seen"] - start["seen"]
    return {"rows_per_s": rows / seconds, "rows": rows, "seconds": round(seconds, 2), "workers_at_half": start["active"]}


def run_once(workdir: Path, data: Path, holdout: Path, workers: int, rep: int, metrics_url: str) -> dict:
    from runtime.driver.job import run_job

    snaps: list[dict] = []
    spec = job_spec(workdir, data, holdout, workers, rep, metrics_url)
    summary = run_job(spec, on_status=lambda s: snaps.append(dict(s, seen=time.time())))
    return {"workers": workers, "rep": rep, **second_half_rate(snaps, summary["rows_total"]), "duration_s": summary["duration_s"],
            "rows_duplicated": summary["rows_duplicated"], "rows_consumed": summary["rows_consumed"],
            "rows_total": summary["rows_total"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from runtime.loopback import start_private_cluster
    from runtime.training.datagen import write_regression_slices

    start_private_cluster(num_cpus=2, resources={"training_pool": 2})
    serving = QuietServing()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="hr-scaling-") as tmp:
            workdir = Path(tmp)
            data, holdout = write_regression_slices(workdir / "data", slices=8, rows_per_slice=args.rows // 8)
            for rep in range(args.reps):
                for workers in (1, 2):
                    result = run_once(workdir, data, holdout, workers, rep, serving.url)
                    results.append(result)
                    rate = result["rows_per_s"]
                    print(f"rep {rep} workers {workers}: {'-' if rate is None else f'{rate:,.0f}'} rows/s over the second half "
                          f"({result['seconds']} s, {result['workers_at_half']} active at half); job {result['duration_s']} s; "
                          f"{result['rows_consumed']:,}/{result['rows_total']:,} rows, {result['rows_duplicated']} duplicated",
                          flush=True)
    finally:
        serving.close()
        ray.shutdown()
    medians = {w: statistics.median(r["rows_per_s"] for r in results if r["workers"] == w and r["rows_per_s"])
               for w in (1, 2)}
    ratio = medians[2] / medians[1]
    print(f"\nmedian rows/s: 1 worker {medians[1]:,.0f}, 2 workers {medians[2]:,.0f}; ratio 2/1 = {ratio:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "median_rows_per_s": medians, "ratio_2_over_1": ratio}, indent=1))
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
