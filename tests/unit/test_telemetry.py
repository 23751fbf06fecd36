"""Unit tests for runtime.control.telemetry: quantile math, and every source against an httpx.MockTransport fake.

No Ray, no sockets: the fakes below are real httpx transports that answer from in-memory state.
"""

from __future__ import annotations

import collections
import math
import pickle

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import TelemetryError
from runtime.control.sample import Sample
from runtime.control.telemetry import (
    GPUSource,
    HostCPUSource,
    PrometheusScrapeSource,
    Prober,
    ProbedSource,
    PromQLSource,
    WithGPUUtilization,
    build_source,
    quantile_from_buckets,
    subtract_buckets,
)

INF = math.inf

# --------------------------------------------------------------------------------------------------
# quantile_from_buckets: expected values worked out by hand with PromQL's histogram_quantile rules
# --------------------------------------------------------------------------------------------------
QUANTILE_CASES = [
    # (name, buckets, q, expected)
    ("empty histogram", [(0.1, 0), (INF, 0)], 0.99, None),
    ("all in first bucket, lower bound 0", [(0.1, 10), (INF, 10)], 0.5, 0.05),
    ("interpolates inside the bucket", [(0.1, 50), (0.2, 100), (INF, 100)], 0.99, 0.198),
    ("rank exactly at a bucket edge", [(0.1, 50), (0.2, 100), (INF, 100)], 0.5, 0.1),
    ("lands in +Inf -> highest finite bound", [(0.1, 10), (0.2, 10), (INF, 20)], 0.99, 0.2),
    ("unsorted input is sorted", [(INF, 100), (0.2, 100), (0.1, 50)], 0.99, 0.198),
    ("non-monotonic counts are clamped", [(0.1, 60), (0.2, 50), (0.3, 100), (INF, 100)], 0.8, 0.25),
    ("q=1 gives the bucket holding the last observation", [(0.1, 5), (0.2, 10), (INF, 10)], 1.0, 0.2),
    ("q=0 with an empty first bucket", [(0.1, 0), (0.2, 10), (INF, 10)], 0.0, 0.0),
    ("first bound <= 0 returns that bound", [(0.0, 5), (1.0, 10), (INF, 10)], 0.25, 0.0),
    ("fractional counts (rates) work", [(0.01, 9.9), (0.05, 10.0), (INF, 10.0)], 0.99, 0.01),
]


@pytest.mark.parametrize("name,buckets,q,expected", QUANTILE_CASES, ids=[c[0] for c in QUANTILE_CASES])
def test_quantile_from_buckets(name, buckets, q, expected):
    got = quantile_from_buckets(buckets, q)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("buckets,q", [
    ([(0.1, 1), (INF, 1)], 1.5),
    ([(0.1, 1), (INF, 1)], -0.1),
    ([(0.1, 1), (0.2, 1)], 0.5),  # no +Inf bucket
    ([(INF, 1)], 0.5),  # no finite bucket
])
def test_quantile_rejects_bad_input(buckets, q):
    with pytest.raises(ValueError):
        quantile_from_buckets(buckets, q)


@settings(deadline=None)  # a host that stalls one example is no failure
@given(
    increments=st.lists(st.integers(min_value=0, max_value=1000), min_size=2, max_size=12),
    q1=st.floats(min_value=0, max_value=1),
    q2=st.floats(min_value=0, max_value=1),
)
def test_quantile_is_monotone_and_bounded(increments, q1, q2):
    bounds = [0.001 * 2**i for i in range(len(increments) - 1)] + [INF]
    cumulative = [float(sum(increments[: i + 1])) for i in range(len(increments))]
    buckets = list(zip(bounds, cumulative))
    lo, hi = sorted((q1, q2))
    a, b = quantile_from_buckets(buckets, lo), quantile_from_buckets(buckets, hi)
    if cumulative[-1] == 0:
        assert a is None and b is None
        return
    assert 0.0 <= a <= b <= bounds[-2]


