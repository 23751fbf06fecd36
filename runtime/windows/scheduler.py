"""Hand-off from the window planner to the runtime: queue a job, run it as a Ray job in its windows.

``headroom plan --out plan.json`` says when each job should run; ``headroom submit --window auto
--plan plan.json SPEC.yaml`` queues the spec, with every planned window of its job, at the cluster's
scheduler (a detached actor next to the governor). When a window opens, the scheduler submits the job
through Ray's Job Submission API (``python -m jobs.retrain SPEC --window START/END``), so it shows in
``ray job list`` and the dashboard with its logs, and ``ray job stop`` stops it. At the window's end the
job yields (``WINDOW_END``: checkpoint, lease handed back, exit); the scheduler queues it again for its
next window, where it resumes from the checkpoint. ``headroom queue`` lists it all.

The queue lives in the GCS key-value store (as the governor's state does), so a scheduler that is
killed or restarted carries on with the same queue, and the Ray jobs it started keep running without
it. The governor still guards inside a window: a window is a forecast, the governor is the measurement.

>>> next_window([{"job": "a", "start": "2030-01-01T02:00:00+00:00", "end": "2030-01-01T04:00:00+00:00"}],
...             "a", now_s=0.0)
(1893463200.0, 1893470400.0)
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import ray
import yaml

from runtime.control.governor_state import GcsStateStore, StateStore
from runtime.errors import GovernorError, SpecError
from runtime.spec.job import absolute_paths

NAME = "headroom-scheduler"
NAMESPACE = "headroom"
QUEUE_KEY = "scheduler-queue"
OUTCOME_PREFIX = "outcome/"
STOP_GRACE_S = 300.0  # past a window's end, a job still running (it ignored its window) is stopped
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

log = logging.getLogger("headroom.scheduler")


def next_window(records: list[dict], job: str, *, now_s: float) -> tuple[float, float] | None:
    """The first planned ``(start, end)`` of ``job`` that has not ended yet (pure: ``now_s`` is given)."""
    return next(iter(windows_of(records, job, now_s=now_s)), None)


def windows_of(records: list[dict], job: str, *, now_s: float) -> list[tuple[float, float]]:
    """Every planned ``(start, end)`` of ``job`` that has not ended yet, in time order."""
    windows = sorted((datetime.fromisoformat(r["start"]).timestamp(), datetime.fromisoformat(r["end"]).timestamp())
                     for r in records if r.get("job") == job)
    return [(s, e) for s, e in windows if e > now_s]


def read_plan(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read plan ({exc})", where=str(path), fix="write one with headroom plan --out plan.json") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"job", "start", "end"} <= r.keys() for r in records):
        raise SpecError("a plan is a JSON list of {job, start, end} records", where=str(path),
                        fix="write one with headroom plan --out plan.json")
    return records


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


# ---- outcomes: a windowed run leaves its summary in the cluster's key-value store --------------------
def put_outcome(key: str, summary: dict) -> None:
    """Called by the job's driver (``headroom run --outcome-key``): the summary, for the scheduler."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(OUTCOME_PREFIX + key, json.dumps(summary, default=str).encode(), overwrite=True,
                                 namespace=NAMESPACE)


def _get_outcome(key: str) -> dict | None:
    from ray.experimental import internal_kv

    blob = internal_kv._internal_kv_get(OUTCOME_PREFIX + key, namespace=NAMESPACE)
    return None if blob is None else json.loads(blob)


def jobs_api_url() -> str | None:
    """The cluster's Jobs API (the Ray dashboard's HTTP address), as the GCS records it; ``None``
    when the cluster runs without a dashboard."""
    from ray.experimental import internal_kv

    blob = internal_kv._internal_kv_get("dashboard", namespace=b"dashboard")
    return None if not blob else f"http://{blob.decode()}"


