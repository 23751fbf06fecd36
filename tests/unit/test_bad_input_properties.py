"""Bad input, generated: any text or JSON a metrics endpoint, a Prometheus server or a history file can
hold gives either a valid object or the project's own answer — a failed ``Sample`` with a reason (the
telemetry sources' contract: they never raise), or one ``DataError`` naming the file and line — and
never another exception. The spec loader's equivalent lives in test_spec.py. The number of generated
cases that ran is printed at the end of the module."""

from __future__ import annotations

import collections
import json
import math

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import DataError
from runtime.windows.history import History, read_history_csv, read_history_prometheus
from runtime.control.sample import Sample
from runtime.control.telemetry import PrometheusScrapeSource, PromQLSource

CASES: collections.Counter = collections.Counter()
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def report_case_counts(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[bad-input] generated cases run: {dict(CASES)}, total {sum(CASES.values())}")


def _transport(status: int, body: bytes) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, content=body))


def _assert_sample(sample) -> None:
    assert isinstance(sample, Sample)
    if sample.idle:  # read fine and saw no request: no p99 to give, and nothing wrong
        assert sample.ok and sample.error is None and sample.rps == 0
    elif sample.ok:
        assert sample.p99_ms is not None and math.isfinite(sample.p99_ms) and sample.p99_ms >= 0
    else:
        assert isinstance(sample.error, str) and sample.error


# ---- Prometheus exposition text ---------------------------------------------------------------------
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 10**6).map(str),
                    st.sampled_from(["+Inf", "-Inf", "NaN", "", "1e400", "0x10", "1_000"]), st.text(max_size=6))
les = st.one_of(numbers, st.sampled_from(["0.005", "0.01", "0.1", "1", "+Inf"]))
bucket_line = st.builds(lambda le, v, name: f'{name}_bucket{{le="{le}"}} {v}', les, numbers,
                        st.sampled_from(["serving_latency_seconds", "other", "serving_latency_seconds_x"]))
other_line = st.one_of(st.sampled_from(["# TYPE serving_latency_seconds histogram", "# HELP x y", "# TYPE x counter",
                                        "serving_latency_seconds_count 3", "serving_latency_seconds_sum 0.2", ""]),
                       st.text(max_size=40))
exposition = st.one_of(st.text(max_size=300),
                       st.lists(st.one_of(bucket_line, other_line), max_size=14).map("\n".join))


@FUZZ
@given(first=exposition, second=exposition, status=st.sampled_from([200, 200, 200, 404, 500]))
def test_scrape_source_gives_a_sample_for_any_exposition_text(first, second, status):
    CASES["prometheus-text"] += 1
    times = iter([100.0, 101.0])
    bodies = iter([first, second])
    source = PrometheusScrapeSource("http://fuzz/metrics", transport=httpx.MockTransport(
        lambda request: httpx.Response(status, text=next(bodies))), clock=lambda: next(times))
    _assert_sample(source.sample())
    _assert_sample(source.sample())


# ---- PromQL JSON --------------------------------------------------------------------------------------
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=10), st.sampled_from(["NaN", "+Inf", "0.12", "1700000000.5"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)
point = st.lists(json_scalars, min_size=0, max_size=3)
near_valid = st.fixed_dictionaries({
    "status": st.sampled_from(["success", "error", None]),
    "data": st.one_of(json_values, st.fixed_dictionaries({
        "resultType": st.sampled_from(["vector", "scalar", "matrix", "string", None]),
        "result": st.one_of(point, st.lists(st.one_of(json_values, st.fixed_dictionaries({"value": point})),
                                            max_size=3))}))})


@FUZZ
@given(body=st.one_of(near_valid.map(json.dumps), json_values.map(json.dumps), st.binary(max_size=80).map(
    lambda b: b.decode("latin-1"))), status=st.sampled_from([200, 200, 400, 503]))
def test_promql_source_gives_a_sample_for_any_answer(body, status):
    CASES["promql-json"] += 1
    source = PromQLSource("http://fuzz:9090", "q", clock=lambda: 1_700_000_001.0,
                          transport=_transport(status, body.encode("utf-8", "surrogatepass")))
    _assert_sample(source.sample())


@FUZZ
@given(body=st.one_of(near_valid.map(json.dumps), json_values.map(json.dumps), st.text(max_size=60)),
       status=st.sampled_from([200, 200, 400, 503]))
def test_history_range_query_gives_history_or_data_error(body, status):
    CASES["promql-range-json"] += 1
    try:
        history = read_history_prometheus("http://fuzz:9090", "q", 1000, 1600, step_s=60,
                                          transport=_transport(status, body.encode("utf-8", "surrogatepass")))
    except DataError as exc:
        assert "http://fuzz:9090" in str(exc) and "fix:" in str(exc)
    else:
        _assert_history(history)


# ---- history CSV --------------------------------------------------------------------------------------
stamps = st.one_of(st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
                   st.datetimes().map(lambda d: d.isoformat()), st.text(max_size=25),
                   st.sampled_from(["1995-07-01T00:00:00-04:00", "1995-07-01T00:01:00-04:00", "1995-07-01 00:02:00Z"]))
csv_row = st.builds(lambda t, c, extra: ",".join([t, c, *extra]), stamps, numbers, st.lists(st.text(max_size=5), max_size=2))
csv_text = st.one_of(st.text(max_size=200),
                     st.builds(lambda header, rows: "\n".join([header, *rows]),
                               st.sampled_from(["timestamp,requests", "\ufefftimestamp,requests", "time,count", ""]),
                               st.lists(csv_row, max_size=8)))


@FUZZ
@given(text=csv_text)
def test_history_csv_gives_history_or_data_error(tmp_path_factory, text):
    CASES["history-csv"] += 1
    path = tmp_path_factory.mktemp("csv") / "history.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        history = read_history_csv(path)
    except DataError as exc:
        assert str(path) in str(exc) and "fix:" in str(exc) and "\n" not in str(exc)
    else:
        _assert_history(history)


def _assert_history(history) -> None:
    assert isinstance(history, History) and len(history.epoch_s) >= 1
    assert np.all(np.diff(history.epoch_s) > 0) and np.all(np.isfinite(history.requests))
    assert np.all(history.requests >= 0)