SUBTRACT_CASES = [
    ("normal window", [(0.1, 5), (INF, 9)], [(0.1, 2), (INF, 3)], [(0.1, 3), (INF, 6)]),
    ("no change", [(0.1, 5), (INF, 9)], [(0.1, 5), (INF, 9)], [(0.1, 0), (INF, 0)]),
    ("counter went down = reset", [(0.1, 1), (INF, 2)], [(0.1, 2), (INF, 3)], None),
    ("bucket layout changed = reset", [(0.2, 5), (INF, 9)], [(0.1, 2), (INF, 3)], None),
]


@pytest.mark.parametrize("name,later,earlier,expected", SUBTRACT_CASES, ids=[c[0] for c in SUBTRACT_CASES])
def test_subtract_buckets(name, later, earlier, expected):
    assert subtract_buckets(later, earlier) == expected


# --------------------------------------------------------------------------------------------------
# PrometheusScrapeSource against a fake exporter
# --------------------------------------------------------------------------------------------------
BOUNDS = (0.005, 0.01, 0.1, INF)


class FakeExporter:
    """An in-memory /metrics endpoint: observe latencies, then answer scrapes in a chosen mode."""

    def __init__(self, name: str = "serving_latency_seconds", typed: bool = True):
        self.name, self.typed = name, typed
        self.counts: dict[tuple[tuple[str, str], ...], list[float]] = collections.defaultdict(
            lambda: [0.0] * len(BOUNDS))
        self.counts[()]  # like prometheus_client: an unlabelled histogram exposes zero buckets at once
        self.mode = "ok"
        self.requests: list[httpx.Request] = []
        self.in_flight: float | None = None  # exported as the gauge serving_requests_in_flight when set

    def observe(self, value_s: float, n: int = 1, **labels: str) -> None:
        row = self.counts[tuple(sorted(labels.items()))]
        for i, le in enumerate(BOUNDS):
            if value_s <= le:
                row[i] += n

    def reset(self) -> None:
        self.counts.clear()

    def text(self) -> str:
        lines = [f"# HELP {self.name} latency", f"# TYPE {self.name} histogram"] if self.typed else []
        for labels, row in self.counts.items():
            for le, count in zip(BOUNDS, row):
                label_text = ",".join([f'{k}="{v}"' for k, v in labels] + [f'le="{"+Inf" if le == INF else le}"'])
                lines.append(f"{self.name}_bucket{{{label_text}}} {count}")
        lines.append('other_metric{job="x"} 1.0')
        if self.in_flight is not None:
            lines += ["# TYPE serving_requests_in_flight gauge", f"serving_requests_in_flight {self.in_flight}"]
        return "\n".join(lines) + "\n"

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.mode == "refused":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.mode == "hang":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.mode == "500":
            return httpx.Response(500, text="boom")
        if self.mode == "garbage":
            return httpx.Response(200, text="<html><body>not metrics {{{</body></html>")
        return httpx.Response(200, text=self.text())


URL = "http://exporter.test/metrics"


def scrape_source(exporter: FakeExporter, **kwargs) -> PrometheusScrapeSource:
    kwargs.setdefault("clock", lambda: pytest.fail("tests pass now_s explicitly"))
    return PrometheusScrapeSource(URL, transport=httpx.MockTransport(exporter.handle), **kwargs)


def test_scrape_first_poll_has_no_baseline():
    exporter = FakeExporter()
    exporter.observe(0.004, n=10)
    sample = scrape_source(exporter).sample(now_s=0.0)
    assert not sample.ok
    assert "no baseline" in sample.error
    assert sample.staleness_s == INF


