"""Trainer workers: Ray actors that live in one slot of a job's lease.

A worker is handed a *shard* (ranges of unconsumed row positions) and the model state to start from.
Before every step it asks the governor for its directive; it stops at once when told to (or when it
cannot hear the governor for ``silence_s``), and otherwise takes one batch at the rate it was given,
updates the model and records the batch's positions. It returns the new state and exactly which rows
it consumed; the driver merges that into the job's checkpoint. A worker that dies loses only its
un-returned shard, whose rows the driver hands out again.

A worker lowers its own CPU priority (``budget.worker_nice``) and, if asked, pins itself to CPUs kept
for training (``budget.pin_cpus``; :mod:`runtime.training.isolation`) *before* importing its heavy libraries:
process start-up is seconds of CPU, and it lands right when headroom has just come back. That is a
second line of defence only; the governor's pause is the mechanism.
"""

from __future__ import annotations

import os
import time

import ray

_SLEEP_SLICE_S = 0.05  # how long a throttled worker sleeps between heartbeats


@ray.remote(max_restarts=0)
class TrainerWorker:
    def __init__(self, job: str, slot: int, spec_dict: dict, governor, silence_s: float):
        from runtime.training.isolation import isolate

        budget = spec_dict.get("budget", {})
        self.isolation = isolate(slot, int(budget.get("worker_nice", 0)), float(budget.get("cpus_per_worker", 1.0)),
                                 budget.get("pin_cpus"))
        from runtime.training.ingest import Dataset
        from runtime.spec.job import JobSpec

        self.spec = JobSpec.model_validate(spec_dict)
        self.job, self.slot, self.governor, self.silence_s = job, slot, governor, silence_s
        self.dataset = Dataset(self.spec.data.path, self.spec.data.format)
        self._limit_threads(max(1, int(self.spec.budget.cpus_per_worker)))

    @staticmethod
    def _limit_threads(cpus: int) -> None:
        # Threads follow the lease: a worker never runs more BLAS/OpenMP threads than its bundle has CPUs.
        from threadpoolctl import threadpool_limits

        threadpool_limits(cpus)

    def pid(self) -> int:
        return os.getpid()

    def isolation_applied(self) -> dict:
        """What :func:`runtime.training.isolation.isolate` did in this process (nice, pinned CPUs, or why not)."""
        return dict(self.isolation, affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)

    def train(self, state: bytes | None, shard: list, seed: int) -> dict:
        """Train on ``shard`` from ``state`` until it is used up or the governor says stop."""
        import numpy as np

        from runtime.training.ingest import RangeSet, TokenBucket, take_batch, to_xy
        from runtime.training.trainers import make_trainer

        np.random.seed(seed % (2**32))
        trainer = make_trainer(self.spec.model, state, threads=max(1, int(self.spec.budget.cpus_per_worker)))
        consumed, bucket = RangeSet(), TokenBucket()
        pending = [tuple(r) for r in shard]
        batch_rows = self.spec.data.batch_rows
        steps, losses, id_sum, id_sq, stop_why = 0, [], 0, 0, None
        started, cpu_started = time.time(), time.process_time()
        last_heard = time.monotonic()
        while pending:
            directive, last_heard = self._directive(steps, len(consumed), losses, last_heard)
            if directive["action"] == "wait":
                continue
            if directive["action"] != "run":
                stop_why = directive.get("why", "stop")
                break
            start, end = take_batch(pending, batch_rows)
            wait = bucket.wait_s(end - start, directive["rows_per_s"], time.monotonic())
            if wait > 0:
                time.sleep(min(wait, _SLEEP_SLICE_S))  # then heartbeat again: a pause must be heard fast
                continue
            bucket.take(end - start)
            x, y, ids = to_xy(self.dataset.read(start, end), self.spec.data.target, self.spec.data.features, self.spec.data.id_column)
            loss = trainer.fit_batch(x, y)
            if loss is not None:
                losses.append(loss)
            consumed.add(start, end)
            if ids is not None:
                id_sum += int(ids.sum())
                id_sq += int((ids.astype(object) ** 2).sum())
            steps += 1
            pending[0] = (end, pending[0][1])
            if pending[0][0] >= pending[0][1]:
                pending.pop(0)
        return {"slot": self.slot, "state": trainer.state_bytes() if steps else state, "consumed": consumed.to_list(),
                "rows": len(consumed), "steps": steps, "loss": float(np.mean(losses)) if losses else None,
                "id_sum": id_sum, "id_sq": id_sq, "stopped": stop_why, "seconds": time.time() - started,
                "cpu_s": time.process_time() - cpu_started}

    def _directive(self, steps: int, rows: int, losses: list, last_heard: float) -> tuple[dict, float]:
        progress = {"steps": steps, "rows": rows, "loss": losses[-1] if losses else None}
        try:
            directive = ray.get(self.governor.heartbeat.remote(self.job, self.slot, progress), timeout=self.silence_s)
            return directive, time.monotonic()
        except Exception as exc:  # governor dead, restarting or unreachable
            if time.monotonic() - last_heard >= self.silence_s:
                return {"action": "stop", "why": f"governor unreachable ({type(exc).__name__})"}, last_heard
            time.sleep(_SLEEP_SLICE_S)
            return {"action": "wait"}, last_heard
