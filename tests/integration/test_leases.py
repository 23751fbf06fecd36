"""A job's lease on a real Ray cluster, seen from Ray itself (its placement groups and actors):

- **warm resume**: a paused job's slot is parked, and a resume within ``park_s`` trains on in the same
  placement group with the same worker process (no cold start);
- **park expiry**: a pause that outlasts ``park_s`` removes the group (and so its worker); the resume
  starts cold in a new group;
- **drain timeout**: a worker that never reports back from a drain (SIGSTOPped here) loses its group
  after the drain timeout, not before; the job then resumes in a new group;
- **hung worker**: a worker that stops sending heartbeats while it trains (SIGSTOPped, the directive
  still RUN) loses its group after ``worker_hung_s``, not before, and a fresh worker in a new group
  trains on.

Each job still consumes every row exactly once. Times are asserted only as orderings (removed after
its bound; still there before it), never as figures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import pytest
from ray.util.state import list_actors, list_placement_groups

from runtime.training.datagen import write_regression_slices
from runtime.spec.job import spec_from_dict
from tests.integration.test_governed_job import JobThread, assert_exactly_once, logged_decisions
from tests.support import ServingProcess

pytestmark = pytest.mark.integration

SLO_MS = 400
ROWS, BATCH = 12_000, 100  # the data: 6 slices of 2,000 rows, 100-row batches


def lease_spec(tmp_path, name: str, metrics_url: str, *, park_s: float, silence_s: float = 3.0,
               every_steps: int = 4, hung_s: float = 0.0) -> object:
    data, holdout = write_regression_slices(tmp_path / "data", slices=6, rows_per_slice=ROWS // 6)
    return spec_from_dict({
        "name": name,
        "model": {"estimator": "sklearn.linear_model.SGDRegressor", "params": {"random_state": 0}},
        "data": {"path": str(data), "target": "y", "id_column": "row_id", "batch_rows": BATCH},
        "validation": {"holdout": str(holdout), "metric": "r2"},
        "serving": {"url": metrics_url, "slo_p99_ms": SLO_MS, "window_s": 0.5, "stale_after_s": 3},
        "budget": {"max_workers": 1, "max_rows_per_s": 500, "cooldown_s": 1.0, "holddown_s": 0.5, "park_s": park_s,
                   "governor_silence_s": silence_s, "worker_hung_s": hung_s},
        "checkpoint": {"storage": str(tmp_path / "ckpt"), "every_steps": every_steps},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "leases"},
    })


def group(ray_session, job: str) -> dict | None:
    """Slot 0's placement group as Ray lists it: the newest one of that name (id, state)."""
    groups = list_placement_groups(address=ray_session.dashboard_url, filters=[("name", "=", f"headroom-{job}-0")],
                                   detail=True, raise_on_missing_output=False)
    live = [g for g in groups if g.state != "REMOVED"]
    pick = live or groups
    return None if not pick else {"id": pick[-1].placement_group_id, "state": pick[-1].state}


def group_state(ray_session, pg_id: str) -> str:
    groups = list_placement_groups(address=ray_session.dashboard_url, filters=[("placement_group_id", "=", pg_id)],
                                   detail=True, raise_on_missing_output=False)
    return groups[0].state if groups else "REMOVED"


def worker(ray_session, pg_id: str) -> dict | None:
    """The live TrainerWorker in placement group ``pg_id``: its actor id and pid."""
    alive = list_actors(address=ray_session.dashboard_url, detail=True, raise_on_missing_output=False,
                        filters=[("class_name", "=", "TrainerWorker"), ("state", "=", "ALIVE")])
    mine = [a for a in alive if a.placement_group_id == pg_id]
    return {"id": mine[0].actor_id, "pid": mine[0].pid} if mine else None


def actor_state(ray_session, actor_id: str) -> str:
    found = list_actors(address=ray_session.dashboard_url, filters=[("actor_id", "=", actor_id)],
                        raise_on_missing_output=False)
    return found[0].state if found else "DEAD"