def test_scrape_p99_rps_and_utilization_come_from_the_window_delta():
    exporter = FakeExporter()
    exporter.observe(0.5, n=1000)  # old, slow history must not leak into the window
    src = scrape_source(exporter, capacity_rps=200.0)
    src.sample(now_s=0.0)
    exporter.observe(0.008, n=99)
    exporter.observe(0.05, n=1)
    sample = src.sample(now_s=1.0)
    assert sample.ok, sample.error
    # delta: le .005: 0, .01: 99, .1: 100 -> rank 99 lands at the top of the .01 bucket
    assert sample.p99_ms == pytest.approx(10.0)
    assert sample.rps == pytest.approx(100.0)
    assert sample.utilization == pytest.approx(0.5)
    assert sample.staleness_s == 0.0
    assert exporter.requests[0].headers["accept"].startswith("text/plain")


def test_scrape_hands_the_law_each_poll_s_new_requests_once():
    """The impact guard pools the requests behind readings: a poll carries only what finished since
    the previous one (in ms), and a reading replayed within min_interval_s carries none."""
    exporter = FakeExporter()
    src = scrape_source(exporter, min_interval_s=1.0)
    src.sample(now_s=0.0)
    exporter.observe(0.008, n=30)
    first = src.sample(now_s=1.0)
    exporter.observe(0.05, n=10)
    assert src.sample(now_s=1.5).counts is None  # within min_interval_s: the last reading again, its requests not twice
    second = src.sample(now_s=2.0)
    assert first.counts == ((5.0, 0.0), (10.0, 30.0), (100.0, 30.0), (INF, 30.0))
    assert second.counts == ((5.0, 0.0), (10.0, 0.0), (100.0, 10.0), (INF, 10.0))
    assert src.sample(now_s=3.0).counts is None  # nothing new finished


def test_a_paced_source_repeats_its_last_reading_and_then_hands_over_every_request_once():
    """set_pace: no request to the endpoint until the pace has passed (the last reading again, older),
    then one read carries every request that finished meanwhile; a pace of 0 is the source's own again."""
    exporter = FakeExporter()
    src = scrape_source(exporter, min_interval_s=1.0)
    src.sample(now_s=0.0)
    exporter.observe(0.008, n=30)
    src.sample(now_s=1.0)
    src.set_pace(3.0)
    exporter.observe(0.05, n=10)
    scrapes = len(exporter.requests)
    held = [src.sample(now_s=t) for t in (1.5, 2.5, 3.9)]
    assert len(exporter.requests) == scrapes  # nothing read while the pace holds
    assert [h.staleness_s for h in held] == [0.5, 1.5, 2.9] and all(h.counts is None for h in held)
    fresh = src.sample(now_s=4.0)
    assert len(exporter.requests) == scrapes + 1
    assert fresh.staleness_s == 0.0 and fresh.counts == ((5.0, 0.0), (10.0, 0.0), (100.0, 10.0), (INF, 10.0))
    src.set_pace(0.0)
    src.sample(now_s=5.0)
    assert len(exporter.requests) == scrapes + 2  # back to the endpoint's own refresh


def test_a_paced_reading_is_never_repeated_to_within_a_second_of_stale():
    """A reading that was already old when read (no request finished for 2.5 s, one still in flight)
    is repeated only while it stays a second short of stale_after_s; then the source reads again."""
    exporter = FakeExporter()
    exporter.in_flight = 1.0
    src = scrape_source(exporter, in_flight="serving_requests_in_flight", stale_after_s=5.0, min_interval_s=1.0)
    src.sample(now_s=0.0)
    exporter.observe(0.008, n=30)
    src.sample(now_s=1.0)
    old = src.sample(now_s=3.5)  # read: nothing new for 2.5 s
    assert old.ok and old.staleness_s == 2.5
    src.set_pace(3.0)
    scrapes = len(exporter.requests)
    assert src.sample(now_s=4.4).staleness_s == pytest.approx(3.4) and len(exporter.requests) == scrapes
    src.sample(now_s=5.0)  # 2.5 + 1.5 = 4 s old: a second short of stale, so read afresh
    assert len(exporter.requests) == scrapes + 1
    assert exporter.requests[-1].headers["accept-encoding"] == "identity"  # uncompressed: no gzip for the agent


