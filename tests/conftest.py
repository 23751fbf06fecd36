"""Fixtures shared by the integration and end-to-end tiers (unit tests never use them).

One real Ray head per test session (``ray start --head --block``, loopback, its own temp dir and
ports), started on first use and stopped at the end; in-process tests connect to it with
``ray_session``, ``ray job submit`` tests use its dashboard address.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Token authentication with a token of this test session's own, so that neither another cluster on
# the machine nor ~/.ray/auth_token interferes; the head, the drivers and `ray job submit` inherit it.
# Set before anything imports Ray: its token loader reads the environment once.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
# Closed by default: the session head and every Ray process it starts listen on loopback only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
RAY = Path(sys.executable).with_name("ray")

from runtime.loopback import RAY_SYSTEM_CONFIG, SERVE_BUCKETS_ENV, SERVE_LATENCY_BUCKETS_MS  # noqa: E402
from tests.support import free_ports  # noqa: E402  -- after the environment above: nothing before it may load Ray


# Files whose tests start Ray clusters of their own, as a user would: under pytest-xdist (`make test`)
# they share one worker, so no two run at once; a private cluster's dashboard agent takes Ray's
# default port (52365) when it is free, the session heads take ports of their own. The README's
# `ray start` lines and the shortened benchmark run after the parallel tiers, alone (Makefile): the
# first needs Ray's default ports and a dashboard agent that comes up, the second headroom to train.
# (The README's and the benchmark's files stay listed: a run of the whole suite by hand keeps them apart too.)
OWN_CLUSTERS = {"tests/e2e/test_demo_postmortem.py", "tests/e2e/test_benchmark_command.py",
                "tests/e2e/test_cli_and_job_submit.py", "tests/faults/test_closed_by_default.py",
                "tests/faults/test_node_removal.py", "tests/e2e/test_readme_cluster.py"}
SHARED_GROUP = "own-clusters"  # their group


# The longest groups of the Ray tiers, longest first (`--durations=0` of a plain run on two workers, and
# CI's with the slow fault tier): `make test` hands groups out in collection order
# (`--no-loadscope-reorder`), so these start first and the short files fill the workers' ends. Left to
# xdist's own order (the groups with the most tests first), the two 2-minute single-test files started
# last and held the run open while the other workers idled. "First" is approximate: xdist hands a worker
# its next group as soon as the one it holds has two tests or fewer left.
LONGEST_FIRST = (SHARED_GROUP,  # ~230 s; ~330 s with node removal (slow tier)
                 "tests/faults/test_mlflow_outage.py",  # ~190 s, slow tier
                 "tests/integration/test_elastic_jobs.py",  # ~150 s
                 "tests/integration/test_governed_job.py",  # ~140 s
                 "tests/integration/test_leases.py",  # ~125 s
                 "tests/integration/test_scheduler.py",  # ~120 s
                 "tests/integration/test_priorities.py",  # ~120 s
                 "tests/integration/test_ingress_telemetry.py")  # ~80 s


@pytest.hookimpl(tryfirst=True)  # before the fixtures' teardown: the job's lease goes back while its pool is up
def pytest_runtest_teardown(item):
    """A job thread its test left running (the test failed before the job finished) is stopped here:
    its lease would hold the pool's slots and starve every later test on this worker (a CI run lost
    its next test to a 20-minute timeout that way). Duck-typed, so that this file imports no Ray."""
    for thread in threading.enumerate():
        stop = getattr(thread, "stop_job", None)
        if stop is not None and thread.is_alive():
            stop()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks to form the groups
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup``: a file's tests stay on one worker (its module fixtures are set up
    once), and the files of :data:`OWN_CLUSTERS` on one worker together; the groups of
    :data:`LONGEST_FIRST` come first, in that order (a stable sort: the rest keep their order)."""
    groups = {}
    for item in items:
        path = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        groups[item.nodeid] = SHARED_GROUP if path in OWN_CLUSTERS else path
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))


