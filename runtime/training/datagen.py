"""Synthetic tabular data in slices, for the demo, the tests and the benchmarks.

>>> write_regression_slices("/tmp/d", slices=4, rows_per_slice=1000)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _table(rng, weights, start_id: int, rows: int, noise: float, shift: float) -> pa.Table:
    x = rng.normal(shift, 1.0, size=(rows, len(weights)))
    y = x @ weights + 0.5 * np.sin(x[:, 0] * 2) + rng.normal(0, noise, rows)
    cols = {"row_id": np.arange(start_id, start_id + rows, dtype=np.int64)}
    cols.update({f"f{i}": x[:, i] for i in range(len(weights))})
    cols["y"] = y
    return pa.table(cols)


def write_regression_slices(directory: str | Path, *, slices: int = 4, rows_per_slice: int = 1000, features: int = 8,
                            seed: int = 0, noise: float = 0.1, shift: float = 0.0, fmt: str = "parquet",
                            prefix: str = "slice") -> tuple[Path, Path]:
    """Write ``slices`` files of a fixed linear+sine relation, plus ``holdout.<fmt>`` beside the folder.

    Returns ``(data_dir, holdout_path)``. Row ids run from 0 across slices, in slice-name order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(1234).normal(0, 1, features)  # the same "world" for every seed
    for i in range(slices):
        table = _table(rng, weights, i * rows_per_slice, rows_per_slice, noise, shift)
        _write(table, directory / f"{prefix}-{i:04d}.{fmt}", fmt)
    holdout = directory.parent / f"{directory.name}-holdout.{fmt}"
    _write(_table(np.random.default_rng(seed + 10_000), weights, 10**9, max(500, rows_per_slice), noise, shift), holdout, fmt)
    return directory, holdout


def _write(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
