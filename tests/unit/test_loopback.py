"""Closed by default: what runtime.loopback asks of Ray for a private cluster, and what it leaves alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.loopback import (CARDINALITY_ENV, SERVE_BUCKETS_ENV, SINGLE_NODE_ENV, private_cluster_env,
                              serve_replica_on_loopback, yield_to_serving)


def test_a_private_cluster_is_closed_by_default_and_an_operator_choice_is_kept():
    env = private_cluster_env({})
    assert env[SINGLE_NODE_ENV] == "0" and env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 64
    assert private_cluster_env({})["RAY_AUTH_TOKEN"] != env["RAY_AUTH_TOKEN"]  # a fresh token per cluster
    buckets = [float(b) for b in env[SERVE_BUCKETS_ENV].split(",")]
    assert buckets == sorted(buckets) and buckets[0] <= 1 and sum(b <= 200 for b in buckets) >= 15  # fine below 200 ms
    assert env[CARDINALITY_ENV] == "low"  # a cheaper read of the metrics endpoint the governor polls
    chosen = {"RAY_AUTH_MODE": "disabled", SINGLE_NODE_ENV: "1", SERVE_BUCKETS_ENV: "5,50,500", CARDINALITY_ENV: "legacy"}
    assert private_cluster_env(chosen) == {}  # an operator's choices are kept
    assert "RAY_AUTH_TOKEN" not in private_cluster_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"})


def _thread_nices(pid: int) -> list[int]:
    return [os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux: nice is per thread")
def test_yield_to_serving_lowers_every_thread_of_a_process_that_started_them_already():
    """As in a Ray worker, whose gRPC and event-loop threads run before the governor's code does."""
    code = "import threading, time; [threading.Thread(target=time.sleep, args=(60,), daemon=True).start() for _ in range(3)]; print(1, flush=True); time.sleep(60)"
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the child starts at this test process's nice
    assert base <= 17, "this test needs room below nice 19"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()
        assert len(_thread_nices(child.pid)) == 4 and set(_thread_nices(child.pid)) == {base}
        assert yield_to_serving(child.pid, nice=base + 2) == 4
        assert set(_thread_nices(child.pid)) == {base + 2}
        assert yield_to_serving(child.pid, nice=base + 1) == 0  # never raised back: lower is where it stays
        assert set(_thread_nices(child.pid)) == {base + 2}
    finally:
        child.kill()
        child.wait()
    assert yield_to_serving(child.pid) == 0  # a process that is gone: nothing, and no error


def _env_changed_by(imports: str) -> list[str]:
    code = (f"import os; before = dict(os.environ); {imports}; "
            "print(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip())  # noqa: S307 -- our own child's print of a list of names


def test_importing_the_library_changes_nothing_in_the_environment():
    assert _env_changed_by("import runtime; runtime.decide; import runtime.spec, runtime.control.law") == []
    # Modules that import Ray, scikit-learn, MLflow: what those set on their own import (RAY_CLIENT_MODE,
    # KMP_*, MLflow's telemetry session), and nothing more.
    by_libraries = set(_env_changed_by("import ray, sklearn, mlflow"))
    assert set(_env_changed_by("import runtime, runtime.driver.job, runtime.control.governor, runtime.cli.main")) <= by_libraries


@pytest.mark.parametrize("node_ip, expected", [("127.0.0.1", "127.0.0.1:0"), ("::1", "[::1]:0"),
                                               ("10.0.0.5", "[::]:0")])
def test_a_serve_replica_binds_its_grpc_port_where_its_node_is_dialled(monkeypatch, node_ip, expected):
    """Ray 2.60's replica binds "[::]:0"; on a loopback node the wrapper binds the node's address instead,
    and on a routable node (callers on other hosts) it leaves Ray alone."""
    import ray
    from ray.serve._private import replica

    bound = []
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda server, address: bound.append(address) or 4242)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: node_ip)
    redirected = serve_replica_on_loopback()
    assert serve_replica_on_loopback() == redirected  # idempotent: a second call does not wrap twice
    assert replica.add_port_to_grpc_server(object(), "[::]:0") == 4242
    assert bound == [expected] and redirected == (expected != "[::]:0")
    replica.add_port_to_grpc_server(object(), "127.0.0.1:5000")
    assert bound[-1] == "127.0.0.1:5000"  # an explicit address is kept


def test_the_metrics_agent_is_found_though_a_sibling_exits_while_the_raylets_children_are_read(monkeypatch):
    """A busy raylet starts and ends workers all the time: one that exits between the listing and its
    command line (psutil.NoSuchProcess) must not hide the agent beside it (a Ray-tier test saw 0 agents)."""
    import psutil

    from runtime import loopback

    class Child:
        def __init__(self, pid, cmd):
            self.pid, self._cmd = pid, cmd

        def cmdline(self):
            if self._cmd is None:
                raise psutil.NoSuchProcess(self.pid)
            return self._cmd

    class Raylet:
        info = {"cmdline": ["/venv/lib/ray/core/src/ray/raylet/raylet", "--session_dir=/tmp/s1/session_x"]}

        def children(self):
            return [Child(11, None), Child(12, ["ray::DashboardAgent"]), Child(13, ["ray::IDLE"])]

    monkeypatch.setattr(psutil, "process_iter", lambda attrs=None: [Raylet()])
    assert loopback.metrics_agents("/tmp/s1") == [12]
    assert loopback.metrics_agents("/tmp/other") == []
