"""Ingestion: the RangeSet ledger, batching, slices read across boundaries, the token bucket, to_xy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.training.datagen import write_regression_slices
from runtime.errors import DataError
from runtime.training.ingest import Dataset, RangeSet, TokenBucket, read_table_file, take_batch, to_xy

# --- RangeSet -----------------------------------------------------------------------------------


@pytest.mark.parametrize("adds, overlaps, ranges", [
    ([(0, 10)], [0], [(0, 10)]),
    ([(0, 10), (20, 30)], [0, 0], [(0, 10), (20, 30)]),
    ([(0, 10), (5, 15)], [0, 5], [(0, 15)]),
    ([(0, 10), (10, 20)], [0, 0], [(0, 20)]),
    ([(10, 20), (0, 10)], [0, 0], [(0, 20)]),
    ([(0, 10), (20, 30), (5, 25)], [0, 0, 10], [(0, 30)]),
    ([(0, 100), (10, 20)], [0, 10], [(0, 100)]),
    ([(10, 20), (0, 100)], [0, 10], [(0, 100)]),
    ([(0, 5), (10, 15), (20, 25), (4, 21)], [0, 0, 0, 7], [(0, 25)]),
    ([(5, 5), (7, 3)], [0, 0], []),
    ([(30, 40), (0, 10), (15, 20)], [0, 0, 0], [(0, 10), (15, 20), (30, 40)]),
], ids=["one", "disjoint", "overlap", "adjacent-right", "adjacent-left", "bridge", "inside", "cover",
        "bridge-many", "empty-and-reversed", "unsorted-inserts"])
def test_rangeset_add(adds, overlaps, ranges):
    rs = RangeSet()
    assert [rs.add(s, e) for s, e in adds] == overlaps
    assert rs.ranges() == ranges
    assert len(rs) == sum(e - s for s, e in ranges)


@pytest.mark.parametrize("ranges, total, gaps", [
    ([], 10, [(0, 10)]),
    ([], 0, []),
    ([(0, 10)], 10, []),
    ([(0, 10)], 5, []),
    ([(2, 4), (6, 8)], 10, [(0, 2), (4, 6), (8, 10)]),
    ([(2, 4), (6, 8)], 7, [(0, 2), (4, 6)]),
    ([(2, 4), (6, 8)], 3, [(0, 2)]),
    ([(5, 20)], 10, [(0, 5)]),
], ids=["empty", "empty-zero-total", "full", "beyond-total", "two-holes", "cut-in-range", "cut-before", "overhang"])
def test_rangeset_complement(ranges, total, gaps):
    assert RangeSet(ranges).complement(total) == gaps


def test_rangeset_list_round_trip():
    rs = RangeSet([(0, 3), (8, 9)])
    assert rs.to_list() == [[0, 3], [8, 9]]
    assert RangeSet.from_list([["0", "3"], [8.0, 9]]).ranges() == [(0, 3), (8, 9)]


def _as_ranges(points: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in sorted(points):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


@settings(max_examples=400, deadline=None)
@given(adds=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=25), total=st.integers(0, 70))
def test_rangeset_matches_a_set_model(adds, total):
    rs, model = RangeSet(), set()
    for s, e in adds:
        new = set(range(s, e))
        assert rs.add(s, e) == len(new & model)
        model |= new
        assert len(rs) == len(model)
    assert rs.ranges() == _as_ranges(model)  # canonical: sorted, disjoint, touching ranges merged
    assert rs.complement(total) == _as_ranges(set(range(total)) - model)


@pytest.mark.parametrize("pending, batch_rows, expected", [
    ([], 10, None),
    ([(0, 100)], 10, (0, 10)),
    ([(95, 100), (200, 300)], 10, (95, 100)),  # never spans two ranges
    ([(5, 6)], 1000, (5, 6)),
], ids=["nothing", "full-batch", "short-range", "tiny"])
def test_take_batch(pending, batch_rows, expected):
    assert take_batch(pending, batch_rows) == expected


# --- Dataset ------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["parquet", "csv"])
def sliced(request, tmp_path_factory):
    fmt = request.param
    data_dir, holdout = write_regression_slices(tmp_path_factory.mktemp(fmt) / "data", slices=3, rows_per_slice=10,
                                                features=3, fmt=fmt)
    return fmt, data_dir, holdout


def ids_of(table: pa.Table) -> list[int]:
    return table.column("row_id").to_pylist()


def test_dataset_counts_rows_in_name_order(sliced):
    fmt, data_dir, _ = sliced
    ds = Dataset(str(data_dir), fmt)
    assert ds.total_rows == 30
    assert [(Path(s.path).name, s.base, s.rows) for s in ds.slices] == [
        (f"slice-0000.{fmt}", 0, 10), (f"slice-0001.{fmt}", 10, 10), (f"slice-0002.{fmt}", 20, 10)]


@pytest.mark.parametrize("start, end", [(0, 10), (0, 30), (5, 25), (9, 11), (10, 20), (29, 30), (3, 4)],
                         ids=["first-slice", "all", "three-slices", "boundary", "exact-slice", "last-row", "one-row"])
def test_dataset_reads_across_boundaries(sliced, start, end):
    fmt, data_dir, _ = sliced
    table = Dataset(str(data_dir), fmt).read(start, end)
    assert ids_of(table) == list(range(start, end))
    assert set(table.column_names) == {"row_id", "f0", "f1", "f2", "y"}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_dataset_any_range_in_order(sliced, data):
    fmt, data_dir, _ = sliced
    ds = Dataset(str(data_dir), fmt)
    start = data.draw(st.integers(0, ds.total_rows - 1))
    end = data.draw(st.integers(start + 1, ds.total_rows))
    assert ids_of(ds.read(start, end)) == list(range(start, end))


def test_dataset_ignores_non_slice_files(tmp_path):
    data_dir, _ = write_regression_slices(tmp_path / "d", slices=2, rows_per_slice=5, features=2)
    (data_dir / "README.txt").write_text("not data")
    (data_dir / "_SUCCESS").write_bytes(b"")
    (data_dir / "nested.parquet").mkdir()  # a folder, even with the suffix
    (data_dir / "sub").mkdir()  # not recursive
    pq.write_table(pa.table({"row_id": [100, 101], "y": [1.0, 2.0]}), data_dir / "sub" / "slice-0009.parquet")
    (data_dir / "other.csv").write_text("row_id,y\n1,2\n")  # wrong format for this dataset
    ds = Dataset(str(data_dir), "parquet")
    assert ds.total_rows == 10 and len(ds.slices) == 2


def test_dataset_with_uneven_and_empty_slices(tmp_path):
    sizes = [4, 0, 7, 1]
    base = 0
    for i, n in enumerate(sizes):
        pq.write_table(pa.table({"row_id": pa.array(range(base, base + n), pa.int64()),
                                 "y": pa.array([0.5] * n, pa.float64())}), tmp_path / f"part-{i}.parquet")
        base += n
    ds = Dataset(str(tmp_path), "parquet")
    assert ds.total_rows == 12
    for start, end in [(0, 12), (3, 5), (4, 11), (11, 12), (2, 4)]:
        assert ids_of(ds.read(start, end)) == list(range(start, end))


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None, lambda p: (p.mkdir(), (p / "x.txt").write_text("x"))],
                         ids=["empty-dir", "missing-dir", "only-other-files"])
def test_dataset_without_slices_is_a_data_error(tmp_path, make):
    target = tmp_path / "d"
    make(target)
    with pytest.raises(DataError) as info:
        Dataset(str(target), "parquet")
    assert info.value.fix and str(target) in str(info.value)


@pytest.mark.parametrize("fmt, text", [
    pytest.param("parquet", "not parquet at all", id="parquet"),
    pytest.param("csv", "a,b\n1,2,3\n", id="csv"),
])
def test_corrupt_slice_is_a_data_error(tmp_path, fmt, text):
    (tmp_path / f"slice-0000.{fmt}").write_text(text)
    with pytest.raises(DataError) as info:
        Dataset(str(tmp_path), fmt)
    assert "slice-0000" in str(info.value) and info.value.fix


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_read_table_file_reads_the_holdout(tmp_path, fmt):
    _, holdout = write_regression_slices(tmp_path / "d", slices=1, rows_per_slice=10, features=2, fmt=fmt)
    table = read_table_file(str(holdout))
    assert table.num_rows == 500 and ids_of(table)[0] == 10**9


def test_read_table_file_missing_is_a_data_error(tmp_path):
    with pytest.raises(DataError):
        read_table_file(str(tmp_path / "nope.parquet"))


@pytest.mark.parametrize("start, end", [(5, 5), (30, 40)], ids=["empty-range", "past-the-end"])
def test_dataset_read_empty_range(sliced, start, end):
    fmt, data_dir, _ = sliced
    assert Dataset(str(data_dir), fmt).read(start, end).num_rows == 0


# --- to_xy --------------------------------------------------------------------------------------

TABLE = pa.table({"row_id": [7, 8, 9], "a": [1.0, 2.0, 3.0], "b": [1, 0, 1], "y": [0.1, 0.2, 0.3]})


@pytest.mark.parametrize("features, id_column, x_cols, has_ids", [
    (None, "row_id", ["a", "b"], True),
    (None, None, ["row_id", "a", "b"], False),
    (["b"], "row_id", ["b"], True),
], ids=["default-features", "no-id-column", "explicit-features"])
def test_to_xy(features, id_column, x_cols, has_ids):
    x, y, ids = to_xy(TABLE, "y", features, id_column)
    expected = np.column_stack([np.asarray(TABLE.column(c).to_pylist(), dtype=np.float64) for c in x_cols])
    np.testing.assert_array_equal(x, expected)
    assert x.dtype == np.float64
    np.testing.assert_array_equal(y, [0.1, 0.2, 0.3])
    if has_ids:
        np.testing.assert_array_equal(ids, [7, 8, 9])
        assert ids.dtype == np.int64
    else:
        assert ids is None


@pytest.mark.parametrize("target, features", [("label", None), ("y", ["a", "nope"])], ids=["target", "feature"])
def test_to_xy_missing_columns(target, features):
    with pytest.raises(DataError) as info:
        to_xy(TABLE, target, features, None)
    assert "fix:" in str(info.value)


# --- TokenBucket --------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.0, -5.0], ids=["zero", "negative"])
def test_bucket_no_rate_waits_forever(rate):
    assert math.isinf(TokenBucket().wait_s(10, rate, 0.0))


def test_bucket_first_batch_is_free_then_paced():
    bucket = TokenBucket()
    assert bucket.wait_s(100, 50.0, 0.0) == 0.0
    bucket.take(100)
    assert bucket.wait_s(100, 50.0, 0.0) == pytest.approx(2.0)
    assert bucket.wait_s(100, 50.0, 1.0) == pytest.approx(1.0)
    assert bucket.wait_s(100, 50.0, 2.0) == 0.0


def test_bucket_burst_is_capped_after_idle():
    bucket = TokenBucket()
    bucket.wait_s(10, 100.0, 0.0)
    bucket.take(10)
    taken, now = 0, 1000.0  # long idle: the burst is one second of rate (100 rows), not 1000 s worth
    while bucket.wait_s(10, 100.0, now) == 0.0:
        bucket.take(10)
        taken += 10
    assert taken == 100


def test_bucket_burst_is_at_least_one_batch():
    bucket = TokenBucket()
    bucket.wait_s(500, 10.0, 0.0)
    bucket.take(500)
    assert bucket.wait_s(500, 10.0, 1e6) == 0.0  # a batch larger than one second of rate still moves


def test_bucket_after_a_pause_resumes_without_flooding():
    bucket = TokenBucket()
    bucket.wait_s(10, 20.0, 0.0)
    bucket.take(10)
    assert math.isinf(bucket.wait_s(10, 0.0, 5.0))
    taken, now = 0, 100.0
    while bucket.wait_s(10, 20.0, now) == 0.0:
        bucket.take(10)
        taken += 10
    assert taken <= 20


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(1, 500), rate=st.floats(0.5, 5000.0),
       steps=st.lists(st.one_of(st.floats(0.0, 2.0), st.none()), min_size=1, max_size=200))
def test_bucket_never_exceeds_rate_times_time_plus_burst(rows, rate, steps):
    """A greedy consumer that takes whenever allowed, with the clock advancing by the advised wait or at random."""
    bucket, now, taken = TokenBucket(), 10.0, 0
    start = now
    burst = max(rows, rate)
    for dt in steps:
        wait = bucket.wait_s(rows, rate, now)
        assert wait >= 0.0
        if wait == 0.0:
            bucket.take(rows)
            taken += rows
        else:
            assert wait <= rows / rate + 1e-9
        assert taken <= rate * (now - start) + burst + 1e-6
        now += wait if dt is None else dt