# ---- the queue -----------------------------------------------------------------------------------
class Queue:
    """The scheduler's logic, without Ray's actor machinery (unit-testable with a fake jobs client).

    One entry per job: its spec, its planned windows, its state (``queued`` -> ``running`` ->
    ``queued`` again after a window ends with rows left -> ``finished``; or ``failed``, ``stopped``
    (``ray job stop``), ``unscheduled`` (no planned window left)) and one run per window it used."""

    def __init__(self, store: StateStore, client_factory, outcome=_get_outcome, clock=time.time):
        self.store, self._client_factory, self._outcome, self._clock = store, client_factory, outcome, clock
        self._client = None
        self.lock = threading.RLock()
        blob = store.load()
        self.entries: dict[str, dict] = json.loads(blob) if blob else {}
        self.restored = sorted(self.entries)

    def client(self):
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def submit(self, spec_dict: dict, windows: list[tuple[float, float]]) -> dict:
        name = spec_dict["name"]
        with self.lock:
            old = self.entries.get(name)
            if old is not None and old["state"] == "running":
                raise GovernorError(f"job {name!r} is running in its window now", where=NAME,
                                    fix="wait for it to end, or stop it with ray job stop, then submit again")
            self.entries[name] = {"job": name, "spec": spec_dict, "windows": [list(w) for w in windows],
                                  "state": "queued", "queued_s": self._clock(), "runs": [], "error": None,
                                  "summary": None}
            self._save()
            return self.view(name)

    def view(self, name: str) -> dict:
        e = self.entries[name]
        now = self._clock()
        upcoming = [w for w in e["windows"] if w[1] > now]
        return {k: v for k, v in e.items() if k != "spec"} | {"next_window": upcoming[0] if upcoming else None}

    def tick(self) -> bool:
        """Start the jobs whose window opened, follow the running ones; True if anything changed."""
        changed = False
        with self.lock:
            for e in self.entries.values():
                try:
                    if e["state"] == "queued":
                        changed |= self._maybe_launch(e)
                    elif e["state"] == "running":
                        changed |= self._follow(e)
                except Exception as exc:  # one job's trouble (the Jobs API down) must not stop the others
                    message = f"{type(exc).__name__}: {exc}"[:500]
                    if e.get("error") != message:
                        log.warning("scheduler: job %s: %s", e["job"], message)
                        e["error"], changed = message, True
            if changed:
                self._save()
        return changed

    def _maybe_launch(self, e: dict) -> bool:
        now = self._clock()
        upcoming = [w for w in e["windows"] if w[1] > now]
        if not upcoming:
            e["state"] = "unscheduled"
            e["error"] = "no planned window left: plan again (headroom plan) and submit again"
            return True
        start, end = upcoming[0]
        if now < start:
            return False
        submission_id = f"headroom-{e['job']}-{int(now * 1000)}"
        entrypoint = (f"{shlex.quote(sys.executable)} -m jobs.retrain spec.yaml --window {start:.3f}/{end:.3f} "
                      f"--outcome-key {submission_id}")
        # The spec travels as the Ray job's working_dir, which the submission uploads to the cluster: the
        # local folder is not needed once it returns (kept, one per window, it filled /tmp).
        with tempfile.TemporaryDirectory(prefix=f"headroom-{e['job']}-") as workdir:
            (Path(workdir) / "spec.yaml").write_text(yaml.safe_dump(e["spec"], sort_keys=False))
            self.client().submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env={"working_dir": workdir},
                                     metadata={"headroom.job": e["job"], "headroom.window": f"{iso(start)}/{iso(end)}"})
        e["runs"].append({"submission_id": submission_id, "window": [start, end], "submitted_s": now,
                          "ended_s": None, "ray_status": "PENDING", "status": None, "rows_consumed": None,
                          "stop_requested": False})
        e["state"], e["error"] = "running", None
        log.info("scheduler: %s submitted as Ray job %s for its window %s .. %s", e["job"], submission_id, iso(start), iso(end))
        return True

    def _follow(self, e: dict) -> bool:
        run, now = e["runs"][-1], self._clock()
        status = str(self.client().get_job_status(run["submission_id"]).value)
        changed = status != run["ray_status"]
        run["ray_status"] = status
        if status not in TERMINAL:
            if now > run["window"][1] + STOP_GRACE_S and not run["stop_requested"]:
                log.warning("scheduler: %s still runs %.0f s past its window: stopping it", e["job"], now - run["window"][1])
                self.client().stop_job(run["submission_id"])
                run["stop_requested"] = changed = True
            return changed
        outcome = self._outcome(run["submission_id"])
        run["ended_s"] = now
        run["status"] = (outcome or {}).get("status")
        run["rows_consumed"] = (outcome or {}).get("rows_consumed")
        if status == "SUCCEEDED" and run["status"] == "completed":
            e["state"], e["summary"] = "finished", outcome
        elif status == "SUCCEEDED" and run["status"] == "window_ended":
            e["state"] = "queued"  # the next tick finds its next window (or marks it unscheduled)
        elif status == "STOPPED":
            e["state"], e["error"] = "stopped", "stopped (ray job stop, or past its window)"
        else:
            info = self.client().get_job_info(run["submission_id"])
            e["state"] = "failed"
            e["error"] = (f"Ray job {status}: {getattr(info, 'message', '') or ''} "
                          f"{(outcome or {}).get('error') or ''}").strip()[:500]
        return True

    def _save(self) -> None:
        try:
            self.store.save(json.dumps(self.entries).encode())
        except Exception:  # GCS busy: kept in memory, saved at the next change
            log.warning("cannot save the scheduler's queue; retrying at the next change", exc_info=True)


