"""Per-worker CPU isolation: which CPUs a slot gets, and that isolate() really pins a process (no Ray)."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from runtime.training.isolation import cpus_for_slot, isolate
from runtime.spec.job import spec_from_dict
from runtime.errors import SpecError


def test_slots_are_dealt_cpus_in_turn():
    pin, everything = [2, 3, 4, 5], set(range(8))
    assert [cpus_for_slot(s, 1, pin, everything) for s in range(5)] == [{2}, {3}, {4}, {5}, {2}]
    assert [cpus_for_slot(s, 2, pin, everything) for s in range(3)] == [{2, 3}, {4, 5}, {2, 3}]
    assert cpus_for_slot(0, 1.5, pin, everything) == {2, 3}  # a fractional bundle rounds up
    assert cpus_for_slot(0, 8, pin, everything) == {2, 3, 4, 5}  # never more than the list holds


def test_only_cpus_the_process_may_use():
    assert cpus_for_slot(0, 1, [6, 7], {0, 1}) == set()
    assert cpus_for_slot(1, 1, [0, 6, 1], {0, 1}) == {1}


def _child(conn, pin):
    conn.send((isolate(0, 0, 1.0, pin), sorted(os.sched_getaffinity(0))))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_isolate_pins_the_calling_process():
    last = max(os.sched_getaffinity(0))
    ctx = multiprocessing.get_context("spawn")
    for pin, expect_cpus in (([last], [last]), ([10_000], None)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, pin))
        proc.start()
        done, affinity = parent.recv()
        proc.join(30)
        assert done["cpus"] == expect_cpus
        if expect_cpus:
            assert affinity == expect_cpus
        else:
            assert "not pinned" in done["note"] and affinity == sorted(os.sched_getaffinity(0))


def test_spec_rejects_negative_cpu_ids():
    raw = {"name": "j", "model": {"estimator": "sklearn.linear_model.SGDRegressor"},
           "data": {"path": "d", "target": "y"}, "validation": {"holdout": "h"},
           "serving": {"telemetry": "host", "slo_p99_ms": 50}, "budget": {"pin_cpus": [1, -1]}}
    with pytest.raises(SpecError, match=r"budget\.pin_cpus\.1"):
        spec_from_dict(raw)
    assert spec_from_dict({**raw, "budget": {"pin_cpus": [1, 2]}}).budget.pin_cpus == [1, 2]


def _driver_child(conn):
    """In a fresh process: the pre-lease work of a driver, on its own isolated thread."""
    import threading

    from runtime.driver.job import isolate_this_thread, on_isolated_thread

    spec = spec_from_dict({"name": "j", "model": {"estimator": "sklearn.linear_model.SGDRegressor"},
                           "data": {"path": "d", "target": "y"}, "validation": {"holdout": "h"},
                           "serving": {"telemetry": "host", "slo_p99_ms": 50},
                           "budget": {"worker_sched": "idle", "worker_nice": 7}})
    caller = threading.get_native_id()

    def before_lease():
        done = isolate_this_thread(spec)
        me = threading.get_native_id()
        return done, me, os.getpriority(os.PRIO_PROCESS, me), os.sched_getscheduler(me)

    done, worker_tid, worker_nice, worker_policy = on_isolated_thread(before_lease)
    try:
        on_isolated_thread(lambda: 1 / 0)
        raised = None
    except ZeroDivisionError as exc:
        raised = type(exc).__name__
    conn.send({"done": done, "same_thread": worker_tid == caller, "worker_nice": worker_nice,
               "worker_idle": worker_policy == os.SCHED_IDLE, "caller_nice": os.getpriority(os.PRIO_PROCESS, caller),
               "caller_idle": os.sched_getscheduler(caller) == os.SCHED_IDLE, "raised": raised})


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux only")
def test_the_drivers_work_before_the_lease_runs_isolated_and_the_caller_keeps_its_priority():
    """The driver's MLflow start and checklist run at the workers' priority, while the thread that
    may yet start a private Ray cluster keeps its own (the cluster's processes would inherit it)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_driver_child, args=(child,))
    proc.start()
    got = parent.recv()
    proc.join(60)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert not got["same_thread"]
    assert got["worker_idle"] and got["done"]["sched"] == "idle"
    assert got["worker_nice"] == min(19, base + 7)
    assert got["caller_nice"] == base and not got["caller_idle"]
    assert got["raised"] == "ZeroDivisionError"  # the thread's exception reaches the caller
