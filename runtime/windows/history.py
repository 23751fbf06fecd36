"""Traffic history: ``timestamp,requests`` rows read into arrays, with errors that name the line.

Gaps in the series are missing data, not zero traffic: the reader keeps only the rows that exist and
never fills between them.

>>> h = read_history_csv("data/nasa-http-1995-07.csv")  # doctest: +SKIP
>>> h.requests[:3], h.step_s                           # doctest: +SKIP
>>> p = read_history_prometheus("http://prom:9090", "sum(rate(http_requests_total[5m]))",
...                             start=1_700_000_000, end=1_700_604_800, step_s=60)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import DataError, TelemetryError


@dataclass(frozen=True)
class History:
    """Observed request counts: ``epoch_s[i]`` (UTC seconds) had ``requests[i]`` requests in one step."""

    epoch_s: np.ndarray  # float64, strictly increasing
    requests: np.ndarray  # float64, >= 0
    utc_offsets_s: np.ndarray  # the offset each timestamp was written with (local time = epoch + offset)
    source: str

    @property
    def step_s(self) -> float:
        """The most common spacing between consecutive rows (the series' regular step)."""
        if len(self.epoch_s) < 2:
            return 60.0
        diffs = np.diff(self.epoch_s)
        values, counts = np.unique(diffs, return_counts=True)
        return float(values[np.argmax(counts)])

    def between(self, start_s: float, end_s: float) -> "History":
        keep = (self.epoch_s >= start_s) & (self.epoch_s < end_s)
        return History(self.epoch_s[keep], self.requests[keep], self.utc_offsets_s[keep], self.source)


def read_history_csv(path: str | Path) -> History:
    """Read a ``timestamp,requests`` CSV (ISO-8601 timestamps with a UTC offset).

    Raises :class:`DataError` naming the file and line for a missing file, an empty file, a bad header,
    a timestamp without offset, a non-numeric or negative count, or timestamps that go backwards.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DataError("history file not found", where=where, fix="pass an existing CSV with columns timestamp,requests")
    epoch, counts, offsets = [], [], []
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:  # -sig: tolerate a BOM
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError("history file is empty", where=f"{where}:1",
                            fix="write a header line 'timestamp,requests' and one row per step")
        if [h.strip().lower() for h in header[:2]] != ["timestamp", "requests"]:
            raise DataError(f"bad header {header!r}", where=f"{where}:1", fix="the first line must be 'timestamp,requests'")
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < 2:
                raise DataError(f"expected 2 columns, got {len(row)}", where=f"{where}:{line}", fix="write 'timestamp,requests'")
            stamp, count = row[0].strip(), row[1].strip()
            try:
                moment = datetime.fromisoformat(stamp)
            except ValueError:
                raise DataError(f"bad timestamp {stamp!r}", where=f"{where}:{line}",
                                fix="use ISO-8601 with a UTC offset, e.g. 1995-07-01T00:00:00-04:00") from None
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise DataError(f"timestamp {stamp!r} has no UTC offset", where=f"{where}:{line}",
                                fix="append the offset, e.g. -04:00 or Z")
            try:
                value = float(count)
            except ValueError:
                raise DataError(f"non-numeric request count {count!r}", where=f"{where}:{line}", fix="write a number") from None
            if not np.isfinite(value) or value < 0:
                raise DataError(f"request count {count!r} must be a finite number >= 0", where=f"{where}:{line}",
                                fix="write a non-negative number")
            t = moment.timestamp()
            if epoch and t <= epoch[-1]:
                raise DataError(f"timestamp {stamp!r} is not after the previous row", where=f"{where}:{line}",
                                fix="sort the file by time and drop duplicate rows")
            epoch.append(t)
            counts.append(value)
            offsets.append(moment.utcoffset().total_seconds())
    if not epoch:
        raise DataError("history file has a header but no rows", where=f"{where}:2",
                        fix="add at least one 'timestamp,requests' row")
    return History(np.asarray(epoch, dtype=np.float64), np.asarray(counts, dtype=np.float64),
                   np.asarray(offsets, dtype=np.float64), where)


# Prometheus refuses range queries of more than 11,000 points per series; stay under it per request.
_MAX_POINTS_PER_QUERY = 10_000


def _epoch(moment: datetime | float | int, name: str) -> float:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise DataError(f"{name}={moment.isoformat()} has no UTC offset", where=name, fix="pass an aware datetime")
        return moment.timestamp()
    return float(moment)


def read_history_prometheus(base_url: str, query: str, start: datetime | float, end: datetime | float,
                            step_s: float = 60.0, timeout_s: float = 10.0, *, value_is_rate: bool = True,
                            transport: Any = None) -> History:
    """Traffic history from a Prometheus server's ``/api/v1/query_range`` over ``[start, end)``.

    ``query`` is PromQL returning request *rates* per second (e.g. ``sum(rate(http_requests_total[5m]))``),
    stored as requests per step; pass ``value_is_rate=False`` when it already returns counts per step
    (``sum(increase(...[1m]))`` with ``step_s=60``). Several series are summed per timestamp; NaN and
    missing points stay missing (gaps are not zero traffic). Long ranges are split into requests of at
    most 10,000 points. ``transport`` is an ``httpx`` transport (tests pass ``httpx.MockTransport``).

    Raises :class:`TelemetryError` naming the URL on an unreachable server or a timeout (a runtime
    failure), :class:`DataError` on an HTTP or query error, a malformed answer, or no data at all.
    """
    import httpx  # the network library stays out of the import path of the pure planner

    url = f"{base_url.rstrip('/')}/api/v1/query_range"
    start_s, end_s = _epoch(start, "start"), _epoch(end, "end")
    if step_s <= 0 or end_s <= start_s:
        raise DataError(f"empty range: start={start_s}, end={end_s}, step_s={step_s}", where=url,
                        fix="pass start < end and step_s > 0")
    totals: dict[float, float] = {}
    with httpx.Client(transport=transport, timeout=timeout_s) as client:
        chunk_start = start_s
        while chunk_start < end_s:
            last = min(chunk_start + (_MAX_POINTS_PER_QUERY - 1) * step_s, end_s - step_s * 1e-6)
            params = {"query": query, "start": f"{chunk_start:.3f}", "end": f"{last:.3f}", "step": f"{step_s:g}s"}
            for stamp, value in _query_range(client, url, params):
                if start_s <= stamp < end_s:
                    totals[stamp] = totals.get(stamp, 0.0) + value
            chunk_start += _MAX_POINTS_PER_QUERY * step_s
    if not totals:
        raise DataError(f"query {query!r} returned no samples in the range", where=url,
                        fix="check the metric name and labels in the Prometheus UI, and the time range")
    stamps = np.array(sorted(totals), dtype=np.float64)
    values = np.array([totals[t] for t in stamps.tolist()], dtype=np.float64)
    values = np.maximum(values, 0.0) * (step_s if value_is_rate else 1.0)
    return History(stamps, values, np.zeros_like(stamps), f"{url}?query={query}")


def _query_range(client: Any, url: str, params: dict[str, str]) -> list[tuple[float, float]]:
    """One ``query_range`` request, translated into (epoch_s, value) pairs, or a :class:`TelemetryError`
    (no answer) or :class:`DataError` (a wrong one)."""
    import httpx

    try:
        response = client.get(url, params=params)
    except httpx.TimeoutException as exc:
        raise TelemetryError(f"Prometheus timed out ({exc.__class__.__name__})", where=url,
                        fix="raise timeout_s or shorten the range / coarsen the step") from exc
    except httpx.HTTPError as exc:
        raise TelemetryError(f"Prometheus unreachable: {exc}", where=url,
                        fix="check the URL and that the server is up and reachable from here") from exc
    try:
        body = response.json()
    except ValueError:
        raise DataError(f"HTTP {response.status_code}, answer is not JSON: {response.text[:120]!r}", where=url,
                        fix="point at the Prometheus server itself (its /api/v1 endpoint)") from None
    if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
        detail = body.get("error", body) if isinstance(body, dict) else body
        raise DataError(f"HTTP {response.status_code}: query failed: {str(detail)[:200]}", where=url,
                        fix="fix the PromQL (try it in the Prometheus UI)")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise DataError("answer is not a range vector (resultType 'matrix')", where=url,
                        fix="query an instant expression such as sum(rate(http_requests_total[5m]))")
    pairs: list[tuple[float, float]] = []
    for series in data["result"]:
        try:
            for stamp, value in series["values"]:
                number = float(value)
                if np.isfinite(number):  # NaN / Inf points are missing data, not traffic
                    pairs.append((float(stamp), number))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed series in the answer: {str(series)[:120]}", where=url,
                            fix="check that the server speaks the Prometheus HTTP API") from exc
    return pairs
