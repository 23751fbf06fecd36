"""Governance on a real local Ray cluster and a real MLflow store (SQLite in tmp_path).

- A drifted slice fails the pre-work checklist: nothing trains, no placement group is ever created
  for the job, and the failed item with its numbers is in the summary and in MLflow.
- A governed run that passes leaves its lineage (dataset inputs with digests) and a post-mortem
  (Markdown + PNGs) on its MLflow run, which ``headroom report`` prints; a second run over new slices
  that misses the gate's absolute bound is registered without the ``challenger`` alias.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runtime.training.datagen import write_regression_slices
from runtime.driver.job import run_job
from runtime.governance.job import fetch_postmortem
from tests.integration.test_governed_job import JobThread, assert_exactly_once, make_spec
from tests.support import LatencyServer, LoadThread

pytestmark = pytest.mark.integration
HEADROOM = str(Path(sys.executable).with_name("headroom"))


def add_slices(data_dir: Path, tmp_path: Path, *, prefix: str, slices: int, shift: float, seed: int) -> list[Path]:
    """Write ``slices`` new slices (mean-shifted by ``shift``) that sort after the existing ones."""
    scratch, _ = write_regression_slices(tmp_path / f"scratch-{prefix}", slices=slices, rows_per_slice=2000,
                                         shift=shift, seed=seed, prefix=prefix)
    moved = []
    for f in sorted(scratch.glob("*.parquet")):
        moved.append(Path(shutil.move(str(f), data_dir / f.name)))
    return moved


def placement_groups_of(ray_head, job: str) -> list:
    from ray.util.state import list_placement_groups

    return [pg for pg in list_placement_groups(address=ray_head.dashboard_url, limit=10_000, detail=True)
            if pg.name.startswith(f"headroom-{job}-")]


def test_drifted_slice_fails_the_checklist_and_nothing_trains(ray_session, tmp_path):
    spec = make_spec(tmp_path, "it-gov-drift", "http://127.0.0.1:9/metrics", rows_per_s=800, slices=3)
    add_slices(Path(spec.data.path), tmp_path, prefix="slice-9", slices=1, shift=1.0, seed=7)

    summary = run_job(spec)

    assert summary["status"] == "checklist_failed"
    assert summary["rows_consumed"] == 0 and summary["rows_consumed_this_run"] == 0 and summary["steps"] == 0
    assert summary["registered_version"] is None
    checklist = summary["checklist"]
    assert checklist["failed_items"] == ["drift"]  # the other items passed: only drift stops it
    drifted = [d for d in checklist["drift"] if not d["within"]]
    assert drifted and {d["slice"] for d in drifted} == {"slice-9-0000.parquet"}
    assert all(d["psi"] > spec.checklist.psi_max for d in drifted)
    assert placement_groups_of(ray_session, "it-gov-drift") == []  # no lease was ever asked for

    client = MlflowClient(spec.tracking.uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["headroom.checklist"] == "failed" and run.data.tags["headroom.checklist.failed"] == "drift"
    assert run.data.tags["headroom.checklist.drift"].startswith("FAIL: ") and "slice-9-0000.parquet" in run.data.tags["headroom.checklist.drift"]
    assert run.data.params["checklist.outcome"] == "failed: drift"
    assert run.data.metrics["checklist.drift.psi_max_seen"] > spec.checklist.psi_max
    assert run.data.metrics["checklist.drift.pairs_drifted"] == len(drifted)
    assert run.data.metrics["checklist.harness.holdout_rows"] > 0
    assert client.search_model_versions(f"name='{spec.name}'") == []
    report = fetch_postmortem(run.info.run_id, spec.tracking.uri)  # from the run, as `headroom report` reads it
    assert "**failed** — nothing trained" in report and "| drift | **FAIL** |" in report


def test_governed_run_logs_lineage_and_a_postmortem_and_the_gate_holds_back_a_weak_candidate(ray_session, tmp_path, capsys):
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=40):
        spec = make_spec(tmp_path, "it-gov-run", server.metrics_url, rows_per_s=1500, slices=4)
        first = JobThread(spec)
        first.start()
        summary = first.finish()
        assert_exactly_once(summary)
        assert placement_groups_of(ray_session, "it-gov-run")  # the same helper sees a lease that was taken

        # Run 2: two new slices; an absolute bound no SGD model reaches on this noise keeps it from 'challenger'.
        new = add_slices(Path(spec.data.path), tmp_path, prefix="slice-5", slices=2, shift=0.0, seed=99)
        strict = spec.model_copy(update={"validation": spec.validation.model_copy(update={"min_score": 0.9999})})
        second = run_job(strict)

    client = MlflowClient(spec.tracking.uri)
    # --- run 1: champion, lineage, post-mortem ---
    assert summary["registered_alias"] == "champion" and summary["validation"]["passed"]
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["headroom.checklist"] == "passed" and run.data.tags["headroom.gate"] == "passed"
    assert run.data.metrics["holdout_r2"] == pytest.approx(summary["validation"]["candidate"])
    assert "r2_score" in run.data.metrics and "mean_squared_error" in run.data.metrics  # MLflow's own evaluator
    training = [i for i in run.inputs.dataset_inputs if _context(i) == "training"]
    slices = sorted(Path(spec.data.path).glob("slice-000*.parquet"))
    assert sorted(i.dataset.name for i in training) == [p.name for p in slices]
    for i in training:
        sha = hashlib.sha256((Path(spec.data.path) / i.dataset.name).read_bytes()).hexdigest()
        assert i.dataset.digest == sha[:32] and _tag(i, "sha256") == sha
    assert run.data.tags["headroom.lineage.start"] == "fresh"

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "postmortem")}
    assert {"postmortem/postmortem.md", "postmortem/timeline.png", "postmortem/latency.png", "postmortem/drift.png",
            "postmortem/validation.png", "postmortem/checklist.json"} <= artifacts
    report = fetch_postmortem(run.info.run_id, spec.tracking.uri)  # from the run, as `headroom report` reads it
    assert f"# Post-mortem: `{spec.name}`" in report and "## Validation gate: passed" in report
    assert f"Checkpoints written: {summary['checkpoints']}" in report and "CPU-seconds" in report
    assert summary["compute"]["worker_cpu_s"] > 0  # the workers' measured CPU made it into the cost
    printed = subprocess.run([HEADROOM, "report", run.info.run_id, "--tracking-uri", spec.tracking.uri],
                             capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == report
    missing = subprocess.run([HEADROOM, "report", "0" * 32, "--tracking-uri", spec.tracking.uri],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("headroom report: error: ")
    assert f"no post-mortem for run '{'0' * 32}'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    # --- run 2: started from the checkpoint, consumed only the new slices, held back by the gate ---
    assert second["status"] == "completed" and second["rows_consumed_this_run"] == 4000
    assert second["warm_start"].startswith("checkpoint:")
    assert second["validation"]["passed"] is False and "holdout_r2 threshold = 0.9999" in second["validation"]["reasons"]
    assert second["registered_version"] == 2 and second["registered_alias"] is None
    assert int(client.get_model_version_by_alias(spec.name, "champion").version) == 1
    run2 = client.get_run(second["mlflow_run_id"])
    assert sorted(i.dataset.name for i in run2.inputs.dataset_inputs if _context(i) == "training") == [p.name for p in new]
    assert run2.data.tags["headroom.gate"] == "failed"
    children = [r for r in client.search_runs([run2.info.experiment_id]) if r.data.tags.get("mlflow.parentRunId") == run2.info.run_id]
    assert [r.info.run_name for r in children] == ["holdout-champion-v1"]  # the champion, evaluated on the same holdout
    assert children[0].data.metrics["holdout_r2"] == pytest.approx(second["validation"]["champion"])
    assert run2.data.tags["headroom.lineage.rollback_target"] == f"models:/{spec.name}/1"
    version = client.get_model_version(spec.name, "2")
    assert version.tags["headroom.started_from"] == second["warm_start"]
    assert "slice-5-0000.parquet@" in version.tags["headroom.slices"]
    with capsys.disabled():
        print(f"\n[figures] run 1: holdout r2 {summary['validation']['candidate']:.4f}, CPU {summary['compute']['cpu_s']:.1f} s, "
              f"checkpoints {summary['checkpoints']}, duration {summary['duration_s']:.1f} s; "
              f"run 2 r2 {second['validation']['candidate']:.4f} (held back)")


def _context(dataset_input) -> str | None:
    return _tag(dataset_input, "mlflow.data.context")


def _tag(dataset_input, key: str) -> str | None:
    return next((t.value for t in dataset_input.tags if t.key == key), None)


def _stale(spec, tmp_path) -> dict:
    old = 1_000_000_000  # 2001
    for f in Path(spec.data.path).glob("*.parquet"):
        os.utime(f, (old, old))
    return {"checklist": spec.checklist.model_copy(update={"max_data_age_s": 3600})}


def _schema_changed(spec, tmp_path) -> dict:
    import pyarrow.parquet as pq

    newest = sorted(Path(spec.data.path).glob("*.parquet"))[-1]
    table = pq.read_table(newest)
    pq.write_table(table.drop_columns(["f3"]), newest)  # a feature went missing upstream
    return {}


def _holdout_unreadable(spec, tmp_path) -> dict:
    reference = tmp_path / "reference.parquet"
    shutil.copy(spec.validation.holdout, reference)
    Path(spec.validation.holdout).write_bytes(b"not parquet")
    return {"checklist": spec.checklist.model_copy(update={"reference": str(reference)})}


@pytest.mark.parametrize("breakage, item, needle", [
    (_stale, "data_fresh", "older than the bound of 3600 s"),
    (_schema_changed, "schema", "slice-0002.parquet: missing f3"),
    (_holdout_unreadable, "harness", "holdout not readable"),
])
def test_each_checklist_item_stops_the_job_on_its_own(ray_session, tmp_path, breakage, item, needle):
    """A failed checklist (run by the job's office) returns before the job asks for a lease: the governor
    never hears of the job, and no placement group is ever created for it."""
    import ray
    from ray.util import placement_group_table

    from runtime.control.governor import get_or_create_governor

    groups_before = set(placement_group_table())
    spec = make_spec(tmp_path, f"it-gov-{item.replace('_', '-')}", "http://127.0.0.1:9/metrics", rows_per_s=800, slices=3)
    spec = spec.model_copy(update=breakage(spec, tmp_path))

    summary = run_job(spec)

    assert summary["status"] == "checklist_failed" and summary["rows_consumed"] == 0
    assert ray.get(get_or_create_governor().lease.remote(spec.name)) is None
    assert set(placement_group_table()) == groups_before
    assert summary["checklist"]["failed_items"] == [item]
    failed = next(i for i in summary["checklist"]["items"] if i["item"] == item)
    assert needle in failed["detail"], failed["detail"]
    run = MlflowClient(spec.tracking.uri).get_run(summary["mlflow_run_id"])
    assert run.data.tags["headroom.checklist.failed"] == item and needle in run.data.tags[f"headroom.checklist.{item}"]


def test_a_job_that_fails_mid_training_still_leaves_a_postmortem(ray_session, tmp_path):
    class Boom(RuntimeError):
        pass

    def on_status(snap: dict) -> None:
        if snap["rows_consumed"] > 0:
            raise Boom("the operator's callback broke")

    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        spec = make_spec(tmp_path, "it-gov-boom", server.metrics_url, rows_per_s=800, slices=3)
        with pytest.raises(Boom):
            run_job(spec, on_status=on_status)

    client = MlflowClient(spec.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("it").experiment_id],
                                filter_string="attributes.run_name LIKE 'it-gov-boom-%'")
    assert run.info.status == "FAILED"
    report = fetch_postmortem(run.info.run_id, spec.tracking.uri)  # from the run, as `headroom report` reads it
    assert "| status | **failed** |" in report and "Boom: the operator's callback broke" in report
    assert "## Pre-work checklist: passed" in report
