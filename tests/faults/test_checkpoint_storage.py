"""Checkpoint storage fills up, then goes read-only, under a running job: each time the job stops with
one CheckpointError line (what, where, fix), the newest checkpoint still verifies and no temporary file
is left; once storage is healthy, a rerun resumes from it and completes with every row consumed once.

The storage is a real filesystem: a small tmpfs mounted for the test (needs root or CAP_SYS_ADMIN; the
test is skipped without), filled with a real file until ENOSPC, and remounted read-only (EROFS) —
chmod would not do, since root writes through permission bits.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from runtime.training.checkpoint import CheckpointStore
from runtime.errors import CheckpointError
from tests.faults.harness import JobThread, assert_exactly_once, fault_line, make_spec
from tests.support import ServingProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "ckpt-fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root or CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path) -> None:
    with open(path / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:  # ENOSPC: the disk is full now
            pass


def _remount(mnt, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def _run_until_error(spec, break_storage) -> tuple[CheckpointError, float]:
    job = JobThread(spec)
    job.start()
    start_rows = job.wait_for(lambda s: s["active"] > 0, timeout_s=120)["rows_consumed"]
    job.wait_for(lambda s: s["rows_consumed"] > start_rows + 600, timeout_s=120)  # a few checkpoints on disk
    break_storage()
    broken_at = time.time()
    job.join(120)
    assert isinstance(job.error, CheckpointError), f"expected a CheckpointError, got {job.error!r}"
    return job.error, time.time() - broken_at


@pytest.mark.slow
def test_storage_full_then_read_only_stops_cleanly_and_resumes(ray_session, small_fs, tmp_path, capsys):
    with ServingProcess(delay_s=0.002, rps=40) as server:
        spec = make_spec(tmp_path, "fault-storage", server.metrics_url, rows_per_s=600, slices=4, rows=2000, every_steps=3)
        spec = spec.model_copy(update={"checkpoint": spec.checkpoint.model_copy(update={"storage": str(small_fs)})})
        store_dir = small_fs / spec.name

        full, full_s = _run_until_error(spec, lambda: _fill(small_fs))
        assert "No space left" in str(full) and "checkpoint" in str(full) and "fix:" in str(full)
        assert "\n" not in str(full)
        intact_full = CheckpointStore(str(small_fs), spec.name).latest()
        os.remove(small_fs / "filler")

        ro, ro_s = _run_until_error(spec, lambda: _remount(small_fs, "ro"))
        assert "Read-only file system" in str(ro) and "fix:" in str(ro)
        intact_ro = CheckpointStore(str(small_fs), spec.name).latest()
        _remount(small_fs, "rw")

        leftovers = [n for n in os.listdir(store_dir) if n.startswith(".tmp-")]
        rerun = JobThread(spec)
        rerun.start()
        summary = rerun.finish()
    assert intact_full is not None and intact_ro is not None and intact_ro.step >= intact_full.step
    assert leftovers == []  # a failed write leaves no temporary file behind
    assert summary["warm_start"] == f"checkpoint:step-{intact_ro.step}"
    fault_line(capsys, "checkpoint-storage-full-then-read-only", summary, stop_after_full_s=full_s,
               stop_after_ro_s=ro_s)
    assert_exactly_once(summary)
