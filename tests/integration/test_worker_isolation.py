"""A trainer worker, started by Ray like any other, lowers its priority and pins itself to the CPUs the
spec keeps for training before it loads its heavy libraries."""

from __future__ import annotations

import os

import pytest
import ray

from runtime.training.datagen import write_regression_slices
from runtime.training.worker import TrainerWorker

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_worker_applies_nice_and_cpu_pinning(ray_session, tmp_path):
    data, holdout = write_regression_slices(tmp_path / "data", slices=1, rows_per_slice=100)
    last = max(os.sched_getaffinity(0))
    spec = {"name": "it-isolation", "model": {"estimator": "sklearn.linear_model.SGDRegressor"},
            "data": {"path": str(data), "target": "y"}, "validation": {"holdout": str(holdout)},
            "serving": {"telemetry": "host", "slo_p99_ms": 50},
            "budget": {"worker_nice": 7, "pin_cpus": [last], "cpus_per_worker": 1}}
    worker = TrainerWorker.options(num_cpus=0).remote("it-isolation", 0, spec, None, 3.0)
    try:
        applied = ray.get(worker.isolation_applied.remote(), timeout=120)
        worker_pid = ray.get(worker.pid.remote())
    finally:
        ray.kill(worker)
    assert applied["cpus"] == [last] and applied["affinity"] == [last]
    assert applied["nice"] is not None and applied["nice"] >= 7  # nice adds to the worker's own start value
    assert worker_pid != os.getpid()
