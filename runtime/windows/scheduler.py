"""Hand-off from the window planner to the runtime: queue a job, start it when its window opens.

``headroom plan --out plan.json`` says when each job should run; ``headroom submit --window auto
--plan plan.json SPEC.yaml`` queues the spec with the cluster's scheduler (a detached actor next to
the governor), which starts the job as a Ray task when the job's next window opens. The governor
still guards inside the window: a window is a forecast, the governor is the measurement.

>>> next_window([{"job": "a", "start": "2030-01-01T02:00:00+00:00", "end": "2030-01-01T04:00:00+00:00"}],
...             "a", now_s=0.0)
(1893463200.0, 1893470400.0)
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import ray

from runtime.errors import SpecError

NAME = "headroom-scheduler"
NAMESPACE = "headroom"


def next_window(records: list[dict], job: str, *, now_s: float) -> tuple[float, float] | None:
    """The first planned ``(start, end)`` of ``job`` that has not ended yet (pure: ``now_s`` is given)."""
    windows = sorted((datetime.fromisoformat(r["start"]).timestamp(), datetime.fromisoformat(r["end"]).timestamp())
                     for r in records if r.get("job") == job)
    return next(((s, e) for s, e in windows if e > now_s), None)


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


@ray.remote(num_cpus=0)
def _run_in_window(spec_dict: dict) -> dict:
    from runtime.driver.job import run_job
    from runtime.spec.job import JobSpec

    return run_job(JobSpec.model_validate(spec_dict))


@ray.remote(num_cpus=0, max_restarts=-1)
class Scheduler:
    """Holds queued jobs; a timer per job starts it (as a Ray task) when its window opens."""

    def __init__(self):
        self.queue: dict[str, dict] = {}

    async def submit(self, spec_dict: dict, start_s: float, end_s: float) -> dict:
        import asyncio

        name = spec_dict["name"]
        entry = {"job": name, "start_s": start_s, "end_s": end_s, "state": "queued", "summary": None, "error": None}
        self.queue[name] = entry
        asyncio.get_running_loop().create_task(self._launch(entry, spec_dict))
        return {k: v for k, v in entry.items() if k != "summary"}

    async def _launch(self, entry: dict, spec_dict: dict) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, entry["start_s"] - time.time()))
        entry["state"] = "running"
        try:
            entry["summary"] = await _run_in_window.remote(spec_dict)
            entry["state"] = "finished"
        except Exception as exc:  # the job's own error, kept for `headroom status`-like queries
            entry["state"], entry["error"] = "failed", f"{type(exc).__name__}: {exc}"[:500]

    async def status(self) -> list[dict]:
        return list(self.queue.values())


def get_or_create_scheduler():
    return Scheduler.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


def submit(spec, plan_path: str | Path, *, now_s: float | None = None) -> dict:
    """Queue ``spec`` for its next planned window; returns the queue entry (job, start_s, end_s, state)."""
    now = time.time() if now_s is None else now_s
    window = next_window(read_plan(plan_path), spec.name, now_s=now)
    if window is None:
        raise SpecError(f"the plan has no window for job {spec.name!r} that ends after now", where=str(plan_path),
                        fix="re-run headroom plan with a horizon starting now, or run the job directly (headroom run)")
    return ray.get(get_or_create_scheduler().submit.remote(spec.model_dump(), *window))
