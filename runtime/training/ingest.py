"""Rate-limited ingestion over a directory of Parquet/CSV slices, with a ledger of consumed rows.

Rows are addressed by their *position*: slices are read in name order and numbered back to back, so
position ``p`` is row ``p - base`` of the slice whose range holds it. The :class:`RangeSet` ledger of
consumed positions travels inside every checkpoint; what is left to read is its complement. That is
what makes "exactly once" checkable: adding a range that overlaps the ledger counts duplicates.

>>> ledger = RangeSet()
>>> ledger.add(0, 100), ledger.add(50, 150), len(ledger)
(0, 50, 150)
>>> ledger.complement(200)
[(150, 200)]
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from runtime.errors import DataError


class RangeSet:
    """Disjoint, sorted half-open ranges of integers."""

    def __init__(self, ranges: list[tuple[int, int]] | None = None):
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges or []:
            self.add(start, end)

    def add(self, start: int, end: int) -> int:
        """Insert ``[start, end)``; returns how many of its integers were already present."""
        if end <= start:
            return 0
        i = bisect.bisect_left(self._ends, start)  # first range that ends at/after start
        overlap = 0
        new_start, new_end = start, end
        j = i
        while j < len(self._starts) and self._starts[j] <= end:
            overlap += max(0, min(end, self._ends[j]) - max(start, self._starts[j]))
            new_start = min(new_start, self._starts[j])
            new_end = max(new_end, self._ends[j])
            j += 1
        self._starts[i:j] = [new_start]
        self._ends[i:j] = [new_end]
        return overlap

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends))

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends))

    def complement(self, total: int) -> list[tuple[int, int]]:
        """The ranges of ``[0, total)`` not in the set."""
        gaps, cursor = [], 0
        for s, e in zip(self._starts, self._ends):
            if s > cursor:
                gaps.append((cursor, min(s, total)))
            cursor = max(cursor, e)
            if cursor >= total:
                break
        if cursor < total:
            gaps.append((cursor, total))
        return [(s, e) for s, e in gaps if e > s]

    def to_list(self) -> list[list[int]]:
        return [[s, e] for s, e in self.ranges()]

    @classmethod
    def from_list(cls, items) -> "RangeSet":
        return cls([(int(s), int(e)) for s, e in items])


def take_batch(pending: list[tuple[int, int]], batch_rows: int) -> tuple[int, int] | None:
    """The next batch: the first ``batch_rows`` positions of the first pending range (one slice span)."""
    if not pending:
        return None
    start, end = pending[0]
    return start, min(end, start + batch_rows)


def resolve_fs(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """A ``pyarrow.fs`` filesystem and path for a local path or any URI it understands (s3://, gs://...)."""
    if "://" in uri_or_path:
        try:
            return pafs.FileSystem.from_uri(uri_or_path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot open storage URI ({exc})", where=uri_or_path,
                            fix="use a local path or a URI pyarrow.fs supports (file://, s3://, gs://, hdfs://)") from None
    return pafs.LocalFileSystem(), str(Path(uri_or_path).resolve())


@dataclass(frozen=True)
class Slice:
    path: str
    base: int  # position of its first row
    rows: int


class Dataset:
    """The slices under ``path``, numbered back to back. Reads any position range as a pyarrow Table."""

    def __init__(self, path: str, fmt: str):
        self.location = path
        self.format = fmt
        self.fs, root = resolve_fs(path)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=False))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"cannot list data directory ({exc})", where=path, fix="point data.path at a directory of slices") from None
        self._cache: tuple[str, pa.Table] | None = None
        suffix = ".parquet" if fmt == "parquet" else ".csv"
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))
        if not files:
            raise DataError(f"no *{suffix} slices found", where=path, fix=f"write {fmt} files into it, or set data.format")
        slices, base = [], 0
        for f in files:
            rows = self._count_rows(f)
            slices.append(Slice(f, base, rows))
            base += rows
        self.slices = slices
        self.total_rows = base

    def _count_rows(self, f: str) -> int:
        if self.format == "parquet":
            try:
                with self.fs.open_input_file(f) as fh:
                    return pq.ParquetFile(fh).metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"cannot read slice ({exc})", where=f, fix="check the file is valid parquet") from None
        return self._read(f).num_rows

    def _read(self, f: str) -> pa.Table:
        if self._cache and self._cache[0] == f:
            return self._cache[1]
        try:
            with self.fs.open_input_file(f) as fh:
                table = pq.read_table(fh) if self.format == "parquet" else pacsv.read_csv(fh)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read slice ({exc})", where=f, fix="check the file is valid " + self.format) from None
        self._cache = (f, table)
        return table

    def read(self, start: int, end: int) -> pa.Table:
        """Rows at positions ``[start, end)``, across slice boundaries if needed."""
        parts = []
        bases = [s.base for s in self.slices]
        i = bisect.bisect_right(bases, start) - 1
        pos = start
        while pos < end and i < len(self.slices):
            sl = self.slices[i]
            lo, hi = pos - sl.base, min(end, sl.base + sl.rows) - sl.base
            if hi > lo:
                parts.append(self._read(sl.path).slice(lo, hi - lo))
            pos = sl.base + sl.rows
            i += 1
        if not parts:  # an empty or out-of-range request: no rows, same columns
            return self._read(self.slices[0].path).slice(0, 0)
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def read_table_file(path: str, fmt: str | None = None) -> pa.Table:
    """One Parquet/CSV file (e.g. the validation holdout) as a pyarrow Table."""
    fmt = fmt or ("csv" if path.endswith(".csv") else "parquet")
    fs, p = resolve_fs(path)
    try:
        with fs.open_input_file(p) as fh:
            return pq.read_table(fh) if fmt == "parquet" else pacsv.read_csv(fh)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read table ({exc})", where=path, fix=f"check the file exists and is valid {fmt}") from None


def to_xy(table: pa.Table, target: str, features: list[str] | None, id_column: str | None):
    """Split a table into feature matrix, target vector and (optional) row ids."""
    if target not in table.column_names:
        raise DataError(f"target column {target!r} missing; columns are {table.column_names}", where="data",
                        fix="set data.target to one of the columns")
    cols = features or [c for c in table.column_names if c not in (target, id_column)]
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise DataError(f"feature columns {missing} missing", where="data", fix="fix data.features or the data")
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in cols])
    y = table.column(target).to_numpy(zero_copy_only=False)
    ids = table.column(id_column).to_numpy(zero_copy_only=False).astype(np.int64) if id_column else None
    return x, y, ids


class TokenBucket:
    """Rows/s limiter with a clock passed in: ``wait_s(n, rate, now)`` says how long to sleep first.

    Burst is one second of the rate (at least one batch), so a throttled job still moves in whole batches.
    """

    def __init__(self) -> None:
        self._tokens = 0.0
        self._last: float | None = None

    def wait_s(self, rows: int, rows_per_s: float, now_s: float) -> float:
        if rows_per_s <= 0:
            return float("inf")
        burst = max(float(rows), rows_per_s)
        if self._last is None:
            self._tokens = float(rows)
        else:
            self._tokens = min(burst, self._tokens + (now_s - self._last) * rows_per_s)
        self._last = now_s
        if self._tokens >= rows:
            return 0.0
        return (rows - self._tokens) / rows_per_s

    def take(self, rows: int) -> None:
        self._tokens -= rows
