"""Telemetry sources against real servers: a real Prometheus scraping a real latency server.

Needs the Prometheus binary that ``scripts/fetch_prometheus.sh`` unpacks under ``.tools/``; without
it these tests fail (not skip), because a skipped PromQL test would hide a broken telemetry path.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from runtime.control.sample import Sample
from runtime.control.telemetry import PrometheusScrapeSource, PromQLSource
from tests.support import LatencyServer, LoadThread, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = Path(os.environ.get("HEADROOM_PROMETHEUS", ROOT / ".tools/prometheus/usr/bin/prometheus"))
P99_QUERY = "histogram_quantile(0.99, sum(rate(serving_latency_seconds_bucket[5s])) by (le))"
LOAD_RPS = 50.0


def wait_for(check: Callable[[], Sample], done: Callable[[Sample], bool], timeout_s: float) -> Sample:
    """Poll ``check`` until ``done`` holds; returns the last sample either way (asserts say why)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sample = check()
        if done(sample) or time.monotonic() > deadline:
            return sample
        time.sleep(0.25)


@pytest.fixture(scope="module")
def serving() -> Iterator[LatencyServer]:
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=LOAD_RPS):
        yield server


@pytest.fixture(scope="module")
def prometheus(serving: LatencyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (PROMETHEUS.is_file() and os.access(PROMETHEUS, os.X_OK)):
        pytest.fail(f"Prometheus binary not found at {PROMETHEUS}; run scripts/fetch_prometheus.sh "
                    "(the Makefile runs it before the tests) or set HEADROOM_PROMETHEUS", pytrace=False)
    work = tmp_path_factory.mktemp("prometheus")
    target = serving.url.removeprefix("http://")
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n"
        "scrape_configs:\n  - job_name: serving\n    scrape_interval: 500ms\n    scrape_timeout: 400ms\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log_path = work / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={work / 'data'}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/-/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after 30 s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_promql_p99_follows_serving_latency(serving: LatencyServer, prometheus: str) -> None:
    utilization_query = f"sum(rate(serving_latency_seconds_count[5s])) / {2 * LOAD_RPS}"
    src = PromQLSource(prometheus, P99_QUERY, utilization_query=utilization_query, timeout_s=2.0)
    serving.set_delay(0.002)
    # rate() needs a few scrapes inside its 5 s range before the request rate settles
    fast = wait_for(src.sample, lambda s: s.ok and s.p99_ms < 50 and s.utilization > 0.2, timeout_s=20)
    assert fast.ok, fast.error
    assert fast.p99_ms < 50
    assert fast.staleness_s < 2.0
    assert 0.2 < fast.utilization < 0.8  # ~50 rps against a nominal 100 rps capacity

    serving.set_delay(0.2)
    try:
        slow = wait_for(src.sample, lambda s: s.ok and s.p99_ms > 150, timeout_s=20)
    finally:
        serving.set_delay(0.002)
    assert slow.ok, slow.error
    # The 0.2 s requests land in the (0.2, 0.25] bucket on a quiet host; on a busy one (CI, three test
    # workers) 1 % of them took over 0.3 s: the p99 of a 0.2 s service, far from the fast one's 50 ms.
    assert 150 < slow.p99_ms <= 500


def test_promql_missing_metric_is_a_failed_sample(prometheus: str) -> None:
    sample = PromQLSource(prometheus, "histogram_quantile(0.99, sum(rate(no_such_metric_bucket[5s])) by (le))"
                          ).sample()
    assert not sample.ok
    assert "no series" in sample.error


def test_promql_bad_query_reports_prometheus_error(prometheus: str) -> None:
    sample = PromQLSource(prometheus, "histogram_quantile(0.99, sum(rate(").sample()
    assert not sample.ok
    assert "HTTP 400" in sample.error and "parse error" in sample.error


def test_promql_server_down_is_a_failed_sample() -> None:
    sample = PromQLSource(f"http://127.0.0.1:{free_port()}", P99_QUERY).sample()
    assert not sample.ok and "cannot connect" in sample.error


# --------------------------------------------------------------------------------------------------
# PrometheusScrapeSource straight against the server's /metrics
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def loaded() -> Iterator[tuple[LatencyServer, LoadThread]]:
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=LOAD_RPS) as load:
        yield server, load


