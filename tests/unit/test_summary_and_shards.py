"""Pure helpers of the job driver: reaction statistics, the law's config from a spec, and sharding pending rows."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.training.ingest import RangeSet
from runtime.control.law import LawConfig
from runtime.spec.job import spec_from_dict
from runtime.control.reaction import reaction_stats
from runtime.driver.summary import law_config

import runtime.driver.job as job  # imports Ray; must not start it

RAW = {
    "name": "shards-job",
    "model": {"estimator": "sklearn.linear_model.SGDRegressor"},
    "data": {"path": "/nonexistent/data", "target": "y"},
    "validation": {"holdout": "/nonexistent/holdout.parquet"},
    "serving": {"url": "http://127.0.0.1:9/metrics", "slo_p99_ms": 42.5, "max_utilization": 0.7,
                "stale_after_s": 7.5},
    "budget": {"max_workers": 4, "max_rows_per_s": 1234.0, "cooldown_s": 9.0, "holddown_s": 0.5},
}


def test_importing_job_does_not_start_ray():
    import ray

    assert job._shards is not None
    assert not ray.is_initialized()


# --- reaction_stats -----------------------------------------------------------------------------

@pytest.mark.parametrize("values, expected", [
    ([], {"count": 0, "median_s": None, "p95_s": None, "max_s": None, "all_s": []}),
    ([0.25], {"count": 1, "median_s": 0.25, "p95_s": 0.25, "max_s": 0.25, "all_s": [0.25]}),
    ([3.0, 1.0, 2.0], {"count": 3, "median_s": 2.0, "p95_s": 2.9, "max_s": 3.0, "all_s": [3.0, 1.0, 2.0]}),
    ([0.123456, 0.2], {"count": 2, "median_s": 0.161728, "p95_s": 0.1961728, "max_s": 0.2, "all_s": [0.1235, 0.2]}),
], ids=["empty", "one", "many", "rounded-list"])
def test_reaction_stats(values, expected):
    got = reaction_stats(values)
    assert set(got) == set(expected)
    for key, want in expected.items():
        assert got[key] == (pytest.approx(want) if isinstance(want, float) else want), key


def test_reaction_stats_of_a_hundred():
    got = reaction_stats([float(v) for v in range(1, 101)])
    assert (got["count"], got["median_s"], got["max_s"]) == (100, 50.5, 100.0)
    assert got["p95_s"] == pytest.approx(95.05)
    assert all(type(got[k]) is float for k in ("median_s", "p95_s", "max_s"))  # JSON-safe, not numpy scalars


# --- law_config ---------------------------------------------------------------------------------

def test_law_config_maps_every_spec_field():
    cfg = law_config(spec_from_dict(copy.deepcopy(RAW)))
    assert isinstance(cfg, dict)
    assert {k: cfg[k] for k in ("slo_p99_ms", "max_workers", "max_rows_per_s", "max_utilization", "stale_after_s",
                                "cooldown_s", "holddown_s")} == {
        "slo_p99_ms": 42.5, "max_workers": 4, "max_rows_per_s": 1234.0, "max_utilization": 0.7,
        "stale_after_s": 7.5, "cooldown_s": 9.0, "holddown_s": 0.5}
    assert LawConfig(**cfg) == LawConfig(slo_p99_ms=42.5, max_workers=4, max_rows_per_s=1234.0, max_utilization=0.7,
                                         stale_after_s=7.5, cooldown_s=9.0, holddown_s=0.5)


def test_law_config_of_spec_defaults():
    raw = copy.deepcopy(RAW)
    del raw["budget"]
    raw["serving"] = {"url": "http://x", "slo_p99_ms": 10}
    cfg = LawConfig(**law_config(spec_from_dict(raw)))
    assert (cfg.max_workers, cfg.max_rows_per_s, cfg.max_utilization, cfg.stale_after_s) == (1, 1000.0, 0.85, 5.0)
    assert (cfg.cooldown_s, cfg.holddown_s) == (3.0, 2.0)


# --- _shards ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pending, slots, rows, expected", [
    ([], [0, 1], 10, {}),
    ([(0, 100)], [0], 10, {0: [(0, 10)]}),
    ([(0, 100)], [0, 1, 2], 10, {0: [(0, 10)], 1: [(10, 20)], 2: [(20, 30)]}),
    ([(0, 5), (8, 20)], [3], 10, {3: [(0, 5), (8, 13)]}),
    ([(0, 15)], [0, 1, 2], 10, {0: [(0, 10)], 1: [(10, 15)]}),
    ([(0, 3), (5, 6), (9, 10)], [1, 2], 2, {1: [(0, 2)], 2: [(2, 3), (5, 6)]}),
    ([(0, 100)], [], 10, {}),
    ([(0, 100)], [0], 0, {}),
], ids=["nothing-pending", "one-slot", "three-slots", "spans-ranges", "runs-out", "fragments", "no-slots",
        "zero-rows"])
def test_shards(pending, slots, rows, expected):
    before = list(pending)
    assert job._shards(pending, slots, rows) == expected
    assert pending == before  # the caller's list is not consumed


@st.composite
def pending_ranges(draw):
    ledger = RangeSet()
    for s, e in draw(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), max_size=15)):
        ledger.add(s, e)
    return ledger.complement(draw(st.integers(0, 320)))


@settings(max_examples=400, deadline=None)
@given(pending=pending_ranges(), slots=st.lists(st.integers(0, 50), unique=True, max_size=8),
       rows=st.integers(1, 120))
def test_shards_properties(pending, slots, rows):
    shards = job._shards(pending, slots, rows)
    assert set(shards) <= set(slots)
    pending_set = {p for s, e in pending for p in range(s, e)}
    seen: set[int] = set()
    for slot, shard in shards.items():
        assert shard and all(s < e for s, e in shard)
        size = sum(e - s for s, e in shard)
        assert 0 < size <= rows
        for s, e in shard:
            positions = set(range(s, e))
            assert not positions & seen  # disjoint across shards
            seen |= positions
    assert seen <= pending_set
    # Greedy: the slots are filled in order, each full before the next starts, as far as rows last.
    assert len(seen) == min(len(pending_set), len(slots) * rows)
    sizes = [sum(e - s for s, e in shards[slot]) for slot in slots if slot in shards]
    assert [slot for slot in slots if slot in shards] == slots[:len(sizes)]
    assert all(size == rows for size in sizes[:-1])
    # And in position order: the earliest pending rows go out first.
    assert seen == set(sorted(pending_set)[:len(seen)])


# --- scheduler: the planner's windows, handed to the runtime -----------------------------------

from runtime.windows.scheduler import next_window  # noqa: E402

_PLAN = [
    {"job": "a", "start": "2030-01-02T02:00:00+00:00", "end": "2030-01-02T04:00:00+00:00"},
    {"job": "a", "start": "2030-01-01T02:00:00+00:00", "end": "2030-01-01T04:00:00+00:00"},
    {"job": "b", "start": "2030-01-01T00:00:00-05:00", "end": "2030-01-01T01:00:00-05:00"},
]
_JAN1_2AM = 1893463200.0


@pytest.mark.parametrize("job, now_s, expected", [
    ("a", 0.0, (_JAN1_2AM, _JAN1_2AM + 7200)),  # earliest first, whatever the file order
    ("a", _JAN1_2AM + 3600, (_JAN1_2AM, _JAN1_2AM + 7200)),  # inside a window: that window (it has not ended)
    ("a", _JAN1_2AM + 7200, (_JAN1_2AM + 86400, _JAN1_2AM + 86400 + 7200)),  # ended: the next one
    ("a", _JAN1_2AM + 86400 + 7200, None),  # none left
    ("b", 0.0, (_JAN1_2AM + 3 * 3600, _JAN1_2AM + 4 * 3600)),  # offsets respected
    ("c", 0.0, None),
], ids=["earliest", "inside", "next", "none-left", "offset", "unknown-job"])
def test_next_window(job, now_s, expected):
    assert next_window(_PLAN, job, now_s=now_s) == expected