def test_wrapped_sources_pass_the_pace_on():
    exporter = FakeExporter()
    inner = scrape_source(exporter)
    probed = ProbedSource(inner, Prober("http://127.0.0.1:9/", interval_s=1.0))
    probed.set_pace(2.5)
    assert inner._pace_s == 2.5
    WithGPUUtilization(inner, GPUSource.__new__(GPUSource)).set_pace(1.5)
    assert inner._pace_s == 1.5


def test_scrape_sums_series_and_filters_by_labels():
    exporter = FakeExporter()
    src_all = scrape_source(exporter)
    src_b = scrape_source(exporter, labels={"replica": "b"})
    exporter.observe(0.004, n=0, replica="a")
    exporter.observe(0.004, n=0, replica="b")
    src_all.sample(now_s=0.0)
    src_b.sample(now_s=0.0)
    exporter.observe(0.004, n=100, replica="a")
    exporter.observe(0.05, n=100, replica="b")
    everything, only_b = src_all.sample(now_s=2.0), src_b.sample(now_s=2.0)
    assert everything.rps == pytest.approx(100.0)  # 200 observations over 2 s
    assert only_b.rps == pytest.approx(50.0)
    assert only_b.p99_ms == pytest.approx(10 + 90 * 0.99)  # inside (0.01, 0.1]
    assert everything.p99_ms == pytest.approx(10 + 90 * 0.98)  # rank 198 of 200


def test_scrape_reads_untyped_exposition_and_ms_histograms():
    exporter = FakeExporter(name="ray_serve_latency_ms", typed=False)
    src = scrape_source(exporter, histogram="ray_serve_latency_ms", unit_ms=1.0)
    src.sample(now_s=0.0)
    exporter.observe(0.004, n=10)  # bounds are in the histogram's own unit (ms here)
    assert src.sample(now_s=1.0).p99_ms == pytest.approx(0.005 * 0.99)


def test_scrape_counter_reset_rebaselines():
    exporter = FakeExporter()
    exporter.observe(0.004, n=500)
    src = scrape_source(exporter)
    src.sample(now_s=0.0)
    exporter.reset()  # the exporter restarted
    exporter.observe(0.004, n=3)
    reset = src.sample(now_s=1.0)
    assert not reset.ok and "counter reset" in reset.error
    exporter.observe(0.05, n=10)
    after = src.sample(now_s=2.0)
    assert after.ok and after.rps == pytest.approx(10.0)


def test_scrape_a_quiet_service_keeps_its_last_p99_then_is_idle_headroom():
    exporter = FakeExporter()
    src = scrape_source(exporter, stale_after_s=5.0, idle_after_s=2.0, capacity_rps=100.0)
    src.sample(now_s=0.0)
    exporter.observe(0.008, n=100)
    fresh = src.sample(now_s=1.0)
    assert fresh.ok
    quiet = src.sample(now_s=2.5)  # nothing new for 1.5 s: the last p99 stands, with its age
    assert quiet.ok and quiet.p99_ms == fresh.p99_ms and not quiet.idle
    assert quiet.staleness_s == pytest.approx(1.5) and quiet.rps == 0.0
    idle = src.sample(now_s=3.5)  # 2.5 s without a request, none waiting: idle, the most headroom there is
    assert idle.ok and idle.idle and idle.p99_ms is None and idle.utilization == 0.0 and idle.staleness_s == 0.0
    assert src.sample(now_s=60.0).idle  # however long it stays quiet: never "missing telemetry"
    exporter.observe(0.05, n=100)
    back = src.sample(now_s=61.0)
    assert back.ok and not back.idle and back.p99_ms > fresh.p99_ms