def until(check, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.contextmanager
def stopped(proc: dict):
    """The worker process SIGSTOPped (it answers nothing and sends no heartbeat); yields when. SIGCONT after,
    if it is still there, so that Ray can finish it off."""
    os.kill(proc["pid"], signal.SIGSTOP)
    try:
        yield time.time()
    finally:
        try:
            os.kill(proc["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass


def removed_after(ray_session, pg_id: str, bound_s: float, what: str) -> tuple[str, float]:
    """The group's state halfway through ``bound_s``, and when it was first seen removed (at most 30 s
    past the bound)."""
    time.sleep(bound_s / 2)
    halfway = group_state(ray_session, pg_id)
    until(lambda: group_state(ray_session, pg_id) == "REMOVED", bound_s + 30, what)
    return halfway, time.time()


def training(job: JobThread, ray_session, name: str) -> tuple[dict, dict, dict]:
    """Wait until slot 0 trains; returns (snapshot, group, worker)."""
    snap = job.wait_for(lambda s: s["active"] == 1 and s["rows_consumed"] > 0, timeout_s=180)
    pg = until(lambda: (g := group(ray_session, name)) and g["state"] == "CREATED" and g, 30, "slot 0's group")
    proc = until(lambda: worker(ray_session, pg["id"]), 30, "slot 0's worker")
    return snap, pg, proc


def test_a_resume_within_park_s_trains_on_in_the_same_group_and_process(ray_session, tmp_path):
    name = "it-lease-warm"
    with ServingProcess(delay_s=0.002, rps=40) as server:
        job = JobThread(lease_spec(tmp_path, name, server.metrics_url, park_s=120))
        job.start()
        _, pg, proc = training(job, ray_session, name)
        paused_at = time.time()
        server.set_delay(0.5)  # over the SLO: PAUSE
        paused = job.wait_for(lambda s: s["seen"] > paused_at and s["level"] == "PAUSE" and s["active"] == 0)
        job.held_still(paused, 2.0)
        parked_group, parked_worker = group_state(ray_session, pg["id"]), actor_state(ray_session, proc["id"])
        resumed_at = time.time()
        server.set_delay(0.002)
        job.wait_for(lambda s: s["seen"] > resumed_at and s["active"] == 1 and s["rows_consumed"] > paused["rows_consumed"],
                     timeout_s=120)
        after = group(ray_session, name)
        after_worker = worker(ray_session, after["id"])
        summary = job.finish(timeout_s=300)
    assert (parked_group, parked_worker) == ("CREATED", "ALIVE")  # parked: group and process kept, no CPU used
    assert after["id"] == pg["id"] and after_worker is not None and after_worker["pid"] == proc["pid"]
    assert summary["pauses"] >= 1 and summary["resumes"] >= 1
    assert_exactly_once(summary)


def test_a_pause_longer_than_park_s_removes_the_group_and_the_resume_starts_cold(ray_session, tmp_path):
    name, park_s = "it-lease-expiry", 2.0
    with ServingProcess(delay_s=0.002, rps=40) as server:
        job = JobThread(lease_spec(tmp_path, name, server.metrics_url, park_s=park_s))
        job.start()
        _, pg, proc = training(job, ray_session, name)
        paused_at = time.time()
        server.set_delay(0.5)
        paused = job.wait_for(lambda s: s["seen"] > paused_at and s["level"] == "PAUSE" and s["active"] == 0)
        still_there = group_state(ray_session, pg["id"])  # right after the release: parked, not removed
        until(lambda: group_state(ray_session, pg["id"]) == "REMOVED", 60, "the parked group to expire")
        removed_seen_at = time.time()
        until(lambda: actor_state(ray_session, proc["id"]) == "DEAD", 30, "the parked worker to go with its group")
        resumed_at = time.time()
        server.set_delay(0.002)
        job.wait_for(lambda s: s["seen"] > resumed_at and s["active"] == 1 and s["rows_consumed"] > paused["rows_consumed"],
                     timeout_s=120)
        after = until(lambda: (g := group(ray_session, name)) and g["state"] == "CREATED" and g, 30, "a new group")
        after_worker = until(lambda: worker(ray_session, after["id"]), 30, "a new worker")
        summary = job.finish(timeout_s=300)
    assert still_there == "CREATED"
    # Parked at the release, which follows the PAUSE decision: removed no sooner than park_s after the
    # decision (the governor's own log; a status snapshot can trail the release by a poll).
    paused_t = next(d["t"] for d in logged_decisions(summary, tmp_path) if d["t"] >= paused_at and d["level"] == "PAUSE")
    assert removed_seen_at - paused_t >= park_s, (removed_seen_at - paused_t, park_s)
    assert after["id"] != pg["id"] and after_worker["pid"] != proc["pid"]  # a cold start in a new group
    assert_exactly_once(summary)


def test_a_drain_that_never_reports_back_loses_its_group_after_the_timeout(ray_session, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="runtime.driver.job")
    name, silence_s = "it-lease-drain", 1.0
    drain_timeout_s = silence_s + 5.0  # what the driver registers (runtime/driver/job.py)
    # One round holds every row (120 batches): the worker is stopped mid-round, so the drain can only end
    # in the timeout. With short rounds, a SIGSTOP between two of them left an idle worker the driver
    # handed back at once (parked, rightly: it had nothing unsaved), and the timeout never came (CI, a
    # busy host; reproduced here beside two busy loops, 1 run of 4).
    with ServingProcess(delay_s=0.002, rps=40) as server:
        job = JobThread(lease_spec(tmp_path, name, server.metrics_url, park_s=120, silence_s=silence_s,
                                   every_steps=ROWS // BATCH))
        job.start()
        snap, pg, proc = training(job, ray_session, name)
        with stopped(proc):  # the worker will never answer the drain
            paused_at = time.time()
            server.set_delay(0.5)
            job.wait_for(lambda s: s["seen"] > paused_at and s["level"] == "PAUSE")
            # halfway: draining, waiting for a report that never comes
            halfway, removed_seen_at = removed_after(ray_session, pg["id"], drain_timeout_s, "the drain to time out")
        until(lambda: actor_state(ray_session, proc["id"]) == "DEAD", 30, "the stopped worker to go with its group")
        resumed_at = time.time()
        server.set_delay(0.002)
        job.wait_for(lambda s: s["seen"] > resumed_at and s["active"] == 1 and s["rows_consumed"] > snap["rows_consumed"],
                     timeout_s=120)
        summary = job.finish(timeout_s=300)
    assert halfway == "CREATED"
    # The drain begins at the first decision that took the worker away (the governor's own log; on a busy
    # host a decision at 0 workers can come a tick before the PAUSE): the group goes no sooner than the
    # timeout after it
    drained_t = next(d["t"] for d in logged_decisions(summary, tmp_path) if d["t"] >= paused_at and d["workers"] == 0)
    assert removed_seen_at - drained_t >= drain_timeout_s, (removed_seen_at - drained_t, drain_timeout_s)
    # The driver saw its worker go with the group and gave its shard back: as a crash when the actor's
    # death reached it first, as a slot withdrawn from the lease when the lease's change did (not a
    # crash: the driver's own release took it; seen once, in a plain make test on three workers)
    lost = [r.getMessage() for r in caplog.records if "goes back to pending" in r.getMessage()]
    assert summary["worker_crashes"] >= 1 or any("left the lease" in m for m in lost), lost
    assert_exactly_once(summary)


def test_a_worker_gone_silent_while_it_trains_is_replaced_after_worker_hung_s(ray_session, tmp_path):
    name, silence_s, hung_s = "it-lease-hung", 1.0, 15.0
    with ServingProcess(delay_s=0.002, rps=40) as server:  # fast serving: the directive stays RUN throughout
        job = JobThread(lease_spec(tmp_path, name, server.metrics_url, park_s=120, silence_s=silence_s,
                                   every_steps=ROWS // BATCH, hung_s=hung_s))
        job.start()
        _, pg, proc = training(job, ray_session, name)
        with stopped(proc) as stopped_at:  # no heartbeat from here on; without the watchdog the job waits for good
            halfway, removed_seen_at = removed_after(ray_session, pg["id"], hung_s, "the silent worker's group to go")
        until(lambda: actor_state(ray_session, proc["id"]) == "DEAD", 30, "the silent worker to go with its group")
        after = until(lambda: (g := group(ray_session, name)) and g["state"] == "CREATED" and g["id"] != pg["id"] and g,
                      60, "a new group")
        after_worker = until(lambda: worker(ray_session, after["id"]), 60, "a fresh worker in it")
        summary = job.finish(timeout_s=300)
    assert halfway == "CREATED"
    # Its last heartbeat came at most one long poll (silence_s / 3) before the SIGSTOP: the group went no sooner
    assert removed_seen_at - stopped_at >= hung_s - 1.0, (removed_seen_at - stopped_at, hung_s)
    assert after_worker["pid"] != proc["pid"]
    assert summary["workers_hung"] == 1 and summary["status"] == "completed"
    assert_exactly_once(summary)