def _jobs_client():
    from ray.job_submission import JobSubmissionClient

    url = jobs_api_url()
    if url is None:
        raise GovernorError("this Ray cluster has no Jobs API (it runs without a dashboard)", where=NAME,
                            fix="start the head with its dashboard: ray start --head --dashboard-host 127.0.0.1")
    return JobSubmissionClient(url)


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=4)
class Scheduler:
    """The queue in a detached actor; a thread ticks it every ``tick_s``. A restarted actor reloads the
    queue from the GCS and carries on (the Ray jobs it started never depended on it)."""

    def __init__(self, tick_s: float = 1.0):
        self.queue = Queue(GcsStateStore(QUEUE_KEY), _jobs_client)
        if self.queue.restored:
            log.warning("scheduler restarted: restored %s", ", ".join(self.queue.restored))
        self._tick_s = tick_s
        threading.Thread(target=self._loop, name="scheduler", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                self.queue.tick()
            except Exception:
                log.exception("scheduler tick failed")
            time.sleep(self._tick_s)

    def submit(self, spec_dict: dict, windows: list) -> dict:
        return self.queue.submit(spec_dict, [tuple(w) for w in windows])

    def status(self) -> list[dict]:
        with self.queue.lock:
            return [self.queue.view(name) for name in sorted(self.queue.entries)]

    def restored(self) -> list[str]:
        return list(self.queue.restored)


def get_or_create_scheduler():
    return Scheduler.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


def submit(spec, plan_path: str | Path, *, now_s: float | None = None) -> dict:
    """Queue ``spec`` with every planned window of its job that has not ended; returns the queue entry."""
    now = time.time() if now_s is None else now_s
    windows = windows_of(read_plan(plan_path), spec.name, now_s=now)
    if not windows:
        raise SpecError(f"the plan has no window for job {spec.name!r} that ends after now", where=str(plan_path),
                        fix="re-run headroom plan with a horizon starting now, or run the job directly (headroom run)")
    if jobs_api_url() is None:
        raise GovernorError("this Ray cluster has no Jobs API (it runs without a dashboard), so windows cannot start jobs",
                            where="headroom submit",
                            fix="start the head with its dashboard (ray start --head --dashboard-host 127.0.0.1), or run "
                                "the job directly in its window (headroom run SPEC --window START/END)")
    # the job runs later, elsewhere, in a working directory that holds only its spec: no relative paths
    spec_dict = absolute_paths(spec.model_dump(mode="json"), Path.cwd())
    return ray.get(get_or_create_scheduler().submit.remote(spec_dict, windows))


def queue_status() -> list[dict]:
    return ray.get(get_or_create_scheduler().status.remote())
