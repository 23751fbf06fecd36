"""The demo's serving app on a real local Ray cluster, driven by the open-loop trace replay."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import ray
from ray import serve

from examples.loadgen import OpenLoopLoad, trace_rate_fn  # noqa: E402
from examples.serving import ServingEndpoints, start_serving, stop_serving  # noqa: E402
from runtime.windows.history import read_history_csv  # noqa: E402
from tests.support import free_port  # noqa: E402

pytestmark = pytest.mark.integration

TRACE = Path(__file__).resolve().parents[2] / "data" / "nasa-http-1995-07.csv"
COUNT_RE = re.compile(r"^serving_latency_seconds_count\s+([0-9.eE+]+)$", re.MULTILINE)


def _latency_count(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=5.0).text
    match = COUNT_RE.search(text)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def endpoints(ray_session) -> Iterator[ServingEndpoints]:
    try:
        yield start_serving(http_port=free_port())
    finally:
        stop_serving()  # also shuts Serve down; the session's Ray cluster stays for the other tests


def test_predict_answers_and_rejects_bad_bodies(endpoints: ServingEndpoints) -> None:
    ok = httpx.post(endpoints.predict_url, json={"instances": [[0.1] * 16, [0.2] * 16]}, timeout=10.0)
    assert ok.status_code == 200 and ok.json()["rows"] == 2
    bad = httpx.post(endpoints.predict_url, json={"instances": [[1.0, 2.0]]}, timeout=10.0)
    assert bad.status_code == 400 and "shape" in bad.json()["error"]


def test_open_loop_trace_replay_is_served_and_measured(endpoints: ServingEndpoints) -> None:
    before = _latency_count(endpoints.metrics_url)
    rate = trace_rate_fn(read_history_csv(TRACE), seconds_per_day=5.0, peak_rps=20.0)
    load = OpenLoopLoad(endpoints.predict_url, rate, duration_s=5.0, timeout_s=5.0, seed=1).start()
    load.join(timeout_s=30.0)
    assert not load.is_alive() and load.error is None

    records = load.records
    assert len(records) >= 30  # ~60 expected: mean of the day's shape times 20 rps over 5 s
    assert all(ok and latency is not None and latency > 0 for _, latency, ok in records)
    stats = load.window_stats()
    assert stats["errors"] == 0 and stats["p99_ms"] is not None

    metrics = httpx.get(endpoints.metrics_url, timeout=5.0)
    assert metrics.status_code == 200
    assert "serving_latency_seconds_bucket{" in metrics.text
    assert _latency_count(endpoints.metrics_url) >= before + len(records)
