"""MLflow's settings for the span of a job, and the caller's environment back afterwards (MLflow 3.17 reads
its HTTP limits only from the environment, and ``set_tracking_uri`` writes ``MLFLOW_TRACKING_URI``)."""

from __future__ import annotations

import os

import mlflow
import pytest

from runtime.tracking.tracker import HTTP_DEFAULTS, mlflow_scope

KEYS = [*HTTP_DEFAULTS, "MLFLOW_TRACKING_URI"]


@pytest.fixture
def clean_env(monkeypatch):
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    mlflow.set_tracking_uri(None)
    yield
    mlflow.set_tracking_uri(None)


def test_the_settings_hold_inside_and_the_environment_is_restored_after(clean_env):
    before = dict(os.environ)
    with mlflow_scope("sqlite:///inside.db"):
        assert {k: os.environ[k] for k in HTTP_DEFAULTS} == HTTP_DEFAULTS
        assert mlflow.get_tracking_uri() == "sqlite:///inside.db"
    assert dict(os.environ) == before
    assert mlflow.get_tracking_uri() != "sqlite:///inside.db"


def test_an_operators_own_setting_wins_and_stays(clean_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///theirs.db")
    with mlflow_scope("sqlite:///inside.db"):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///theirs.db"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_overlapping_jobs_keep_the_settings_until_the_last_one_ends(clean_env):
    """Two jobs in threads of one process: the first one out must not strip the other's settings."""
    first, second = mlflow_scope("sqlite:///a.db"), mlflow_scope("sqlite:///b.db")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    second.__exit__(None, None, None)
    assert not any(key in os.environ for key in KEYS)


def test_an_error_inside_still_restores(clean_env):
    with pytest.raises(RuntimeError), mlflow_scope("sqlite:///inside.db"):
        raise RuntimeError("the job failed")
    assert not any(key in os.environ for key in KEYS)
