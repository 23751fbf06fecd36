"""The demo, run as ``make demo`` runs it (shortened), leaves its post-mortem on its MLflow run, where
the MLflow UI shows it: this test fetches it back through the MLflow client and ``headroom report``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support import free_port

pytestmark = pytest.mark.e2e


def test_demo_post_mortem_is_an_artifact_of_its_mlflow_run(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    demo = subprocess.run([sys.executable, "-m", "examples.demo", "--seconds-per-day", "30", "--rows", "24000",
                           "--port", str(free_port()), "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"),
                           "--tracking-uri", uri], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rows_duplicated"] == 0
    phases = json.loads((tmp_path / "out" / "phases.json").read_text())["phases"]
    assert [p["phase"] for p in phases] == ["baseline", "training", "running", "paused", "post-training"]
    assert all(p["requests"] > 0 and p["client_p99_ms"] for p in phases[:2]), phases  # what users felt, per phase
    training, running, paused = phases[1:4]
    assert running["part_of"] == paused["part_of"] == "training"
    assert running["requests"] + paused["requests"] == training["requests"]  # the split loses no request
    assert "client p99" in demo.stdout and "governor p99" in demo.stdout

    run_id = summary["mlflow_run_id"]
    listed = {Path(a.path).name for a in MlflowClient(uri).list_artifacts(run_id, "postmortem")}
    assert "postmortem.md" in listed and any(name.endswith(".png") for name in listed), listed
    local = MlflowClient(uri).download_artifacts(run_id, "postmortem/postmortem.md", str(tmp_path / "dl"))
    text = Path(local).read_text()
    assert summary["job"] in text and "24000" in text.replace(",", "")

    report = subprocess.run([str(Path(sys.executable).with_name("headroom")), "report", run_id, "--tracking-uri", uri],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and report.stdout.strip() == text.strip()
    with capsys.disabled():
        print(f"\n[figures] demo (shortened): {summary['rows_consumed']} rows, pauses {summary['pauses']}, "
              f"post-mortem artifacts {sorted(listed)}; client p99 per phase "
              f"{[(p['phase'], p['client_p99_ms'], p['client_p99_vs_baseline']) for p in phases]}")
