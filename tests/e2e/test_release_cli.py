"""``headroom promote`` / ``headroom rollback`` as a user runs them, against a real MLflow SQLite store. No Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import SGDRegressor

from runtime.release.registry import PREVIOUS_CHAMPION, alias_version
from runtime.tracking.tracker import CHALLENGER, CHAMPION, Tracker, register_model

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
NAME = "cli-model"


@pytest.fixture()
def store(tmp_path):
    """Two registered versions as a governed job leaves them: v1 champion, v2 challenger."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    for i, has_champion in enumerate((False, True)):
        model = SGDRegressor(random_state=i).fit(x, x @ np.arange(4.0))
        tracker = Tracker(uri, "jobs", f"job-{i}")
        register_model(tracker, model, NAME, beats_champion=True, has_champion=has_champion)
        tracker.end()
    return uri


def headroom(*args, cwd):
    return subprocess.run([str(BIN / "headroom"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stdout + proc.stderr  # nothing to move: a runtime failure, not a usage error
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "fix:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


def test_promote_then_rollback_moves_aliases_and_records_both_events(store, tmp_path):
    client = MlflowClient(store)
    assert (alias_version(client, NAME, CHAMPION), alias_version(client, NAME, CHALLENGER)) == (1, 2)

    proc = headroom("promote", NAME, "--tracking-uri", store, "--reason", "shadow looked fine", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "champion v1 -> v2" in proc.stdout
    assert alias_version(client, NAME, CHAMPION) == 2
    assert alias_version(client, NAME, PREVIOUS_CHAMPION) == 1
    assert alias_version(client, NAME, CHALLENGER) is None  # promoted: no longer waiting
    assert "shadow looked fine" in client.get_model_version(NAME, "2").tags["headroom.release.promote"]

    proc = headroom("rollback", NAME, "--tracking-uri", store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "champion v2 -> v1" in proc.stdout
    assert alias_version(client, NAME, CHAMPION) == 1
    assert alias_version(client, NAME, PREVIOUS_CHAMPION) is None
    assert "rolled back by hand" in client.get_model_version(NAME, "2").tags["headroom.release.rollback"]

    # Both events are MLflow runs with their facts as tags and the event as an artifact.
    exp = client.get_experiment_by_name("headroom")
    runs = {r.data.tags["headroom.release.action"]: r
            for r in client.search_runs([exp.experiment_id]) if "headroom.release.action" in r.data.tags}
    assert set(runs) == {"promote", "rollback"}
    assert runs["promote"].data.tags["headroom.release.champion_after"] == "2"
    assert runs["rollback"].data.tags["headroom.release.champion_after"] == "1"
    event = client.download_artifacts(runs["rollback"].info.run_id, "release/event.json", str(tmp_path))
    assert '"champion_before": 2' in Path(event).read_text()

    # Nothing left to roll back to: one clear line, and champion untouched.
    assert_one_line_error(headroom("rollback", NAME, "--tracking-uri", store, cwd=tmp_path), "no previous-champion")
    assert alias_version(client, NAME, CHAMPION) == 1


def test_promote_an_explicit_version_and_refuse_bad_requests(store, tmp_path):
    client = MlflowClient(store)
    assert_one_line_error(headroom("promote", NAME, "--version", "7", "--tracking-uri", store, cwd=tmp_path),
                          "no version 7")
    assert_one_line_error(headroom("promote", NAME, "--version", "1", "--tracking-uri", store, cwd=tmp_path),
                          "already champion")
    assert_one_line_error(headroom("promote", "no-such-model", "--tracking-uri", store, cwd=tmp_path),
                          "no registered model named 'no-such-model'")
    assert alias_version(client, NAME, CHAMPION) == 1

    client.delete_registered_model_alias(NAME, CHALLENGER)
    assert_one_line_error(headroom("promote", NAME, "--tracking-uri", store, cwd=tmp_path), "no challenger")
    proc = headroom("promote", NAME, "--version", "2", "--tracking-uri", store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (alias_version(client, NAME, CHAMPION), alias_version(client, NAME, PREVIOUS_CHAMPION)) == (2, 1)
