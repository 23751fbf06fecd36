"""Trainer workers: Ray actors that live in one slot of a job's lease.

A worker is handed a *shard* (ranges of unconsumed row positions) and the model state to start from.
Before every step it reads its directive, which a :class:`~runtime.training.directive.DirectiveFeed`
keeps fresh off the training path (a long poll the governor answers at once when the directive
changes); it stops at once when told to (or when it has not heard the governor for ``silence_s``),
and otherwise takes one batch at the rate it was given, updates the model and records the batch's
positions. It returns the new state and exactly which rows it consumed; the driver merges that into
the job's checkpoint. A worker that dies loses only its un-returned shard, whose rows the driver
hands out again. When the driver hands back the very state this worker returned last (one worker, or
nothing to average), the worker keeps training its live model instead of rebuilding it from bytes.

A worker lowers its own CPU priority (``budget.worker_sched``, ``budget.worker_nice``) and, if asked, pins itself to CPUs kept
for training (``budget.pin_cpus``; :mod:`runtime.training.isolation`) *before* importing its heavy libraries:
process start-up is seconds of CPU, and it lands right when headroom has just come back. That is a
second line of defence only; the governor's pause is the mechanism.
"""

from __future__ import annotations

import os
import time
import uuid

import ray

_SLEEP_SLICE_S = 0.05  # the longest a throttled worker sleeps before it reads its directive again
# A steady directive is re-asked this often, at most a third of the silence bound (a change arrives at once):
# each call costs the governor, which runs at serving's priority, ~4 ms of CPU (at 0.25 s: ~15 ms/s a worker).
DIRECTIVE_WAIT_S = 1.0


def directive_wait_s(silence_s: float) -> float:
    """How long a worker's long poll waits on a steady directive: an answer comes well inside the
    silence bound, past which the worker stops itself."""
    return min(DIRECTIVE_WAIT_S, silence_s / 3)


@ray.remote(max_restarts=0)
class TrainerWorker:
    def __init__(self, job: str, slot: int, spec_dict: dict, governor, silence_s: float):
        from runtime.training.isolation import isolate

        budget = spec_dict.get("budget", {})
        self.isolation = isolate(slot, int(budget.get("worker_nice", 0)), float(budget.get("cpus_per_worker", 1.0)),
                                 budget.get("pin_cpus"), budget.get("worker_sched", "normal"))
        from runtime.training.ingest import Dataset, TokenBucket
        from runtime.spec.job import JobSpec

        from runtime.training.directive import DirectiveFeed

        self.spec = JobSpec.model_validate(spec_dict)
        self.job, self.slot, self.governor, self.silence_s = job, slot, governor, silence_s
        self.dataset = Dataset(self.spec.data.path, self.spec.data.format)
        self._limit_threads(max(1, int(self.spec.budget.cpus_per_worker)))
        self._trainer, self._state_id = None, None  # the live model this worker returned last, and its id
        self._bucket = TokenBucket()  # across rounds: a fresh one per round let short rounds run over the rate
        self.feed = DirectiveFeed(self._ask_governor, silence_s=silence_s, wait_s=directive_wait_s(silence_s)).start()

    def _ask_governor(self, progress: dict | None, known: int | None, wait_s: float) -> dict:
        ref = self.governor.heartbeat.remote(self.job, self.slot, progress, known, wait_s)
        return ray.get(ref, timeout=wait_s + self.silence_s)

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

    def train(self, state: bytes | None, shard: list, seed: int, state_id: str | None = None,
              max_s: float | None = None) -> dict:
        """Train on ``shard`` from ``state`` until it is used up, the governor says stop, or ``max_s``
        seconds have passed (the round's time: its rows not trained go back to the driver's pending).
        ``state_id`` names the state: when it is the one this worker returned last, its live model goes on."""
        import numpy as np

        from runtime.training.ingest import RangeSet, take_batch, to_xy
        from runtime.training.trainers import make_trainer

        np.random.seed(seed % (2**32))
        if state_id is not None and state_id == self._state_id and self._trainer is not None:
            trainer = self._trainer
        else:  # on the GPU Ray assigned this worker (CUDA_VISIBLE_DEVICES), when the lease has one
            trainer = make_trainer(self.spec.model, state, threads=max(1, int(self.spec.budget.cpus_per_worker)),
                                   device="cuda" if self.spec.budget.gpus_per_worker > 0 else "cpu")
        consumed, bucket = RangeSet(), self._bucket
        pending = [tuple(r) for r in shard]
        batch_rows = self.spec.data.batch_rows
        steps, losses, id_sum, id_sq, stop_why = 0, [], 0, 0, None
        started, cpu_started = time.time(), time.process_time()
        feed = self.feed
        directive = feed.wait_first(self.silence_s)
        ends_at = None if max_s is None else time.time() + max_s  # the round's clock runs from its first directive
        while pending and (ends_at is None or time.time() < ends_at):
            directive = feed.current()
            if directive["action"] == "wait":  # no answer yet (the governor is busy or restarting)
                time.sleep(0.01)
                continue
            if directive["action"] != "run":
                stop_why = directive.get("why", "stop")
                break
            start, end = take_batch(pending, batch_rows)
            wait = bucket.wait_s(end - start, directive["rows_per_s"], time.monotonic())
            if wait > 0:
                time.sleep(min(wait, _SLEEP_SLICE_S))  # then read the directive again: a pause must be heard fast
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
            feed.report({"steps": steps, "rows": len(consumed), "loss": losses[-1] if losses else None, "round": seed})
        if stop_why is not None:  # the last step has ended: the governor times the pause's stop from this
            self.governor.stopped.remote(self.job, self.slot)  # (sent, not waited for; the state is serialised next)
        # "round": a report that reaches the governor late (after this shard's rows are merged) is not
        # counted again as in flight: the driver counts only reports of the round it is waiting for
        feed.report({"steps": steps, "rows": len(consumed), "loss": losses[-1] if losses else None, "round": seed})
        if stop_why is not None:
            trainer.park()  # the step in flight has ended; on a GPU its cached blocks go back now
        if steps:
            self._trainer, self._state_id = trainer, uuid.uuid4().hex
        return {"slot": self.slot, "state": trainer.state_bytes() if steps else state, "consumed": consumed.to_list(),
                "state_id": self._state_id if steps else state_id,
                "rows": len(consumed), "steps": steps, "loss": float(np.mean(losses)) if losses else None,
                "id_sum": id_sum, "id_sq": id_sq, "stopped": stop_why, "seconds": time.time() - started,
                "cpu_s": time.process_time() - cpu_started,
                # the whole process since it started (imports, the directive feed, Ray's threads): the job's cost
                "pid": os.getpid(), "process_cpu_s": time.process_time()}