def test_scrape_requests_in_flight_that_stop_finishing_mean_a_stuck_server():
    exporter = FakeExporter()
    exporter.in_flight = 0.0
    src = scrape_source(exporter, stale_after_s=5.0, idle_after_s=2.0, in_flight="serving_requests_in_flight")
    src.sample(now_s=0.0)
    exporter.observe(0.008, n=100)
    exporter.in_flight = 2.0
    fresh = src.sample(now_s=1.0)
    assert fresh.ok and fresh.in_flight == 2.0
    exporter.in_flight = 7.0  # work keeps arriving, nothing finishes
    waiting = src.sample(now_s=4.0)  # 3 s: not idle (requests wait), not yet stuck: the last p99, aged
    assert waiting.ok and not waiting.idle and waiting.p99_ms == fresh.p99_ms and waiting.staleness_s == pytest.approx(3.0)
    stuck = src.sample(now_s=6.5)
    assert not stuck.ok
    assert "7 request(s) in flight but none finished for 5.5 s" in stuck.error and stuck.staleness_s == pytest.approx(5.5)
    exporter.in_flight = 0.0  # they finished, or were dropped, and no more come: idle again
    assert src.sample(now_s=7.0).idle


def test_scrape_no_observations_yet_is_failed_until_idle():
    exporter = FakeExporter()
    src = scrape_source(exporter, idle_after_s=1.0)  # the series exists but stays empty
    src.sample(now_s=0.0)
    early = src.sample(now_s=0.5)
    assert not early.ok and "no observations" in early.error
    assert src.sample(now_s=1.5).idle


def test_scrape_sums_deltas_per_target_and_a_restart_resets_only_its_target():
    a, b = FakeExporter(), FakeExporter()
    exporters = {"http://a.test/metrics": a, "http://b.test/metrics": b}
    targets = list(exporters)

    def handle(request: httpx.Request) -> httpx.Response:
        return exporters[str(request.url)].handle(request)

    src = PrometheusScrapeSource(targets=lambda: targets, transport=httpx.MockTransport(handle),
                                 clock=lambda: pytest.fail("tests pass now_s explicitly"))
    a.observe(0.5, n=1000)  # each target's own history never enters the window
    b.observe(0.004, n=5)
    src.sample(now_s=0.0)
    a.observe(0.004, n=60)
    b.observe(0.05, n=40)
    both = src.sample(now_s=1.0)
    assert both.ok and both.rps == pytest.approx(100.0)
    assert both.p99_ms == pytest.approx(10 + 90 * 0.975)  # rank 99 of 100: 39th of b's 40 in (10, 100] ms
    b.reset()  # b restarted: only b rebaselines, and this poll tells nobody a guess
    b.observe(0.004, n=1)
    assert "http://b.test/metrics: counter reset" in src.sample(now_s=2.0).error
    a.observe(0.004, n=30)
    b.observe(0.004, n=20)
    again = src.sample(now_s=3.0)
    assert again.ok and again.rps == pytest.approx(50.0)
    targets.append("http://c.test/metrics")  # a node joined and is not up yet: a partial view is no view
    exporters["http://c.test/metrics"] = FakeExporter()
    exporters["http://c.test/metrics"].mode = "refused"
    missing = src.sample(now_s=4.0)
    assert not missing.ok and "c.test" in missing.error


def test_scrape_without_any_target_is_no_telemetry():
    src = PrometheusScrapeSource(targets=lambda: [], clock=lambda: 0.0)
    assert "no metrics target discovered" in src.sample(now_s=0.0).error
    broken = PrometheusScrapeSource(targets=lambda: 1 / 0, clock=lambda: 0.0)
    assert "cannot discover the metrics targets (ZeroDivisionError" in broken.sample(now_s=0.0).error


@pytest.mark.parametrize("mode,reason", [
    ("refused", "cannot connect"),
    ("hang", "timed out after 0.5 s"),
    ("500", "HTTP 500"),
    ("garbage", "unparseable exposition text"),
])
def test_scrape_faults_give_failed_samples_and_keep_the_baseline(mode, reason):
    exporter = FakeExporter()
    src = scrape_source(exporter, timeout_s=0.5)
    src.sample(now_s=0.0)
    exporter.observe(0.004, n=10)
    src.sample(now_s=1.0)
    exporter.mode = mode
    failed = src.sample(now_s=2.0)
    assert isinstance(failed, Sample) and not failed.ok
    assert reason in failed.error and URL in failed.error
    assert failed.staleness_s == pytest.approx(1.0)  # since the last poll that saw observations
    exporter.mode = "ok"
    exporter.observe(0.004, n=30)
    back = src.sample(now_s=4.0)
    assert back.ok and back.rps == pytest.approx(10.0)  # delta spans the outage: 30 over 3 s


