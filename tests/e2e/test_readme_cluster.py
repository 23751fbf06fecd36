"""The README's "On your own Ray cluster" lines, exactly as written, in one bash: `ray start`, the demo
model deployed on Ray Serve, example data, and `ray job submit` of a governed job. The job must finish
with a registered model, visible to `ray job list`, its MLflow store and checkpoints in the checkout.

The cluster those lines start uses fixed ports (6379, 8265, 8000, 8080); the test stops it by killing
the processes of that GCS address only (`ray stop` would also stop the test session's own head)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import time

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

BEGIN, END = "<!-- readme-cluster: begin -->", "<!-- readme-cluster: end -->"
GCS_PORT = "6379"


def readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    body = re.search(r"```bash\n(.*?)```", block, re.DOTALL).group(1)
    return [line for line in body.splitlines() if line.strip()]


def stop_cluster() -> list[int]:
    """Kill the processes of the README's cluster (its GCS port), children first."""
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if f"127.0.0.1:{GCS_PORT}" in cmd or f"--gcs_server_port={GCS_PORT}" in cmd:
            mine.append(p)
    victims = []
    for p in mine:
        try:
            victims += p.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    victims += mine
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    return [p.pid for p in victims]


# The ports the README's `ray start` takes by default or by its flags: another listener on one of them
# (another Ray cluster left at its defaults) makes the lines fail for reasons of this machine, not of theirs.
PORTS = {6379: "GCS", 8265: "dashboard and Jobs API", 8000: "Serve", 8080: "metrics", 52365: "dashboard agent",
         10001: "Ray Client server"}


def _taken_ports(wait_s: float) -> dict[int, str]:
    deadline = time.monotonic() + wait_s
    while True:
        listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        taken = {port: what for port, what in PORTS.items() if port in listening}
        if not taken or time.monotonic() >= deadline:
            return taken
        time.sleep(1.0)


def _agent_log_tail() -> str:
    """The dashboard agent's log of the README's cluster: why the Jobs API found "No available agent"."""
    log = pathlib.Path("/tmp/ray/session_latest/logs/dashboard_agent.log")
    return f"\n--- {log} ---\n" + (log.read_text(errors="replace")[-3000:] if log.exists() else "(absent)")


def test_the_readmes_ray_job_submit_lines_train_a_model_on_a_ray_start_cluster(tmp_path):
    taken = _taken_ports(wait_s=60)  # a private cluster of the test before it (same worker) may still be exiting
    assert not taken, f"ports the README's cluster needs are already taken on this machine: {taken}"
    lines = readme_lines()
    assert any(line.startswith("ray job submit") for line in lines) and any("ray start" in line for line in lines)
    example = ROOT / ".headroom" / "example"
    shutil.rmtree(example, ignore_errors=True)  # a fresh start: no checkpoint of an earlier run to resume from
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # as a user's shell: no test session's token
    env["HOME"] = str(tmp_path)  # ray start writes nothing into the real home
    script = "set -euo pipefail\n" + "\n".join(lines) + "\nray job list --address http://127.0.0.1:8265\n"
    started = time.time()
    try:
        run = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        stopped = stop_cluster()
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:] + _agent_log_tail()
    assert stopped, "no process of the README's cluster was found to stop"
    assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-4000:]
    assert "cluster-regressor: completed" in out  # the job's own summary line, from its log
    submission = re.search(r"Job '(raysubmit_\w+)' succeeded", out).group(1)
    assert out.count(submission) >= 2  # and `ray job list` lists it

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{example / 'mlflow.db'}")
    (version,) = client.search_model_versions("name='cluster-regressor'")
    run_info = client.get_run(version.run_id)
    assert run_info.info.status == "FINISHED" and run_info.info.start_time / 1000 >= started - 5
    assert any(p.name.startswith("ckpt-") for p in (example / "checkpoints" / "cluster-regressor").iterdir())
