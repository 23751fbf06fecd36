"""The user's entry points as a user runs them: ``ray job submit`` against ``ray start --head``, and the
``headroom`` console script with good and bad specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from runtime.training.datagen import write_regression_slices
from tests.support import LatencyServer, LoadThread

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def write_spec(tmp_path: Path, metrics_url: str, **overrides) -> Path:
    data, holdout = write_regression_slices(tmp_path / "data", slices=3, rows_per_slice=1000)
    spec = {
        "name": "e2e-submit",
        "model": {"estimator": "sklearn.linear_model.SGDRegressor", "params": {"random_state": 0}},
        "data": {"path": str(data), "target": "y", "id_column": "row_id", "batch_rows": 200},
        "validation": {"holdout": str(holdout), "metric": "r2"},
        "serving": {"url": metrics_url, "slo_p99_ms": 100},
        "budget": {"max_rows_per_s": 3000, "holddown_s": 0.5, "cooldown_s": 1},
        "checkpoint": {"storage": str(tmp_path / "ckpt"), "every_steps": 5},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "e2e"},
    }
    for dotted, value in overrides.items():
        node = spec
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_ray_job_submit_runs_a_governed_job_and_writes_the_summary(ray_head, tmp_path):
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        spec = write_spec(tmp_path, server.metrics_url)
        out = tmp_path / "summary.json"
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(ROOT),
             "--", "python", "-m", "jobs.retrain", str(spec), "--summary-out", str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["status"] == "completed"
    assert summary["rows_consumed"] == summary["rows_total"] == 3000
    assert summary["rows_duplicated"] == 0 and summary["row_ids_verified"] is True
    assert summary["registered_version"] == 1 and summary["registered_alias"] == "champion"


@pytest.mark.parametrize("overrides, expected", [
    ({"serving.slo_p99_ms": None}, "serving.slo_p99_ms"),
    ({"budget.max_workers": "two"}, "budget.max_workers"),
    ({"model.estimator": "sklearn.linear_model.Nope"}, "cannot import estimator"),
    ({"model.estimator": "sklearn.ensemble.RandomForestRegressor"}, "no partial_fit"),
    ({"data.path": "/nonexistent/slices"}, "data.path"),
], ids=["missing-field", "wrong-type", "unknown-estimator", "no-partial-fit", "missing-data-path"])
def test_bad_spec_gives_one_clear_error_line_and_nonzero_exit(tmp_path, overrides, expected):
    spec = write_spec(tmp_path, "http://127.0.0.1:9/metrics", **overrides)
    proc = subprocess.run([str(BIN / "headroom"), "run", str(spec)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0] and str(spec) in lines[0] and "fix:" in lines[0]
    assert "Traceback" not in proc.stderr


def test_status_and_pause_reach_a_headroom_run_from_another_terminal(tmp_path):
    """`headroom run` on its private cluster; then, as from a second terminal (a fresh environment: no
    token, no address), `headroom status --json` lists the job and `headroom pause` pauses it."""
    fresh = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    fresh["HEADROOM_HOME"] = str(tmp_path / "home")
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        spec = write_spec(tmp_path, server.metrics_url, **{"budget.max_rows_per_s": 150})  # ~20 s of training
        run = subprocess.Popen([str(BIN / "headroom"), "run", str(spec), "--json"], cwd=tmp_path, env=fresh,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            record = Path(fresh["HEADROOM_HOME"]) / "cluster.json"
            status = None
            for _ in range(240):
                if record.exists():
                    proc = subprocess.run([str(BIN / "headroom"), "status", "--json"], cwd=tmp_path, env=fresh,
                                          capture_output=True, text=True, timeout=120)
                    if proc.returncode == 0 and json.loads(proc.stdout)["jobs"]:
                        status = json.loads(proc.stdout)
                        break
                time.sleep(0.5)
            assert status is not None, "headroom status never saw the job"
            assert oct(record.stat().st_mode & 0o777) == "0o600"  # the token is this user's alone
            assert [j["job"] for j in status["jobs"]] == ["e2e-submit"]
            paused = subprocess.run([str(BIN / "headroom"), "pause", "e2e-submit", "--json"], cwd=tmp_path, env=fresh,
                                    capture_output=True, text=True, timeout=120)
            assert paused.returncode == 0 and json.loads(paused.stdout) == {"job": "e2e-submit", "manual_pause": True}
            assert "InvalidAuthToken" not in paused.stderr + proc.stderr
            resumed = subprocess.run([str(BIN / "headroom"), "resume", "e2e-submit"], cwd=tmp_path, env=fresh,
                                     capture_output=True, text=True, timeout=120)
            assert resumed.returncode == 0, resumed.stderr[-2000:]
            out, err = run.communicate(timeout=600)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "completed" and summary["pauses"] >= 1  # the manual pause took
    assert not record.exists()  # the run removed its record when it ended
