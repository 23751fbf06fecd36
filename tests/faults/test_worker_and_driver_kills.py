"""Processes killed at the worst moment: a trainer worker SIGKILLed mid-step (its shard goes back to
pending, a fresh worker takes the slot), and the job's driver — the process that writes checkpoints —
SIGKILLed mid-run, its newest checkpoint then torn as a non-atomic store would leave it: the rerun
resumes from the newest complete checkpoint; and the driver SIGKILLed between a checkpoint's write and its
rename (the file whole and fsynced under its temporary name): the previous checkpoint stays the newest, the
rerun resumes from it and removes the orphaned temporary file. Nothing lost, nothing repeated, in all.

The kill lands between write and rename because the driver runs with ``os.replace`` wrapped (in the test's
own launcher, not in the library): at its Nth checkpoint rename it announces the temporary file and sleeps,
and the test SIGKILLs it there. The process, the file system and the kill are real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from runtime.training.checkpoint import CheckpointStore, decode
from tests.conftest import ROOT
from tests.faults.harness import JobThread, assert_exactly_once, fault_line, first_snap_after, make_spec
from tests.support import ServingProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def test_worker_sigkill_mid_step(ray_session, tmp_path, capsys):
    from ray.util.state import list_actors

    with ServingProcess(delay_s=0.002, rps=40) as server:
        job = JobThread(make_spec(tmp_path, "fault-worker-kill", server.metrics_url, rows_per_s=800, slices=4,
                                  rows=2000, every_steps=8))
        job.start()
        job.wait_for(lambda s: s["active"] > 0 and s["rows_consumed"] > 1000, timeout_s=120)
        alive = list_actors(address=ray_session.dashboard_url,
                            filters=[("class_name", "=", "TrainerWorker"), ("state", "=", "ALIVE")])
        assert alive, "no live trainer worker to kill"
        rows_at_kill = job.snaps[-1]["rows_consumed"]
        os.kill(alive[0].pid, signal.SIGKILL)
        killed_at = time.time()
        back = first_snap_after(job, killed_at, rows_at_kill)
        summary = job.finish()
    assert summary["worker_crashes"] >= 1
    fault_line(capsys, "worker-sigkill", summary, recover_s=back["seen"] - killed_at, crashes=summary["worker_crashes"])
    assert_exactly_once(summary)


@pytest.mark.slow
def test_driver_killed_mid_run_and_torn_checkpoint_resumes_from_newest_complete(ray_session, tmp_path, capsys):
    with ServingProcess(delay_s=0.002, rps=40) as server:
        spec, spec_file = _driver_spec(tmp_path, "fault-torn-ckpt", server.metrics_url)
        store = CheckpointStore(spec.checkpoint.storage, spec.name, keep=spec.checkpoint.keep)
        driver = _start_driver(ray_session, ["-m", "jobs.retrain", str(spec_file)])
        try:
            deadline = time.time() + 120
            while len(_checkpoints(store.dir)) < 3 and time.time() < deadline and driver.poll() is None:
                time.sleep(0.05)
            assert len(_checkpoints(store.dir)) >= 3, "the driver wrote no checkpoints"
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait(30)
        names = _checkpoints(store.dir)
        torn, complete = names[0], CheckpointStore(spec.checkpoint.storage, spec.name).latest()
        # A torn write as a store without atomic rename leaves it: the newest file cut mid-payload, plus a
        # temporary file that never got renamed.
        blob = open(torn, "rb").read()
        open(torn, "wb").write(blob[: len(blob) // 2])
        open(os.path.join(store.dir, ".tmp-deadbeef"), "wb").write(blob[: len(blob) // 3])
        newest_valid = CheckpointStore(spec.checkpoint.storage, spec.name).latest()
        assert newest_valid is not None and newest_valid.step < complete.step

        restarted_at = time.time()
        rerun = JobThread(spec)
        rerun.start()
        back = first_snap_after(rerun, restarted_at, len_ledger(newest_valid.ledger))
        summary = rerun.finish()
    assert summary["warm_start"] == f"checkpoint:step-{newest_valid.step}"
    fault_line(capsys, "driver-kill-torn-checkpoint", summary, recover_s=back["seen"] - restarted_at,
               resumed_from_step=newest_valid.step, torn_step=complete.step)
    assert_exactly_once(summary)  # ids add up across both runs: the torn round was trained again, once


# The driver, with its Nth checkpoint rename held: announce the temporary file, then wait to be killed.
_HOLD_RENAME = """
import os, runpy, sys, time
ckpt_dir, marker, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
real_replace, seen = os.replace, []
def held_replace(src, dst, *a, **k):
    if os.path.dirname(str(src)) == ckpt_dir and os.path.basename(str(src)).startswith(".tmp-"):
        seen.append(src)
        if len(seen) == nth:
            open(marker, "w").write(str(src))
            time.sleep(600)
    return real_replace(src, dst, *a, **k)
