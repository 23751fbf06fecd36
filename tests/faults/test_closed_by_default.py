"""Closed by default: the demo stack (a private local Ray cluster, Ray Serve, the governor and Ray's
metrics agent) listens on loopback only for its whole life, as psutil sees it, and its cluster refuses
a caller without its token; the session's `ray start` head refuses a `ray job submit` without it.

The listeners are sampled from the moment the stack's process starts until it has exited (not once:
ports that open late or briefly count too), and every port the node reports (raylet, object manager,
metrics export, runtime-env agent, dashboard agent) must be among them, or the test would pass
without ever seeing that port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.conftest import RAY, ROOT
from tests.support import free_port
from tests.support.sockets import listeners

from runtime.loopback import is_loopback

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Ray 2.60 binds every Serve replica's inter-deployment gRPC server to "[::]:0", hard-coded; the demo's
# deployments redirect it to loopback (runtime.loopback.serve_replica_on_loopback). The replica must be
# among the listeners, or this test would pass without checking that port at all.
SERVE_REPLICA = "ray::ServeReplica"
NODE_PORTS = ("NodeManagerPort", "ObjectManagerPort", "MetricsExportPort", "RuntimeEnvAgentPort", "DashboardAgentListenPort")


class ListenerSampler(threading.Thread):
    """Every listener of a process tree, sampled every ``interval_s`` until :meth:`stop`."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.seen: set[tuple[str, int, str]] = set()  # (ip, port, process name)
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rows = listeners(self.pid)
            except psutil.NoSuchProcess:
                break  # the stack exited
            self.seen.update((ip, port, name) for ip, port, _, name in rows)
            self.samples += 1
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def _without_token(env: dict) -> dict:
    env = dict(env)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(var, None)
    return env


CONNECT = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print('connected', ray.cluster_resources().get('CPU'))"


def test_demo_stack_listens_on_loopback_only_and_refuses_callers_without_its_token(tmp_path, capsys):
    env = _without_token(os.environ)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the runtime itself must close the doors, not the test
    token_file = tmp_path / "token"
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.demo_stack", str(free_port()), str(token_file)],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    sampler = ListenerSampler(proc.pid)
    sampler.start()  # from the first moment: before Ray has opened anything
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), f"demo stack did not start: {line!r}"
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        ports = json.loads(fields["ports"])
        # Without the token: the GCS turns the driver away. With it (the control): the same call connects.
        refused = subprocess.run([sys.executable, "-c", CONNECT, fields["gcs"]], env=_without_token(os.environ),
                                 capture_output=True, text=True, timeout=120, cwd=tmp_path)
        with_token = dict(_without_token(os.environ), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token_file.read_text())
        allowed = subprocess.run([sys.executable, "-c", CONNECT, fields["gcs"]], env=with_token,
                                 capture_output=True, text=True, timeout=120, cwd=tmp_path)
        time.sleep(1.0)  # a last look with everything up
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        sampler.stop()  # the tree is gone: the sampler saw its whole life

    seen = sorted(sampler.seen)
    exposed = [row for row in seen if not is_loopback(row[0])]
    names = {name for _, _, name in seen}
    assert sampler.samples >= 10 and any("gcs_server" in n for n in names) and any("raylet" in n for n in names), seen
    assert [row for row in seen if row[2].startswith(SERVE_REPLICA)], f"no Serve replica among the listeners: {seen}"
    listened = {port for _, port, _ in seen}
    # Every port the node reports must have been seen (and so checked); -1 is Ray's "not listening" (the
    # dashboard agent's HTTP port, with no dashboard). The four core ones must be there.
    missing = {k: v for k, v in ports.items() if k in NODE_PORTS and v and v > 0 and v not in listened}
    core = ("NodeManagerPort", "ObjectManagerPort", "MetricsExportPort", "RuntimeEnvAgentPort")
    assert not missing and all((ports.get(k) or 0) > 0 for k in core), (ports, seen)
    assert exposed == [], f"listening beyond loopback at some point of the stack's life: {exposed}"
    # The refusal itself first (a driver without the token turned away), then the control and the mode.
    assert refused.returncode != 0 and "auth" in (refused.stderr + refused.stdout).lower(), refused.stdout[-2000:]
    assert allowed.returncode == 0 and "connected" in allowed.stdout, allowed.stderr[-2000:]
    assert fields["auth"] == "token"
    with capsys.disabled():
        print(f"\nFAULT closed-by-default: listeners={len(seen)} on_loopback={len(seen) - len(exposed)} "
              f"exposed={len(exposed)} samples={sampler.samples} node_ports={ports} gcs_without_token=refused")


def test_ray_job_submit_without_the_token_is_refused(ray_head, tmp_path):
    """The `ray start` head (as cluster.yaml runs it) with token auth: the Jobs API refuses an anonymous
    submission; the same submission with the token runs (the control)."""
    submit = [str(RAY), "job", "submit", "--address", ray_head.dashboard_url, "--", "python", "-c", "print('ran')"]

    def run(env: dict) -> subprocess.CompletedProcess:
        for _ in range(12):  # the head's job agent can be briefly unavailable (HTTP 500 "No available agent")
            done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
            if "No available agent" not in done.stderr + done.stdout:
                return done
            time.sleep(5)
        return done

    refused = run(_without_token(os.environ))
    allowed = run(dict(os.environ))
    assert refused.returncode != 0, refused.stdout[-2000:]
    said = (refused.stderr + refused.stdout).lower()
    assert "auth" in said or "401" in said or "403" in said or "unauthorized" in said, said[-2000:]
    assert "ran" not in refused.stdout
    assert allowed.returncode == 0 and "ran" in allowed.stdout, allowed.stderr[-2000:]