def pytest_xdist_node_collection_finished(node, ids):
    """Under ``--dist loadgroup`` every test a worker collected must carry its group (``nodeid@group``),
    or the groups above are silently ignored and private clusters run side by side. That happened:
    this module's hook once ran after xdist's, and pytest 9.2's node ids drop xdist's suffix
    (constraints.txt)."""
    ungrouped = [nodeid for nodeid in ids if "@" not in nodeid]
    if node.config.getoption("dist") == "loadgroup" and ungrouped:
        pytest.exit(f"--dist loadgroup left {len(ungrouped)} tests on {node.gateway.id} without a group "
                    f"(e.g. {ungrouped[0]}): pytest-xdist did not apply the xdist_group marks of tests/conftest.py. "
                    "Install the versions of constraints.txt (make install), or run without -n.", returncode=4)


@dataclass
class RayHead:
    address: str  # GCS address for ray.init
    dashboard_url: str  # for ray job submit
    metrics_url: str  # Ray's metrics agent (Prometheus exposition), where the governor's metrics appear
    temp_dir: str
    process: subprocess.Popen


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited early:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.25)
    raise RuntimeError(f"port {port} not open after {timeout_s}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="hr-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    with _one_head_starting_at_a_time():
        # the ports are chosen under the lock too: a head starting meanwhile could take them
        gcs_port, dash_port, metrics_port, agent_port, client_port = free_ports(5)
        # Ports of its own for the agent and the Ray Client server too: left at their defaults (52365, 10001)
        # they would take those of a cluster a test starts as a user would (tests/e2e/test_readme_cluster.py),
        # whose dashboard agent then never comes up ("No available agent" from the Jobs API).
        log = Path(temp_dir) / "ray-start.log"
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env["PATH"] = f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}"  # as with an activated venv: job entrypoints find its python
        # As the embedded default (runtime/loopback.py): Serve's latency buckets fine enough for a p99, and
        # Ray's metrics endpoint refreshed every ~1 s instead of every 10 s. Ray's workers keep its default
        # niceness here (15): with the embedded default's 0, the windowed-job scheduler test failed 2 runs
        # of 6 (a first window that trained nothing), a cause not yet found.
        env.setdefault(SERVE_BUCKETS_ENV, ",".join(f"{b:g}" for b in SERVE_LATENCY_BUCKETS_MS))
        system_config = json.dumps({k: v for k, v in RAY_SYSTEM_CONFIG.items() if k != "worker_niceness"})
        cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
               "--system-config", system_config,
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port), "--metrics-export-port", str(metrics_port), "--num-cpus", "4",
               "--dashboard-agent-listen-port", str(agent_port), "--ray-client-server-port", str(client_port),
               "--resources", '{"training_pool": 2}', "--temp-dir", temp_dir, "--disable-usage-stats"]
        with log.open("w") as out:
            # A session of its own: at the end, whatever of the head is left can be killed as one group.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            _wait_port(gcs_port, 60, proc, log)
            _wait_port(dash_port, 60, proc, log)
        except BaseException:
            with contextlib.suppress(Exception):  # the start's own error is the one to see
                _stop_head(proc)
            raise
    try:
        yield RayHead(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", f"http://127.0.0.1:{metrics_port}/metrics",
                      temp_dir, proc)
    finally:
        _stop_head(proc)


@contextlib.contextmanager
def _one_head_starting_at_a_time():
    """Under pytest-xdist every worker starts a head of its own: started together on 2 cores, one
    head's GCS once timed out while the others came up. A file lock makes them start one by one
    (~5-10 s each); the tests of a worker whose head is up run meanwhile."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / f"headroom-tests-ray-start-{os.getuid()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stop_head(proc: subprocess.Popen) -> None:
    proc.terminate()  # --block: SIGTERM stops every process this head started, and only those
    with contextlib.suppress(subprocess.TimeoutExpired):  # ~2 s on a quiet host, over 30 s at the end of busy runs
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the head and any process of it still there
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_session(ray_head):
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_head.address, log_to_driver=False)
    yield ray_head
    ray.shutdown()
