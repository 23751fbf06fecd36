"""The record `headroom run` leaves for this user's later commands: private, current, cleaned up."""

from __future__ import annotations

import json
import os

from runtime import loopback


def test_the_record_is_private_and_joins_only_a_live_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADROOM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 64)
    refreshed = []
    monkeypatch.setattr(loopback, "_refresh_ray_settings", lambda: refreshed.append(True))
    path = loopback.remember_private_cluster("127.0.0.1:6379")
    assert path == tmp_path / "home" / "cluster.json" and oct(path.stat().st_mode & 0o777) == "0o600"
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", loopback.SINGLE_NODE_ENV):
        monkeypatch.delenv(var, raising=False)
    assert loopback.join_private_cluster() == "127.0.0.1:6379"
    assert os.environ["RAY_AUTH_TOKEN"] == "t" * 64 and os.environ["RAY_AUTH_MODE"] == "token" and refreshed
    loopback.forget_private_cluster()
    assert not path.exists() and loopback.join_private_cluster() is None


def test_a_dead_run_or_someone_elses_record_is_not_joined(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADROOM_HOME", str(tmp_path))
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"address": "127.0.0.1:1", "token": "x", "pid": 2**22 + 12345}))  # no such process
    assert loopback.join_private_cluster() is None
    path.write_text("not json")
    assert loopback.join_private_cluster() is None
    path.write_text(json.dumps({"address": "127.0.0.1:1", "token": "x", "pid": os.getpid() + 0}))
    other = dict(json.loads(path.read_text()), pid=1)  # pid 1: alive, but this process is not it
    path.write_text(json.dumps(other))
    loopback.forget_private_cluster()
    assert path.exists()  # another run's record is left alone
