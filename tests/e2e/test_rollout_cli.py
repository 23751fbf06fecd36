"""``headroom rollout SPEC`` and ``headroom rollback NAME --app`` as a user runs them, against a router on Ray
Serve (session cluster, 127.0.0.1) taking live traffic, with a real MLflow SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

import ray.serve  # noqa: F401  (a hard dependency: a broken install fails here, it is not skipped)

from mlflow import MlflowClient  # noqa: E402

from examples.router import APP_NAME, start_router, stop_router  # noqa: E402
from runtime.release.registry import PREVIOUS_CHAMPION, alias_version  # noqa: E402
from runtime.tracking.tracker import CHAMPION  # noqa: E402
from tests.support import free_port  # noqa: E402
from tests.support.release import N_FEATURES, LabelledTraffic, fit_linear, register_sklearn  # noqa: E402

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
NAME = "cli-rollout"


def write_spec(tmp_path: Path, uri: str) -> Path:
    spec = {
        "name": NAME,
        "model": {"estimator": "sklearn.linear_model.SGDRegressor"},
        "data": {"path": str(tmp_path / "data"), "target": "y"},
        "validation": {"holdout": str(tmp_path / "holdout.parquet"), "metric": "r2"},
        "serving": {"url": "http://127.0.0.1:9/metrics", "slo_p99_ms": 100},
        "tracking": {"uri": uri, "experiment": "releases"},
        "release": {
            "shadow": {"fraction": 0.5, "duration_s": 3, "agreement_tolerance": 1.0, "max_metric_drop": 0.05},
            "stages": [{"percent": 30, "hold_s": 2}, {"percent": 100, "hold_s": 2}],
            "risk_budget": {"max_p99_increase_ms": 250, "max_prediction_drift": 0.5, "min_requests": 10},
            "poll_interval_s": 0.5,
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def headroom(*args, cwd, timeout=300):
    return subprocess.run([str(BIN / "headroom"), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture()
def router(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_sklearn(uri, NAME, fit_linear(rows=20, seed=1, label_noise=1.0), has_champion=False)
    register_sklearn(uri, NAME, fit_linear(rows=4000, seed=2), has_champion=True)
    try:
        yield uri, start_router(uri, NAME, http_port=free_port())
    finally:
        stop_router()


def test_rollout_then_rollback_from_the_command_line(router, ray_head, tmp_path):
    uri, endpoints = router
    spec = write_spec(tmp_path, uri)
    out = tmp_path / "result.json"
    with LabelledTraffic(endpoints.predict_url, endpoints.feedback_url) as traffic:
        proc = headroom("rollout", str(spec), "--address", ray_head.address, "--out", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["outcome"] == "promoted" and result["champion_after"] == 2
        assert "[rollout] advance" in proc.stderr and "[rollout] promote" in proc.stderr

        proc = headroom("rollback", NAME, "--tracking-uri", uri, "--app", APP_NAME, "--address", ray_head.address,
                        cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "champion v2 -> v1" in proc.stdout and "serving v1" in proc.stdout
        answer = httpx.post(endpoints.predict_url, json={"instances": [[0.0] * N_FEATURES]}, timeout=30).json()
    assert (answer["model"], answer["version"]) == ("champion", 1)
    assert traffic.responses and all(code == 200 for code, _ in traffic.responses), traffic.responses[-3:]
    assert not traffic.feedback_failures, traffic.feedback_failures[:3]
    client = MlflowClient(uri)
    assert alias_version(client, NAME, CHAMPION) == 1 and alias_version(client, NAME, PREVIOUS_CHAMPION) is None

    # Nothing left to roll out, and no such router: one clear line each, exit 1 (a runtime failure).
    for args, expected in ((("rollout", str(spec), "--address", ray_head.address), "no challenger"),
                           (("promote", NAME, "--version", "2", "--tracking-uri", uri, "--app", "nope", "--address",
                             ray_head.address), "no Ray Serve application named 'nope'")):
        proc = headroom(*args, cwd=tmp_path, timeout=120)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
