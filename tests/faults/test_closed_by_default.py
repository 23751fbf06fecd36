"""Closed by default: the demo stack (a private local Ray cluster, Ray Serve, the governor and Ray's
metrics agent) listens on loopback only, as psutil sees it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.support import free_port
from tests.support.sockets import exposed_listeners, listeners

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Ray 2.60 binds every Serve replica's inter-deployment gRPC server to "[::]:0", hard-coded; the demo's
# deployments redirect it to loopback (runtime.loopback.serve_replica_on_loopback). The replica must be
# among the listeners, or this test would pass without checking that port at all.
SERVE_REPLICA = "ray::ServeReplica"


def test_demo_stack_listens_on_loopback_only(capsys):
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    for var in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(var, None)  # the runtime itself must close the doors (loopback, token auth), not the test
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.demo_stack", str(free_port())], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), f"demo stack did not start: {line!r}"
        time.sleep(2.0)  # the dashboard agent and metrics exporter open their ports a moment after start
        seen = listeners(proc.pid)
        exposed = exposed_listeners(proc.pid)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    names = {name for _, _, _, name in seen}
    assert len(seen) >= 6 and any("gcs_server" in n for n in names) and any("raylet" in n for n in names), seen
    replica = [row for row in seen if row[3].startswith(SERVE_REPLICA)]
    assert replica, f"no Serve replica among the listeners: {seen}"
    assert exposed == [], f"listening beyond loopback: {exposed}"
    assert line.split()[-1] == "auth=token"  # and the private cluster asks callers for its token
    with capsys.disabled():
        print(f"\nFAULT closed-by-default: listeners={len(seen)} on_loopback={len(seen) - len(exposed)} "
              f"exposed={len(exposed)} serve_replica={[(ip, port) for ip, port, *_ in replica]}")

