"""``headroom submit --window auto``: a queued job starts when its planned window opens, not before."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import ray
import yaml

from runtime.windows.scheduler import get_or_create_scheduler
from tests.integration.test_governed_job import assert_exactly_once, make_spec
from tests.support import LatencyServer, LoadThread

pytestmark = pytest.mark.integration


def test_submitted_job_waits_for_its_window_then_runs_under_the_governor(ray_session, tmp_path):
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        spec = make_spec(tmp_path, "it-windowed", server.metrics_url, rows_per_s=2000, slices=2, rows=1000)
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec.model_dump()))
        opens_at = time.time() + 8
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps([{"job": "it-windowed", "start": iso(opens_at), "end": iso(opens_at + 600)},
                                    {"job": "other", "start": iso(opens_at - 100), "end": iso(opens_at + 100)}]))
        out = subprocess.run([str(Path(sys.executable).with_name("headroom")), "submit", "--window", "auto",
                              "--plan", str(plan), str(spec_path), "--address", ray_session.address],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "queued for its window" in out.stdout
        scheduler = get_or_create_scheduler()
        states = []
        deadline = time.time() + 240
        while time.time() < deadline:
            entry = next(e for e in ray.get(scheduler.status.remote()) if e["job"] == "it-windowed")
            states.append((time.time(), entry["state"]))
            if entry["state"] in ("finished", "failed"):
                break
            time.sleep(0.5)
    assert entry["state"] == "finished", entry["error"]
    started = min(t for t, s in states if s != "queued")
    assert started >= opens_at - 0.5  # not before the window opened
    assert_exactly_once(entry["summary"])
