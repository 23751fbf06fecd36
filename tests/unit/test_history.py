"""History readers: CSV (errors name the line) and Prometheus ``query_range`` (through httpx.MockTransport)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest

from runtime.errors import DataError, TelemetryError
from runtime.windows.history import History, read_history_csv, read_history_prometheus

HEADER = "timestamp,requests\n"
GOOD = "1995-07-01T00:00:00-04:00,42\n1995-07-01T00:01:00-04:00,61\n"


def write(tmp_path: Path, text: str, name: str = "h.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, text, fragment, line", [
    ("bad timestamp", HEADER + GOOD + "1995-07-01T00:0X:00-04:00,5\n", "bad timestamp", 4),
    ("non-numeric count", HEADER + "1995-07-01T00:00:00-04:00,lots\n", "non-numeric request count 'lots'", 2),
    ("negative count", HEADER + GOOD + "1995-07-01T00:02:00-04:00,-3\n", "must be a finite number >= 0", 4),
    ("nan count", HEADER + "1995-07-01T00:00:00-04:00,nan\n", "must be a finite number >= 0", 2),
    ("no offset", HEADER + "1995-07-01T00:00:00,5\n", "has no UTC offset", 2),
    ("one column", HEADER + GOOD + "1995-07-01T00:02:00-04:00\n", "expected 2 columns", 4),
    ("backwards", HEADER + GOOD + "1995-07-01T00:00:30-04:00,5\n", "is not after the previous row", 4),
    ("duplicate", HEADER + GOOD + "1995-07-01T00:01:00-04:00,5\n", "is not after the previous row", 4),
    ("bad header", "time,count\n" + GOOD, "bad header", 1),
    ("empty file", "", "history file is empty", 1),
    ("header only", HEADER, "has a header but no rows", 2),
])
def test_malformed_csv_names_the_line(tmp_path, name, text, fragment, line):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_history_csv(path)
    message = str(err.value)
    assert fragment in message, name
    assert f"{path}:{line}:" in message, name
    assert "fix:" in message and "\n" not in message


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_history_csv(tmp_path / "nope.csv")


def test_gaps_stay_missing_not_zero(tmp_path):
    rows = [f"1995-07-01T00:{m:02d}:00-04:00,{10 + m}\n" for m in (0, 1, 2, 30, 31)]
    h = read_history_csv(write(tmp_path, HEADER + "".join(rows)))
    assert len(h.epoch_s) == 5  # nothing was filled between 00:02 and 00:30
    assert h.step_s == 60.0  # the regular step survives the gap
    assert list(h.requests) == [10, 11, 12, 40, 41]
    assert set(h.utc_offsets_s) == {-4 * 3600}


@pytest.mark.parametrize("stamp, epoch_s", [
    ("1995-07-01T04:00:00Z", 804_571_200.0),
    ("1995-07-01T00:00:00-04:00", 804_571_200.0),
    ("1995-07-01T06:00:00+02:00", 804_571_200.0),
])
def test_offsets_are_honoured(tmp_path, stamp, epoch_s):
    h = read_history_csv(write(tmp_path, HEADER + f"{stamp},1\n"))
    assert h.epoch_s[0] == epoch_s


def test_bom_blank_lines_and_between(tmp_path):
    h = read_history_csv(write(tmp_path, "\ufeff" + HEADER + GOOD + "\n\n1995-07-01T00:02:00-04:00,7\n"))
    assert len(h.epoch_s) == 3
    part = h.between(h.epoch_s[1], h.epoch_s[2])
    assert list(part.requests) == [61.0] and part.source == h.source


def test_nasa_trace_reads():
    h = read_history_csv(Path(__file__).resolve().parents[2] / "data" / "nasa-http-1995-07.csv")
    assert h.step_s == 60.0 and len(h.epoch_s) > 39_000 and np.all(np.diff(h.epoch_s) > 0)


# --- Prometheus ---------------------------------------------------------------------------------

URL = "http://prom.test:9090"


def matrix(*series: list[tuple[float, str]]) -> dict:
    return {"status": "success", "data": {"resultType": "matrix",
                                          "result": [{"metric": {"i": str(k)}, "values": [[t, v] for t, v in s]}
                                                     for k, s in enumerate(series)]}}


def transport_from(answer) -> tuple[httpx.MockTransport, list[dict]]:
    """A real httpx transport that answers with ``answer(params)`` (a Response) and records the queries."""
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query_range"
        params = {k: v[0] for k, v in parse_qs(urlparse(str(request.url)).query).items()}
        seen.append(params)
        return answer(params)

    return httpx.MockTransport(handler), seen


def test_prometheus_sums_series_drops_nan_and_scales_rates():
    transport, seen = transport_from(lambda p: httpx.Response(200, json=matrix(
        [(1000, "1.5"), (1060, "NaN"), (1120, "2")], [(1000, "0.5"), (1120, "1")])))
    h = read_history_prometheus(URL, "sum(rate(x[5m]))", 1000, 1180, step_s=60, transport=transport)
    assert isinstance(h, History)
    assert list(h.epoch_s) == [1000.0, 1120.0]  # the NaN point is a gap, not zero traffic
    assert list(h.requests) == [120.0, 180.0]  # (1.5 + 0.5) rps * 60 s, (2 + 1) * 60
    assert seen[0]["query"] == "sum(rate(x[5m]))" and seen[0]["step"] == "60s"
    assert URL in h.source


def test_prometheus_counts_per_step_are_kept_and_datetimes_accepted():
    transport, _ = transport_from(lambda p: httpx.Response(200, json=matrix([(1_700_000_000, "42")])))
    start = datetime.fromtimestamp(1_700_000_000, timezone.utc)
    h = read_history_prometheus(URL, "q", start, 1_700_000_060, step_s=60, value_is_rate=False, transport=transport)
    assert list(h.requests) == [42.0]


def test_prometheus_long_ranges_are_split_under_the_point_limit():
    def answer(p):
        start, end = float(p["start"]), float(p["end"])
        stamps = np.arange(start, end + 1e-6, 60.0)
        return httpx.Response(200, json=matrix([(t, "1") for t in stamps]))

    transport, seen = transport_from(answer)
    days = 21
    h = read_history_prometheus(URL, "q", 0, days * 86_400, step_s=60, transport=transport)
    assert len(seen) == 4  # 30,240 points in requests of at most 10,000
    for p in seen:
        assert (float(p["end"]) - float(p["start"])) / 60 + 1 <= 10_000
    assert len(h.epoch_s) == days * 1440 and np.all(np.diff(h.epoch_s) == 60.0)


@pytest.mark.parametrize("name, response, fragment", [
    ("bad query", httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error"}),
     "HTTP 400: query failed: parse error"),
    ("not json", httpx.Response(502, text="<html>bad gateway</html>"), "answer is not JSON"),
    ("instant vector", httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}}),
     "not a range vector"),
    ("no series", httpx.Response(200, json=matrix()), "returned no samples"),
    ("garbage series", httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix",
                                                                              "result": [{"values": [[1, "x"]]}]}}),
     "malformed series"),
])
def test_prometheus_errors_name_the_url(name, response, fragment):
    transport, _ = transport_from(lambda p: response)
    with pytest.raises(DataError) as err:
        read_history_prometheus(URL, "q", 0, 600, step_s=60, transport=transport)
    assert fragment in str(err.value), name
    assert f"{URL}/api/v1/query_range" in str(err.value)


@pytest.mark.parametrize("exc, fragment", [
    (httpx.ConnectError("refused"), "unreachable"),
    (httpx.ReadTimeout("slow"), "timed out"),
])
def test_prometheus_transport_failures(exc, fragment):
    def handler(request):
        raise exc

    with pytest.raises(TelemetryError, match=fragment) as err:  # no answer: a runtime failure, not bad data
        read_history_prometheus(URL, "q", 0, 600, transport=httpx.MockTransport(handler))
    assert URL in str(err.value) and isinstance(err.value.__cause__, httpx.HTTPError)


def test_prometheus_rejects_an_empty_range():
    with pytest.raises(DataError, match="empty range"):
        read_history_prometheus(URL, "q", 600, 600, transport=httpx.MockTransport(lambda r: httpx.Response(200)))


def test_prometheus_json_is_what_a_real_server_sends():
    # A trimmed real answer shape (string values, float timestamps) parses.
    body = json.loads('{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},'
                      '"values":[[1700000000.000,"3.25"],[1700000060.000,"+Inf"]]}]}}')
    transport, _ = transport_from(lambda p: httpx.Response(200, json=body))
    h = read_history_prometheus(URL, "q", 1_700_000_000, 1_700_000_120, transport=transport)
    assert list(h.requests) == [195.0]