def test_scrape_p99_rises_with_latency(loaded: tuple[LatencyServer, LoadThread]) -> None:
    server, _ = loaded
    src = PrometheusScrapeSource(server.metrics_url, capacity_rps=2 * LOAD_RPS)
    first = src.sample()
    assert not first.ok and "no baseline" in first.error
    time.sleep(1.0)
    fast = src.sample()
    assert fast.ok, fast.error
    assert fast.p99_ms < 50
    assert 0.5 * LOAD_RPS < fast.rps < 1.5 * LOAD_RPS and 0.25 < fast.utilization < 0.75

    server.set_delay(0.2)
    time.sleep(1.0)
    slow = src.sample()
    assert slow.ok, slow.error
    assert slow.p99_ms > 150


@pytest.mark.parametrize("mode,reason", [
    ("down", "request failed"),
    ("error", "HTTP 500"),
    ("garbage", "unparseable exposition text"),
    ("hang", "timed out after 2 s"),
])
def test_scrape_faults_are_failed_samples(loaded: tuple[LatencyServer, LoadThread], mode: str, reason: str) -> None:
    server, _ = loaded
    # 2 s, not less: the server, its load and other test processes share a small, busy CPU
    src = PrometheusScrapeSource(server.metrics_url, timeout_s=2.0)
    src.sample()
    time.sleep(0.3)
    assert src.sample().ok
    server.set_metrics_mode(mode)
    started = time.monotonic()
    failed = src.sample()
    elapsed_s = time.monotonic() - started
    assert not failed.ok and reason in failed.error, failed.error
    assert elapsed_s < 4.0  # a hung exporter costs one timeout, not a stuck governor loop
    server.set_metrics_mode("ok")
    time.sleep(0.3)
    recovered = src.sample()
    assert recovered.ok, recovered.error


def _settled(server: LatencyServer, quiet_s: float = 0.3, timeout_s: float = 10.0) -> None:
    """Wait until no request has finished for ``quiet_s``."""
    deadline = time.time() + timeout_s
    last, since = server.predict_count, time.time()
    while time.time() < deadline:
        time.sleep(0.05)
        if server.predict_count != last:
            last, since = server.predict_count, time.time()
        elif time.time() - since >= quiet_s:
            return
    raise AssertionError(f"requests kept finishing for {timeout_s} s after the freeze")


def test_scrape_a_stuck_server_goes_stale_and_an_idle_one_is_headroom(loaded: tuple[LatencyServer, LoadThread]) -> None:
    server, load = loaded
    src = PrometheusScrapeSource(server.metrics_url, stale_after_s=2.0, idle_after_s=1.0, in_flight="serving_requests_in_flight")
    src.sample()
    time.sleep(0.3)
    assert src.sample().ok
    server.set_metrics_mode("frozen")  # the exporter keeps answering, but requests stop finishing
    _settled(server)  # requests already past the gate at the freeze have finished (a busy host may delay them)
    src.sample()
    time.sleep(0.3)
    still = src.sample()
    assert still.ok and not still.idle and 0 < still.staleness_s <= 2.0 and still.in_flight > 0, still
    time.sleep(2.0)
    stuck = src.sample()
    assert not stuck.ok and "none finished" in stuck.error, stuck
    assert stuck.staleness_s > 2.0
    load.set_rps(0)  # the stuck requests finish (or time out) and nobody calls any more: idle
    server.set_metrics_mode("ok")
    time.sleep(6.0)
    src.sample()
    time.sleep(1.5)
    idle = src.sample()
    assert idle.ok and idle.idle, idle
    load.set_rps(LOAD_RPS)


def test_scrape_server_gone_is_a_failed_sample(loaded: tuple[LatencyServer, LoadThread]) -> None:
    server, load = loaded
    src = PrometheusScrapeSource(server.metrics_url)
    src.sample()
    load.stop()
    server.stop()
    gone = src.sample()
    assert not gone.ok and "cannot connect" in gone.error
