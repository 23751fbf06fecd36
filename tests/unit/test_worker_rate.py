"""A worker's rate limit holds across rounds (no Ray: the worker's class driven directly, with a
directive feed answered by a plain function)."""

from __future__ import annotations

import time

import pytest

from runtime.spec.job import spec_from_dict
from runtime.training.datagen import write_regression_slices
from runtime.training.directive import DirectiveFeed
from runtime.training.ingest import Dataset, TokenBucket
from runtime.training.worker import TrainerWorker, directive_wait_s

RATE = 2000.0  # rows/s the directive grants


def _steady_run(progress, known, wait_s):
    if known is not None:  # a long poll on an unchanged directive: the governor answers after wait_s
        time.sleep(wait_s)
    return {"action": "run", "rows_per_s": RATE, "version": 1}


def _worker(tmp_path):
    data, holdout = write_regression_slices(tmp_path / "data", slices=2, rows_per_slice=1000, features=4)
    spec = spec_from_dict({"name": "rate", "model": {"estimator": "sklearn.linear_model.SGDRegressor"},
                           "data": {"path": str(data), "target": "y", "batch_rows": 100},
                           "validation": {"holdout": str(holdout)}, "serving": {"telemetry": "host", "slo_p99_ms": 50},
                           "budget": {"worker_sched": "normal", "worker_nice": 0}})
    worker = object.__new__(TrainerWorker.__ray_metadata__.modified_class)  # the class behind the Ray actor
    worker.spec, worker.job, worker.slot, worker.silence_s = spec, "rate", 0, 5.0
    worker.dataset = Dataset(spec.data.path, spec.data.format)
    worker._trainer, worker._state_id, worker._bucket = None, None, TokenBucket()
    worker.feed = DirectiveFeed(_steady_run, silence_s=5.0, wait_s=0.1).start()
    return worker


def test_the_granted_rate_holds_across_rounds_of_two_batches(tmp_path):
    """Ten rounds of 200 rows at 2,000 rows/s take at least ~0.95 s (the first batch is the only burst).
    A limiter made afresh each round gave every round a free batch: ~4,000 rows/s."""
    worker = _worker(tmp_path)
    try:
        state, state_id, rows = None, None, 0
        started = time.monotonic()
        for k in range(10):
            out = worker.train(state, [(k * 200, k * 200 + 200)], seed=k, state_id=state_id)
            state, state_id, rows = out["state"], out["state_id"], rows + out["rows"]
        elapsed = time.monotonic() - started
    finally:
        worker.feed.stop()
    assert rows == 2000
    assert rows / elapsed <= RATE * 1.1, f"{rows / elapsed:.0f} rows/s against {RATE:.0f} granted"


def test_a_steady_directive_is_re_asked_well_inside_the_silence_bound():
    assert directive_wait_s(3.0) == 1.0  # the default bound: once a second
    assert directive_wait_s(1.0) == pytest.approx(1 / 3)  # a tight bound: an answer thrice within it


class _Governor:
    """What a worker calls on the governor besides its feed: ``stopped.remote`` (recorded here)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.stopped = self  # governor.stopped.remote(job, slot)

    def remote(self, *args):
        self.calls.append(args)


def test_a_worker_told_to_stop_says_its_last_step_ended_and_one_that_ran_out_of_rows_does_not(tmp_path):
    """The governor times a pause to the workers' last step from this word (summary.stopped); a round
    that ends on its own (its shard used up) is no stop."""
    worker, gov = _worker(tmp_path), _Governor()
    worker.governor = gov
    try:
        out = worker.train(None, [(0, 200)], seed=0)  # runs out of rows
        assert out["rows"] == 200 and out["stopped"] is None and gov.calls == []
        stop = {"action": "stop", "rows_per_s": 0.0, "why": "SLO_VIOLATED", "version": 2}
        worker.feed.stop()
        worker.feed = DirectiveFeed(lambda progress, known, wait_s: stop, silence_s=5.0, wait_s=0.1).start()
        out = worker.train(out["state"], [(200, 400)], seed=1)
    finally:
        worker.feed.stop()
    assert out["stopped"] == "SLO_VIOLATED" and out["rows"] == 0
    assert gov.calls == [("rate", 0)]
