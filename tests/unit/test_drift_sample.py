"""The checklist's drift item compares a bounded sample of each slice: its cost does not grow with the
data, and it still tells a shifted slice from an unshifted one (no Ray, no MLflow: a real Parquet dataset)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import runtime.governance.job as governance_job
from runtime.governance.checklist import evenly_spaced
from runtime.governance.job import JobGovernance
from runtime.spec.job import spec_from_dict
from runtime.training.datagen import write_regression_slices
from runtime.training.ingest import Dataset, RangeSet


def test_evenly_spaced_rows_reach_from_the_first_row_to_the_last():
    rows = evenly_spaced(1_000_000, 10_000)
    assert len(rows) == 10_000 and rows[0] == 0 and rows[-1] == 999_999
    assert len(evenly_spaced(5_000, 10_000)) == 5_000 and len(evenly_spaced(5_000, None)) == 5_000


@pytest.mark.parametrize("cap", [2_000, None])
def test_drift_compares_at_most_the_bound_and_still_finds_the_shifted_slice(tmp_path, monkeypatch, cap):
    monkeypatch.setattr(governance_job, "champion_version", lambda uri, name: None)  # no MLflow store here
    data, holdout = write_regression_slices(tmp_path / "data", slices=2, rows_per_slice=8_000, features=3, seed=1)
    write_regression_slices(tmp_path / "shifted", slices=1, rows_per_slice=8_000, features=3, seed=2, shift=1.5,
                            prefix="slice-z")  # sorts after the others
    (tmp_path / "shifted" / "slice-z-0000.parquet").rename(data / "slice-z-0000.parquet")
    spec = spec_from_dict({
        "name": "unit-drift", "model": {"estimator": "sklearn.linear_model.SGDRegressor"},
        "data": {"path": str(data), "target": "y", "id_column": "row_id"}, "validation": {"holdout": str(holdout)},
        "serving": {"url": "http://127.0.0.1:9/metrics", "slo_p99_ms": 50},
        "checklist": {"drift_sample_rows": cap}, "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    truth = SimpleNamespace(origin="fresh", ledger=RangeSet(), counters={}, state=None)
    governance = JobGovernance(spec, Dataset(spec.data.path, spec.data.format), truth, tracker=None)
    reference, _ = governance._reference()

    _, rows = governance._scan_new_slices(reference, True)

    assert {r["rows"] for r in rows} == {cap or 8_000}
    verdict = {r["slice"]: r["within"] for r in rows if r["feature"] == "f0"}
    assert verdict == {"slice-0000.parquet": True, "slice-0001.parquet": True, "slice-z-0000.parquet": False}
