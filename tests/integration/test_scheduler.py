"""``headroom submit --window auto`` on a real `ray start` head: the queued job starts as a Ray job
(in ``ray job list``) when its first window opens, not before; yields at that window's end with rows
left (WINDOW_END: checkpoint, lease back, exit); the scheduler is killed meanwhile and comes back with
its queue; the job resumes from its checkpoint in its second window and finishes; ``headroom queue``
shows both windows, and every row was consumed exactly once across the two Ray jobs.

Times come from the scheduler's record and from Ray's own job table (not from when the test looked)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import ray
import yaml

from runtime.windows.scheduler import NAME, NAMESPACE, get_or_create_scheduler
from tests.integration.test_governed_job import assert_exactly_once, make_spec
from tests.support import LatencyServer, LoadThread

pytestmark = pytest.mark.integration

HEADROOM = str(Path(sys.executable).with_name("headroom"))
RAY = str(Path(sys.executable).with_name("ray"))


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def queue_entry(job: str) -> dict:
    return next(e for e in ray.get(get_or_create_scheduler().status.remote()) if e["job"] == job)


def test_a_job_runs_in_its_windows_as_ray_jobs_yields_at_the_end_and_survives_a_scheduler_kill(ray_session, tmp_path):
    from ray.job_submission import JobSubmissionClient

    name = "it-windowed"
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        # 15 000 rows at <= 300 rows/s: at least 50 s of training, more than the first window holds even
        # with no start-up at all, and little more (the second window trains what the first one's start-up
        # took). The window is 45 s: on a busy host the Ray job's start-up (imports, MLflow, the checklist,
        # a cold worker) took ~25 s of a 30-s window once, so that it trained nothing and left no checkpoint.
        spec = make_spec(tmp_path, name, server.metrics_url, rows_per_s=300, slices=5, rows=3000, every_steps=2)
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec.model_dump()))
        first_opens = time.time() + 10
        first_ends = first_opens + 45
        second_opens = first_ends + 20
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps([{"job": name, "start": iso(first_opens), "end": iso(first_ends)},
                                    {"job": name, "start": iso(second_opens), "end": iso(second_opens + 600)},
                                    {"job": "other", "start": iso(first_opens - 100), "end": iso(first_opens + 100)}]))
        out = subprocess.run([HEADROOM, "submit", "--window", "auto", "--plan", str(plan), str(spec_path),
                              "--address", ray_session.address], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "queued for its window" in out.stdout and "1 later one" in out.stdout

        client = JobSubmissionClient(ray_session.dashboard_url)

        def job_logs() -> str:  # each window's Ray job log (its driver's output): the session's logs go with it
            return "\n".join(f"--- Ray job {r['submission_id']} ({r['status']}):\n{_tail(client, r['submission_id'])}"
                             for r in queue_entry(name)["runs"])

        # The first window: a Ray job, started when the window opened, yielding at its end.
        first = _wait(lambda: (e := queue_entry(name))["runs"] and e["runs"][0]["ray_status"] != "PENDING" and e, 60, job_logs)
        _wait(lambda: (e := queue_entry(name))["state"] == "queued" and e["runs"][0]["status"] and e,
              first_ends - time.time() + 120, job_logs)

        # The scheduler dies between the windows; Ray restarts it and it reloads its queue from the GCS.
        old = ray.get_actor(NAME, namespace=NAMESPACE)
        ray.kill(old, no_restart=False)
        restored = _wait(lambda: _restored(), 60)

        done = _wait(lambda: (e := queue_entry(name))["state"] in ("finished", "failed", "stopped", "unscheduled") and e,
                     second_opens - time.time() + 300, job_logs)
        listing = subprocess.run([HEADROOM, "queue", "--address", ray_session.address, "--json"], capture_output=True,
                                 text=True, timeout=120)
        text = subprocess.run([HEADROOM, "queue", "--address", ray_session.address], capture_output=True, text=True,
                              timeout=120)
        ray_jobs = {j.submission_id: j for j in client.list_jobs()}
        logs = job_logs()
        ray_list = subprocess.run([RAY, "job", "list", "--address", ray_session.dashboard_url], capture_output=True,
                                  text=True, timeout=120)

    assert done["state"] == "finished", (done, logs)
    runs = done["runs"]
    assert [r["status"] for r in runs] == ["window_ended", "completed"], (runs, logs)
    assert name in restored
    # Ray's own record of each job: started inside its window, the first one ended near the window's end.
    for run, (opens, ends) in zip(runs, [(first_opens, first_ends), (second_opens, second_opens + 600)]):
        job = ray_jobs[run["submission_id"]]
        assert job.status.value == "SUCCEEDED" and job.metadata["headroom.job"] == name
        assert run["submitted_s"] >= opens and job.start_time / 1000 >= opens - 0.5  # never before the window opened
    assert runs[0]["rows_consumed"] < done["summary"]["rows_total"], logs  # the first window ended with rows left
    assert ray_jobs[runs[0]["submission_id"]].end_time / 1000 <= first_ends + 60  # yielded at its end, not later
    summary = done["summary"]
    assert summary["warm_start"].startswith("checkpoint:"), logs  # the second window resumed from the first one's checkpoint
    assert_exactly_once(summary)
    # Planned against actual: the planner's past-duration lookup reads this job's two runs as one duration.
    from runtime.windows.plan import JobModel, past_run_durations_s

    (took_s,) = past_run_durations_s(JobModel(name=name, mlflow_experiment=spec.tracking.experiment,
                                               mlflow_tracking_uri=spec.tracking.uri))
    runs_s = [r["ended_s"] - r["submitted_s"] for r in runs]  # the scheduler's view, which includes start-up
    assert 0.5 * sum(runs_s) <= took_s <= sum(runs_s) and took_s > max(runs_s) * 0.6, (took_s, runs_s)
    assert first["runs"][0]["submission_id"] in ray_list.stdout  # visible to `ray job list`
    assert listing.returncode == 0 and json.loads(listing.stdout)[0]["job"] in (name, "other")
    assert text.returncode == 0 and f"{name}: finished" in text.stdout and runs[0]["submission_id"] in text.stdout


def _tail(client, submission_id: str, chars: int = 4000) -> str:
    try:
        return client.get_job_logs(submission_id)[-chars:]
    except Exception as exc:  # noqa: BLE001 -- a message for a failure, never a failure of its own
        return f"(no log: {exc})"


def _restored() -> list[str] | None:
    try:
        return ray.get(get_or_create_scheduler().restored.remote(), timeout=10) or None
    except Exception:
        return None


def _wait(check, timeout_s: float, describe=lambda: "", poll_s: float = 0.5):
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        try:
            last = check()
        except (StopIteration, ray.exceptions.RayActorError):
            last = None
        if last:
            return last
        time.sleep(poll_s)
    raise AssertionError(f"not reached in {timeout_s:.0f} s; queue: {ray.get(get_or_create_scheduler().status.remote())}\n"
                         f"{describe()}")