def test_scrape_missing_histogram_names_what_it_saw():
    exporter = FakeExporter()
    exporter.observe(0.004)
    sample = scrape_source(exporter, histogram="nope_seconds").sample(now_s=0.0)
    assert "histogram 'nope_seconds' not found" in sample.error
    assert "other_metric" in sample.error


def test_scrape_non_increasing_clock_is_failed_not_a_crash():
    exporter = FakeExporter()
    src = scrape_source(exporter)
    src.sample(now_s=5.0)
    exporter.observe(0.004)
    assert "not after the previous" in src.sample(now_s=5.0).error


def test_scrape_uses_injected_clock_and_pickles_without_its_client():
    exporter = FakeExporter()
    times = iter([10.0, 11.0])
    src = PrometheusScrapeSource(URL, clock=lambda: next(times), transport=httpx.MockTransport(exporter.handle))
    assert src.sample().time_s == 10.0
    assert src._client is not None
    state = src.__getstate__()
    assert state["_client"] is None and src._client is not None
    plain = PrometheusScrapeSource(URL)
    plain._client = httpx.Client()
    clone = pickle.loads(pickle.dumps(plain))
    assert clone._client is None and clone.url == URL


@pytest.mark.parametrize("kwargs,field", [
    ({"timeout_s": 0}, "timeout_s"),
    ({"stale_after_s": -1}, "stale_after_s"),
    ({"capacity_rps": 0}, "capacity_rps"),
    ({"unit_ms": float("nan")}, "unit_ms"),
])
def test_scrape_rejects_bad_settings(kwargs, field):
    with pytest.raises(TelemetryError) as info:
        PrometheusScrapeSource(URL, **kwargs)
    assert info.value.where == f"telemetry.{field}"


# --------------------------------------------------------------------------------------------------
# PromQLSource against a fake Prometheus HTTP API
# --------------------------------------------------------------------------------------------------
PROM = "http://prometheus.test:9090"


def vector(*points: tuple[float, str]) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"instance": f"r{i}"}, "value": [ts, value]} for i, (ts, value) in enumerate(points)]}}


