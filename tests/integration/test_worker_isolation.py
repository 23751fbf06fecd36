"""A trainer worker, started by Ray like any other, lowers its priority and pins itself to the CPUs the
spec keeps for training before it loads its heavy libraries."""

from __future__ import annotations

import os

import pytest
import ray

from runtime.control.governor import get_or_create_governor
from runtime.loopback import SIDECAR_NICE, metrics_agents
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


def _thread_nices(pid: int) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux: nice is per thread")
def test_the_governor_yields_to_serving_and_the_metrics_agent_is_found_by_session(ray_session, ray_head):
    """Every thread of the governor's process runs after serving (SIDECAR_NICE); the embedded stack lowers
    the node's metrics agent the same way, found as the ``ray::DashboardAgent`` child of this session's
    raylet (not the raylet, whose command line names the agent's script too)."""
    governor = get_or_create_governor()
    pid = ray.get(governor.__ray_call__.remote(lambda self: os.getpid()), timeout=120)
    assert min(_thread_nices(pid)) >= SIDECAR_NICE
    agents = metrics_agents(ray_head.temp_dir)
    assert len(agents) == 1
    import psutil

    agent = psutil.Process(agents[0])
    assert agent.cmdline()[0].startswith("ray::DashboardAgent") and agent.parent().name() == "raylet"
    assert metrics_agents("/no/such/session") == []
