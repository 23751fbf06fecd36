"""The interference benchmark's policies: the ``offpeak`` bound (the peak seconds as runs, and a train
loop in ``SCHED_IDLE`` that trains nothing while held and goes on when released: a real process), and
the governed job's spec as the command line shapes it."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.interference import climb_s, governed_spec, parse_args, peak_intervals
from benchmarks.train_loop import TrainProcess, read_log
from runtime.training.datagen import write_regression_slices


def test_peak_seconds_become_runs_of_consecutive_seconds():
    assert peak_intervals([]) == []
    assert peak_intervals([7]) == [(7, 8)]
    assert peak_intervals([12, 10, 11, 20, 21, 30]) == [(10, 13), (20, 22), (30, 31)]


def _rows(proc: TrainProcess) -> int:
    return max((p["rows_consumed"] for p in read_log(proc.log)[1]), default=0)


def test_the_climb_is_timed_from_half_the_peak_into_the_peak_hours():
    assert climb_s(lambda t: t, 10.0) == 3.0  # a straight ramp to 10: from 5 to 8
    assert climb_s(lambda t: t, 5.0) == 1.5  # the same ramp in half the time: twice as steep
    assert climb_s(lambda t: 10 - t, 10.0) is None  # starts at its peak: no climb to time
    dip = lambda t: 6.0 if t < 2 else (1.0 if t < 4 else 10.0)  # noqa: E731 -- above half, a dip, then a jump
    assert climb_s(dip, 10.0) == 0.0  # timed from the end of the last stretch under half the peak


def _until(check, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_a_held_offpeak_loop_trains_nothing_until_released(tmp_path):
    data, _ = write_regression_slices(tmp_path / "data", slices=1, rows_per_slice=2000)
    offpeak = TrainProcess("offpeak", data, tmp_path / "offpeak.jsonl", seconds=60)
    try:  # the class is set before exec: checked at once, before a SCHED_IDLE process needs any CPU
        assert os.sched_getscheduler(offpeak.proc.pid) == os.SCHED_IDLE  # the governed workers' class
    finally:
        offpeak.stop()
    # The hold itself (SIGSTOP / SIGCONT) is the same in every class: shown on a loop in the normal one,
    # which a busy host cannot starve (a SCHED_IDLE loop beside two busy cores gets next to no CPU)
    proc = TrainProcess("cron", data, tmp_path / "train.jsonl", seconds=60)
    try:
        proc.wait_ready()
        proc.go(time.time())
        _until(lambda: _rows(proc) > 0, 30, "the loop never reported trained rows")
        proc.hold()
        time.sleep(0.3)  # a progress line written just before the stop has landed
        held = _rows(proc)
        time.sleep(1.5)  # three of its 0.5-s progress lines, had it run
        assert _rows(proc) == held
        proc.release()
        _until(lambda: _rows(proc) > held, 30, "the released loop never trained again")
        proc.hold()  # stopped while held (the replay can end in a peak): it still ends cleanly, on SIGTERM
    finally:
        progress = proc.stop()
    assert progress[-1].get("event") == "end" and progress[-1]["why"] == "SIGTERM"


@pytest.mark.parametrize("argv, sched, nice", [([], "idle", 10), (["--worker-sched", "normal", "--worker-nice", "19"], "normal", 19)])
def test_the_governed_jobs_scheduling_class_comes_from_the_command_line(tmp_path, argv, sched, nice):
    args = parse_args(argv)
    ctx = {"data_dir": tmp_path / "data", "holdout": tmp_path / "h.parquet", "app": "app", "slo_ms": 60.0,
           "capacity_rps": 300.0, "max_utilization": args.max_utilization, "probe_interval_s": 0.0,
           "impact_max_ratio": None, "max_rows_per_s": 60_000.0, "checkpoint_every_steps": None,
           "mlflow_uri": f"sqlite:///{tmp_path}/m.db", "worker_sched": args.worker_sched, "worker_nice": args.worker_nice}
    spec = governed_spec(ctx, tmp_path / "ckpt")
    assert (spec.budget.worker_sched, spec.budget.worker_nice) == (sched, nice)  # default: jobs/demo.yaml's
    assert spec.serving.impact is not None and spec.budget.max_rows_per_s == 60_000.0


@pytest.mark.parametrize("cores, ceiling", [(1, 0.25), (2, 0.5), (4, 0.75), (16, 0.85)])
def test_the_governed_jobs_default_ceiling_leaves_the_training_core_out_of_capacity(monkeypatch, tmp_path, cores, ceiling):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    args = parse_args([])
    assert args.max_utilization == ceiling
    assert parse_args(["--max-utilization", "0.85"]).max_utilization == 0.85  # given: kept
    ctx = {"data_dir": tmp_path / "data", "holdout": tmp_path / "h.parquet", "app": "app", "slo_ms": 60.0,
           "capacity_rps": 300.0, "max_utilization": args.max_utilization, "probe_interval_s": 0.0,
           "impact_max_ratio": None, "max_rows_per_s": 60_000.0, "checkpoint_every_steps": None,
           "mlflow_uri": f"sqlite:///{tmp_path}/m.db", "worker_sched": None, "worker_nice": None}
    assert governed_spec(ctx, tmp_path / "ckpt").serving.max_utilization == ceiling


def test_the_reaction_is_pooled_over_reps_and_counted_from_the_reading_pause_by_pause():
    """Each rep's reads and reactions pair pause by pause; a rep whose two lists do not pair (an older
    record without reads) adds no figure from the reading rather than a wrong one."""
    from benchmarks.interference import check_targets, summarize

    def rep(reaction, read):
        latency = dict.fromkeys(("p50_ms", "p99_ms", "p999_ms", "peak_p50_ms", "peak_p99_ms", "peak_p999_ms"), 50.0)
        return {"policy": "governed", "latency": dict(latency, slo_violation_s=0, errors=0), "train_rows": 1000,
                "pauses": len(reaction), "checkpoints": 1, "reaction": {"all_s": reaction, "median_s": None, "p95_s": None},
                "read": {"all_s": read}, "stopped": {"all_s": [0.01] * len(reaction)}}

    summary = summarize([rep([0.1, 0.2], [0.3, 0.4]), rep([0.05], [0.5]), rep([0.1, 0.3], [0.2])], ["governed"])
    g = summary["governed"]
    assert g["reaction_pooled"]["count"] == 5 and g["read_pooled"]["count"] == 4
    assert g["from_reading_pooled"]["count"] == 3 and g["from_reading_pooled"]["median_s"] == pytest.approx(0.55)
    targets = {t["target"]: t for t in check_targets(summary)}
    assert targets["reaction median <= 0.3 s (pooled)"]["met"] is True
    assert targets["... counted from the reading: median <= 0.3 s"]["met"] is False
