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


def test_the_peak_is_judged_against_the_same_reps_none_with_an_interval():
    """The median verdict comes with each rep's ratio to its own `none` (the runs interleave, so a rep
    shares the host's minute) and a 90 % interval; cron, far from the peak, shows what noise alone reads."""
    from benchmarks.interference import check_targets, markdown, summarize

    def run(policy, rep, peak_ms):
        latency = dict.fromkeys(("p50_ms", "p99_ms", "p999_ms", "peak_p50_ms", "peak_p999_ms"), 50.0)
        return {"policy": policy, "rep": rep, "latency": dict(latency, peak_p99_ms=peak_ms, slo_violation_s=0, errors=0),
                "train_rows": 1000, "pauses": None, "checkpoints": None, "reaction": None}

    peaks = {"none": (100, 80, 90), "cron": (120, 80, 99), "governed": (105, 96, 90)}
    runs = [run(p, rep + 1, ms[rep]) for rep in range(3) for p, ms in peaks.items()]
    summary = summarize(runs, list(peaks))
    governed = summary["governed"]["peak_p99_vs_none"]
    assert governed["per_rep"] == [1.05, 1.2, 1.0] and governed["n"] == 3  # rep by rep, not median over median
    assert governed["geomean"] == pytest.approx((1.05 * 1.2 * 1.0) ** (1 / 3))
    low, high = governed["ci90"]
    assert low < 1.0 < 1.10 < high  # three reps this far apart cannot tell 1.10x from 1.0x
    assert "peak_p99_vs_none" not in summary["none"]
    peak = check_targets(summary)[0]
    assert peak["met"] is True and peak["note"].startswith("paired per rep 1.08x [") and "`cron` 1.10x" in peak["note"]
    meta = {"mode": "full", "reps": 3, "seconds_per_policy": 60.0, "machine": {"cores": 2, "cpu_model": "x",
            "loadavg_at_start": [0], "platform": "p"}, "loadavg_at_end": [0], "loadavg_runs": "0", "wall_s": 1.0,
            "capacity": {"rps": 100.0}, "peak_rps": 75.0, "peak_fraction": 0.75, "day_start": "d", "peak_seconds": 9,
            "slo_ms": 120.0, "slo_factor": 2.5, "calibration": {"seconds": 30, "window_s": 3, "client_p99_windows_ms": [],
            "baseline_p99_ms": 50.0, "client_p99_ms": 60.0, "server_p99_ms": 20.0}, "solo_rows_per_s": 1.0,
            "max_rows_per_s": 1.0, "max_utilization": 0.5, "static": {"kind": "k", "cpus": 0.5}, "cron_window": "w",
            "cron_s": [2.5, 12.5]}
    text = markdown(meta, summary, check_targets(summary))
    assert "`governed` 1.08x [" in text and "(1.05, 1.20, 1.00)" in text