os.replace = held_replace
sys.argv = ["jobs.retrain", sys.argv[4]]
runpy.run_module("jobs.retrain", run_name="__main__")
"""


@pytest.mark.slow
def test_driver_killed_between_checkpoint_write_and_rename_resumes_from_the_previous_one(ray_session, tmp_path, capsys):
    with ServingProcess(delay_s=0.002, rps=40) as server:
        spec, spec_file = _driver_spec(tmp_path, "fault-kill-at-rename", server.metrics_url)
        ckpt_dir = os.path.join(spec.checkpoint.storage, spec.name)
        marker = tmp_path / "held-at-rename"
        driver = _start_driver(ray_session, ["-c", _HOLD_RENAME, ckpt_dir, str(marker), "3", str(spec_file)])
        try:
            deadline = time.time() + 180
            while not marker.exists() and time.time() < deadline and driver.poll() is None:
                time.sleep(0.05)
            assert marker.exists(), f"the driver never reached its third checkpoint rename (exit {driver.poll()})"
            time.sleep(0.2)  # the marker is written before the sleep; the kill must not race the write itself
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait(30)
        orphan = marker.read_text()
        assert os.path.exists(orphan), "the held temporary file is gone"
        held = decode(open(orphan, "rb").read(), where=orphan)  # whole and valid: only the rename was missing
        names = _checkpoints(ckpt_dir)
        assert len(names) == 2, names  # the two renamed before the kill; the third never got its name
        previous = decode(open(names[0], "rb").read(), where=names[0])
        assert previous.step < held.step

        restarted_at = time.time()
        rerun = JobThread(spec)
        rerun.start()
        back = first_snap_after(rerun, restarted_at, len_ledger(previous.ledger))
        summary = rerun.finish()
        leftovers = [n for n in os.listdir(ckpt_dir) if n.startswith(".tmp-")]
    assert summary["warm_start"] == f"checkpoint:step-{previous.step}"
    assert not leftovers, leftovers  # the orphan was swept by the rerun's store
    fault_line(capsys, "driver-kill-at-rename", summary, recover_s=back["seen"] - restarted_at,
               resumed_from_step=previous.step, held_step=held.step)
    assert_exactly_once(summary)  # the held round was trained again, once


def _driver_spec(tmp_path, name: str, metrics_url: str):
    """A job spec for a driver process of its own, and the YAML file it reads."""
    spec = make_spec(tmp_path, name, metrics_url, rows_per_s=800, slices=4, rows=2000, every_steps=4)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump()))
    return spec, spec_file


def _start_driver(ray_session, args: list[str]) -> subprocess.Popen:
    """``python ARGS`` as the job's driver, in a process of its own on the session's cluster."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=dict(os.environ, RAY_ADDRESS=ray_session.address),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _checkpoints(folder: str) -> list[str]:
    """Checkpoint files in ``folder``, newest (highest step) first, as the store names them."""
    return sorted((os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("ckpt-") and n.endswith(".hrc")),
                  reverse=True)


def len_ledger(ledger: list) -> int:
    return sum(e - s for s, e in ledger)