def promql(answers: dict[str, object], status: int = 200, **kwargs) -> tuple[PromQLSource, list[httpx.Request]]:
    """A PromQLSource whose server answers each query from ``answers`` (dict -> JSON, str -> raw)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.path == "/api/v1/query"
        answer = answers[request.url.params["query"]]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str):
            return httpx.Response(status, text=answer)
        return httpx.Response(status, json=answer)

    kwargs.setdefault("clock", lambda: 100.0)
    return PromQLSource(PROM + "/", "p99", transport=httpx.MockTransport(handle), **kwargs), seen


def test_promql_takes_max_over_series_and_measures_staleness():
    src, seen = promql({"p99": vector((98.0, "0.05"), (99.5, "0.12"))})
    sample = src.sample()
    assert sample.ok, sample.error
    assert sample.p99_ms == pytest.approx(120.0)
    assert sample.staleness_s == pytest.approx(0.5)
    assert sample.utilization is None and sample.rps is None
    assert seen[0].url.params["query"] == "p99"


def test_promql_scalar_result():
    src, _ = promql({"p99": {"status": "success", "data": {"resultType": "scalar", "result": [100.0, "0.2"]}}})
    assert src.sample().p99_ms == pytest.approx(200.0)


def test_promql_ignores_nan_series_when_others_are_finite():
    src, _ = promql({"p99": vector((100.0, "NaN"), (100.0, "0.03"))})
    assert src.sample().p99_ms == pytest.approx(30.0)


def test_promql_utilization_query():
    src, _ = promql({"p99": vector((100.0, "0.01")), "util": vector((100.0, "0.4"), (100.0, "0.7"))},
                    utilization_query="util")
    sample = src.sample()
    assert sample.ok and sample.utilization == pytest.approx(0.7)


BAD_PROMQL = [
    ("empty result", {"p99": vector()}, 200, "no series"),
    ("all NaN", {"p99": vector((100.0, "NaN"))}, 200, "NaN"),
    ("infinite", {"p99": vector((100.0, "+Inf"))}, 200, "infinite"),
    ("query error", {"p99": {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}},
     400, "parse error at char 3"),
    ("not JSON", {"p99": "<html>proxy error</html>"}, 502, "not JSON"),
    ("matrix instead of vector", {"p99": {"status": "success", "data": {"resultType": "matrix", "result": []}}},
     200, "resultType 'matrix'"),
    ("stale", {"p99": vector((80.0, "0.01"))}, 200, "stale PromQL result: 20.0 s old"),
    ("connection refused", {"p99": httpx.ConnectError("refused")}, 200, "cannot connect"),
    ("timeout", {"p99": httpx.ReadTimeout("timed out")}, 200, "timed out after 1 s"),
    ("utilization missing", {"p99": vector((100.0, "0.01")), "util": vector()}, 200, "utilization query"),
    ("utilization negative", {"p99": vector((100.0, "0.01")), "util": vector((100.0, "-1"))}, 200, "< 0"),
    ("value not a number", {"p99": vector((100.0, "abc"))}, 200, "internal error"),
    # found by the property tests: a negative latency, and a timestamp of NaN that looked fresh
    ("negative latency", {"p99": vector((100.0, "-1"))}, 200, "latency query returned -1.0 < 0"),
    ("NaN timestamp", {"p99": vector(("NaN", "0.01"))}, 200, "without a valid timestamp"),
]


@pytest.mark.parametrize("name,answers,status,reason", BAD_PROMQL, ids=[c[0] for c in BAD_PROMQL])
def test_promql_bad_answers_give_failed_samples(name, answers, status, reason):
    util = {"utilization_query": "util"} if "util" in answers else {}
    src, _ = promql(answers, status=status, **util)
    sample = src.sample()
    assert isinstance(sample, Sample) and not sample.ok
    assert reason in sample.error, sample.error


def test_promql_pickles_without_its_client():
    src, _ = promql({"p99": vector((100.0, "0.01"))})
    src.sample()
    assert src.__getstate__()["_client"] is None


# --------------------------------------------------------------------------------------------------
# HostCPUSource
# --------------------------------------------------------------------------------------------------
CPUTimes = collections.namedtuple("CPUTimes", "user nice system idle iowait guest guest_nice")


def test_host_cpu_utilization_from_its_own_baseline():
    readings = iter([
        CPUTimes(10, 0, 10, 80, 0, 0, 0),  # at construction
        CPUTimes(40, 0, 20, 140, 0, 0, 0),  # +30 user +10 system +60 idle -> 40 % busy
        CPUTimes(40, 0, 20, 140, 0, 0, 0),  # no time passed
    ])
    src = HostCPUSource(clock=lambda: 5.0, cpu_times=lambda: next(readings))
    sample = src.sample()
    assert sample.ok and sample.utilization == pytest.approx(0.4) and sample.p99_ms is None
    assert sample.time_s == 5.0
    assert not src.sample().ok


def test_host_cpu_never_raises():
    calls = iter([CPUTimes(1, 0, 1, 1, 0, 0, 0)])

    def cpu_times():
        return next(calls)  # StopIteration on the second call, as a broken psutil might raise

    sample = HostCPUSource(cpu_times=cpu_times).sample(now_s=1.0)
    assert not sample.ok and "psutil failed" in sample.error


def test_host_cpu_with_real_psutil():
    src = HostCPUSource()
    sum(i * i for i in range(200_000))  # burn a little CPU so some time passes
    sample = src.sample()
    if sample.ok:
        assert 0.0 <= sample.utilization <= 1.0


# --------------------------------------------------------------------------------------------------
# build_source
# --------------------------------------------------------------------------------------------------
def test_build_source_kinds():
    scrape = build_source("prometheus", url=URL, histogram="h_seconds", capacity_rps=50.0, stale_after_s=3.0)
    assert isinstance(scrape, PrometheusScrapeSource)
    assert (scrape.histogram, scrape.capacity_rps, scrape.stale_after_s) == ("h_seconds", 50.0, 3.0)
    query = build_source("promql", url=PROM, query="up", timeout_s=2.0)
    assert isinstance(query, PromQLSource) and query.stale_after_s == 10.0 and query.timeout_s == 2.0
    assert isinstance(build_source("host", url=None), HostCPUSource)


@pytest.mark.parametrize("kind,kwargs,field", [
    ("kafka", {"url": URL}, "telemetry.kind"),
    ("prometheus", {"url": None}, "telemetry.url"),
    ("promql", {"url": "prometheus:9090", "query": "up"}, "telemetry.url"),
    ("promql", {"url": PROM, "query": None}, "telemetry.query"),
    ("prometheus", {"url": URL, "histogram": ""}, "telemetry.histogram"),
    ("prometheus", {"url": URL, "timeout_s": -1.0}, "telemetry.timeout_s"),
])
def test_build_source_errors_name_the_field_and_the_fix(kind, kwargs, field):
    with pytest.raises(TelemetryError) as info:
        build_source(kind, **kwargs)
    assert info.value.where == field
    assert info.value.fix
    assert field in str(info.value) and "fix:" in str(info.value)



def _exposition(counts: dict[float, int]) -> str:
    """A cumulative histogram in exposition format from {upper bound: observations in that bucket}."""
    lines, total = ["# TYPE serving_latency_seconds histogram"], 0
    for le in sorted(counts):
        total += counts[le]
        label = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'serving_latency_seconds_bucket{{le="{label}"}} {total}')
    lines.append(f"serving_latency_seconds_count {total}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("window_s, expect_slow_p99", [(0.0, False), (1.0, True)], ids=["no-window", "1s-window"])
def test_window_keeps_a_recent_slow_tail_in_the_p99(window_s, expect_slow_p99):
    # Poll 1: baseline. Poll 2 (+0.25 s): 5 slow requests. Poll 3 (+0.5 s): 200 fast ones.
    # Without a window poll 3 sees only the fast ones; a 1 s window still holds the slow tail.
    bodies = iter([
        _exposition({0.005: 0, 0.5: 0, float("inf"): 0}),
        _exposition({0.005: 0, 0.5: 5, float("inf"): 0}),
        _exposition({0.005: 200, 0.5: 5, float("inf"): 0}),
    ])
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=next(bodies)))
    src = PrometheusScrapeSource("http://serving/metrics", window_s=window_s, transport=transport)
    src.sample(0.0)
    assert src.sample(0.25).p99_ms > 100
    third = src.sample(0.5)
    assert (third.p99_ms > 100) is expect_slow_p99
    assert third.rps == pytest.approx(205 / 0.5 if window_s else 200 / 0.25)


def test_scrape_an_app_that_never_served_a_request_is_idle_once_quiet_longer_than_the_window():
    """A freshly deployed app: its series exists, empty, for longer than the p99 window. Quiet counts from
    when watching began, not from the sliding window's start (which would never reach idle_after_s)."""
    exporter = FakeExporter()
    src = scrape_source(exporter, window_s=1.0, idle_after_s=3.0)
    samples = [src.sample(now_s=t / 2) for t in range(0, 11)]  # every 0.5 s for 5 s
    assert not any(s.ok for s in samples[1:6]) and "no observations" in samples[5].error  # < 3 s: not yet
    assert all(s.ok and s.idle for s in samples[6:])  # from 3 s on: idle, headroom
