"""Write example training data: ``python -m examples.make_data OUT [--rows N]``.

``OUT/data/`` gets twelve Parquet slices (features ``f0..f7``, target ``y``, a ``row_id``), and
``OUT/holdout.parquet`` a holdout from the same relation: what ``jobs/cluster.yaml`` trains on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.training.datagen import write_regression_slices


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write data/ and holdout.parquet into")
    parser.add_argument("--rows", type=int, default=24_000)
    args = parser.parse_args(argv)
    out = Path(args.out)
    data, holdout = write_regression_slices(out / "data", slices=12, rows_per_slice=args.rows // 12, features=8, seed=0)
    target = out / "holdout.parquet"
    Path(holdout).replace(target)
    print(f"{args.rows // 12 * 12} rows in {data}, holdout {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
