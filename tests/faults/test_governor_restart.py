"""The governor hangs, then dies: workers pause on their own within ``budget.governor_silence_s``;
Ray restarts the governor, which recovers its leases and directives from the state it saved in the
GCS (no re-registration, same placement groups); the job resumes and every row is consumed once."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from runtime.control.governor import find_governor
from tests.faults.harness import JobThread, assert_exactly_once, fault_line, first_snap_after, make_spec
from tests.support import ServingProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]
SILENCE_S = 2.0


def _governor_pid(dashboard_url: str) -> int:
    from ray.util.state import list_actors

    alive = list_actors(address=dashboard_url, filters=[("class_name", "=", "Governor"), ("state", "=", "ALIVE")])
    assert len(alive) == 1, alive
    return alive[0].pid


def _live_workers(dashboard_url: str) -> list[str]:
    from ray.util.state import list_actors

    alive = list_actors(address=dashboard_url, filters=[("class_name", "=", "TrainerWorker"), ("state", "=", "ALIVE")])
    return [a.actor_id for a in alive]


def _train_stops_s(dashboard_url: str, actor_ids: list[str], frozen_at: float, killed_at: float) -> list[float]:
    """When each train task that ran while the governor was hung (``frozen_at`` to ``killed_at``)
    stopped, from Ray's own task events (asked per worker: the session's cluster holds more train
    tasks than one state query returns)."""
    from ray.util.state import list_tasks

    stops = []
    for actor_id in actor_ids:
        tasks = list_tasks(address=dashboard_url, filters=[("actor_id", "=", actor_id)], detail=True, limit=10_000)
        stops += [t.end_time_ms / 1000 - frozen_at for t in tasks
                  if t.func_or_class_name == "TrainerWorker.train" and t.start_time_ms and t.end_time_ms
                  and t.start_time_ms / 1000 < killed_at and t.end_time_ms / 1000 > frozen_at]
    return stops


def _ready_groups(job: str, timeout_s: float = 60.0) -> dict[int, str]:
    """The lease's running groups, as soon as it has one: a moment after the resume the governor may
    hold the slot draining or parked (a pause on a busy host), which the view does not list as ready."""
    deadline = time.time() + timeout_s
    while True:
        ready = (ray.get(find_governor().lease.remote(job)) or {}).get("ready", {})
        if ready or time.time() > deadline:
            return {slot: pg.id.hex() for slot, pg in ready.items()}
        time.sleep(0.1)


def test_governor_hang_then_kill_workers_pause_governor_recovers_job_resumes(ray_session, tmp_path, capsys):
    # Shards of 4,000 rows (~6 s each at 700 rows/s over two workers): the hang falls inside a round,
    # not in the short gap between two, when no worker trains and nothing could be shown.
    raw_spec = make_spec(tmp_path, "fault-governor", "http://placeholder/metrics", rows_per_s=700, slices=6, rows=2000,
                         every_steps=40)
    with ServingProcess(delay_s=0.002, rps=40) as server:
        spec = raw_spec.model_copy(update={
            "serving": raw_spec.serving.model_copy(update={"url": server.metrics_url}),
            "budget": raw_spec.budget.model_copy(update={"governor_silence_s": SILENCE_S})})
        job = JobThread(spec)
        job.start()
        job.wait_for(lambda s: s["active"] > 0 and s["rows_consumed"] > 1500, timeout_s=120)
        groups_before = _ready_groups(spec.name)
        pid = _governor_pid(ray_session.dashboard_url)
        workers = _live_workers(ray_session.dashboard_url)

        os.kill(pid, signal.SIGSTOP)  # hung: every call to it times out
        frozen_at = time.time()
        rows_at_freeze = job.snaps[-1]["rows_consumed"]
        time.sleep(SILENCE_S + 2.5)
        os.kill(pid, signal.SIGKILL)  # and dead: Ray restarts it (max_restarts=-1)
        killed_at = time.time()

        back = first_snap_after(job, killed_at, rows_at_freeze)
        status = ray.get(find_governor().status.remote())
        groups_after = _ready_groups(spec.name)
        summary = job.finish(timeout_s=240)

    stops = _train_stops_s(ray_session.dashboard_url, workers, frozen_at, killed_at)
    assert stops, "no worker trained while the governor was hung"
    assert max(stops) < killed_at - frozen_at  # every worker paused itself while the governor was only hung
    assert _governor_pid(ray_session.dashboard_url) != pid
    assert spec.name in status["recovered"]  # from saved state, before any driver re-registered it
    assert groups_before and set(groups_before.values()) & set(groups_after.values())  # same lease, not a new one
    fault_line(capsys, "governor-hang-kill", summary, workers_paused_s=max(stops), bound_s=SILENCE_S,
               recover_s=back["seen"] - killed_at,
               groups_kept=len(set(groups_before.values()) & set(groups_after.values())))
    assert_exactly_once(summary)
