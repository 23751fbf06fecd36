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
