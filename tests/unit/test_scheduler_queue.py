"""The window scheduler's queue without Ray: a fake Jobs API client records submissions and plays the
Ray job states; the queue is saved to an in-memory store and restored from it, as a restarted
scheduler does from the GCS."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from runtime.cli.jobs import parse_window, queue_text
from runtime.control.governor_state import MemoryStateStore
from runtime.spec.job import absolute_paths
from runtime.windows.scheduler import Queue

SPEC = {"name": "ranker", "data": {"path": "data"}, "validation": {"holdout": "h.parquet"},
        "checkpoint": {"storage": "ckpt"}, "tracking": {"uri": "sqlite:///mlflow.db"}}


class FakeJobs:
    """The three calls the queue makes, with job states the test sets."""

    def __init__(self):
        self.submitted: list[dict] = []
        self.status: dict[str, str] = {}
        self.stopped: list[str] = []

    def submit_job(self, **kw):
        # Ray uploads the working_dir during the call: what it holds then is what the job gets
        workdir = Path(kw["runtime_env"]["working_dir"])
        kw["files"] = {f.name: f.read_text() for f in workdir.iterdir()}
        self.submitted.append(kw)
        self.status[kw["submission_id"]] = "RUNNING"
        return kw["submission_id"]

    def get_job_status(self, sid):
        return SimpleNamespace(value=self.status[sid])

    def get_job_info(self, sid):
        return SimpleNamespace(message="boom")

    def stop_job(self, sid):
        self.stopped.append(sid)
        return True


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(store=None, outcomes=None, t=1000.0):
    jobs, clock, outcomes = FakeJobs(), Clock(t), outcomes if outcomes is not None else {}
    q = Queue(store or MemoryStateStore(), lambda: jobs, outcome=outcomes.get, clock=clock)
    return q, jobs, clock, outcomes


def test_a_job_starts_when_its_window_opens_not_before_and_runs_with_its_window():
    q, jobs, clock, _ = make()
    q.submit(SPEC, [(1100.0, 1200.0)])
    assert not q.tick() and not jobs.submitted  # the window has not opened
    clock.t = 1100.0
    assert q.tick()
    (sub,) = jobs.submitted
    assert "-m jobs.retrain spec.yaml --window 1100.000/1200.000" in sub["entrypoint"]
    assert f"--outcome-key {sub['submission_id']}" in sub["entrypoint"]
    assert sub["metadata"]["headroom.job"] == "ranker"
    assert list(sub["files"]) == ["spec.yaml"] and yaml.safe_load(sub["files"]["spec.yaml"]) == SPEC
    assert not Path(sub["runtime_env"]["working_dir"]).exists()  # uploaded by the submission: not left in /tmp
    assert q.entries["ranker"]["state"] == "running" and q.entries["ranker"]["runs"][0]["submitted_s"] == 1100.0


def test_a_window_end_requeues_for_the_next_window_and_the_last_window_finishes_it():
    q, jobs, clock, outcomes = make()
    q.submit(SPEC, [(1100.0, 1200.0), (2000.0, 2100.0)])
    clock.t = 1100.0
    q.tick()
    first = jobs.submitted[0]["submission_id"]
    clock.t, jobs.status[first] = 1201.0, "SUCCEEDED"
    outcomes[first] = {"status": "window_ended", "rows_consumed": 500}
    q.tick()
    entry = q.entries["ranker"]
    assert entry["state"] == "queued" and entry["runs"][0]["status"] == "window_ended"
    assert q.view("ranker")["next_window"] == [2000.0, 2100.0]
    clock.t = 1500.0
    q.tick()
    assert len(jobs.submitted) == 1  # not before the next window
    clock.t = 2000.0
    q.tick()
    second = jobs.submitted[1]["submission_id"]
    assert second != first and "--window 2000.000/2100.000" in jobs.submitted[1]["entrypoint"]
    jobs.status[second] = "SUCCEEDED"
    outcomes[second] = {"status": "completed", "rows_consumed": 1000}
    q.tick()
    assert entry["state"] == "finished" and entry["summary"]["rows_consumed"] == 1000
    assert [r["status"] for r in entry["runs"]] == ["window_ended", "completed"]


def test_no_window_left_is_unscheduled_and_a_stopped_or_failed_job_says_so():
    q, jobs, clock, outcomes = make()
    q.submit(SPEC, [(1100.0, 1200.0)])
    q.submit(dict(SPEC, name="other"), [(1000.0, 1300.0)])
    clock.t = 1100.0
    q.tick()
    ranker, other = (jobs.submitted[i]["submission_id"] for i in range(2))
    jobs.status[ranker], jobs.status[other] = "SUCCEEDED", "FAILED"
    outcomes[ranker] = {"status": "window_ended", "rows_consumed": 5}
    clock.t = 1250.0
    q.tick()
    assert q.entries["other"]["state"] == "failed" and "FAILED" in q.entries["other"]["error"]
    q.tick()
    assert q.entries["ranker"]["state"] == "unscheduled" and "plan again" in q.entries["ranker"]["error"]
    q.submit(SPEC, [(1300.0, 1400.0)])
    clock.t = 1300.0
    q.tick()
    jobs.status[jobs.submitted[-1]["submission_id"]] = "STOPPED"
    q.tick()
    assert q.entries["ranker"]["state"] == "stopped"


def test_a_job_running_past_its_window_and_the_grace_is_stopped_once():
    from runtime.windows.scheduler import STOP_GRACE_S

    q, jobs, clock, _ = make()
    q.submit(SPEC, [(1100.0, 1200.0)])
    clock.t = 1100.0
    q.tick()
    clock.t = 1200.0 + STOP_GRACE_S - 1
    q.tick()
    assert not jobs.stopped
    clock.t = 1200.0 + STOP_GRACE_S + 1
    q.tick()
    q.tick()
    assert jobs.stopped == [jobs.submitted[0]["submission_id"]]


def test_the_queue_survives_a_restart_from_its_store():
    store = MemoryStateStore()
    q, jobs, clock, outcomes = make(store)
    q.submit(SPEC, [(1100.0, 1200.0), (2000.0, 2100.0)])
    clock.t = 1100.0
    q.tick()
    sid = jobs.submitted[0]["submission_id"]

    again, jobs2, clock2, outcomes2 = make(store, t=1201.0)  # a new scheduler: same store, the Ray job still known
    jobs2.status[sid] = "SUCCEEDED"
    outcomes2[sid] = {"status": "window_ended", "rows_consumed": 7}
    assert again.restored == ["ranker"] and again.entries["ranker"]["state"] == "running"
    again.tick()
    assert again.entries["ranker"]["state"] == "queued"
    clock2.t = 2000.0
    again.tick()
    assert len(jobs2.submitted) == 1 and again.entries["ranker"]["state"] == "running"


def test_a_running_job_cannot_be_submitted_over():
    from runtime.errors import GovernorError

    q, jobs, clock, _ = make()
    q.submit(SPEC, [(1000.0, 1200.0)])
    q.tick()
    with pytest.raises(GovernorError, match="running in its window"):
        q.submit(SPEC, [(3000.0, 3100.0)])


def test_relative_paths_become_absolute_for_a_job_that_runs_elsewhere(tmp_path):
    out = absolute_paths(SPEC, tmp_path)
    assert out["data"]["path"] == str(tmp_path / "data")
    assert out["checkpoint"]["storage"] == str(tmp_path / "ckpt")
    assert out["tracking"]["uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_paths({"data": {"path": "s3://b/x"}}, tmp_path)["data"]["path"] == "s3://b/x"


def test_window_argument_parses_iso_and_epoch_and_refuses_the_rest():
    assert parse_window("2030-01-01T02:00:00+00:00/2030-01-01T04:00:00+00:00") == (1893463200.0, 1893470400.0)
    assert parse_window("100/200.5") == (100.0, 200.5)
    for bad in ("2030-01-01T02:00:00/2030-01-01T04:00:00", "200/100", "1/2/3", "tomorrow"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_window(bad)


def test_queue_text_lists_each_window_used():
    entries = [{"job": "ranker", "state": "queued", "error": None, "next_window": [2000.0, 2100.0],
                "runs": [{"submission_id": "headroom-ranker-1", "window": [1100.0, 1200.0], "ray_status": "SUCCEEDED",
                          "status": "window_ended", "rows_consumed": 500}]}]
    text = queue_text(entries, 1500.0)
    assert "ranker: queued next window 1970-01-01T00:33:20+00:00" in text
    assert "headroom-ranker-1 SUCCEEDED (window_ended), rows 500" in text
