"""Telemetry sources: turn the serving side into a ``Sample`` (tail latency, rate, utilization).

Three real sources sit behind one protocol: scraping a Prometheus exposition endpoint (windowed p99
from histogram bucket deltas between polls), a PromQL instant query against a Prometheus server, and
host CPU through psutil. A source never raises from ``sample``: every failure (down, timeout, garbage,
no baseline, counter reset, frozen histogram) comes back as ``Sample.failed(now, reason)``, which the
control law treats as "no headroom".

>>> src = build_source("prometheus", url="http://127.0.0.1:8000/metrics")  # doctest: +SKIP
>>> src.sample().error, src.sample().p99_ms  # first poll only sets the baseline  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import math
import time
from typing import Callable, Protocol

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from runtime.errors import TelemetryError
from runtime.control.sample import Sample

Buckets = list[tuple[float, float]]  # (upper bound ``le``, cumulative count), sorted, ending at +Inf
Clock = Callable[[], float]


def quantile_from_buckets(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated as PromQL ``histogram_quantile`` does.

    Linear inside the bucket the rank falls in (the first bucket starts at 0); a rank in the +Inf
    bucket gives the highest finite bound. ``None`` when the histogram holds no observations.

    >>> quantile_from_buckets([(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)], 0.5)
    0.1
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        raise ValueError("a histogram needs at least one finite bucket and a +Inf bucket")
    bounds = [le for le, _ in ordered]
    counts: list[float] = []
    for _, count in ordered:  # scrapes are not atomic, so buckets can be out of order: clamp like PromQL
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, in_bucket = 0.0, counts[b]
    if b > 0:
        start, in_bucket, rank = bounds[b - 1], counts[b] - counts[b - 1], rank - counts[b - 1]
    if in_bucket <= 0:  # only for q == 0 with empty leading buckets
        return start
    return start + (bounds[b] - start) * (rank / in_bucket)


def subtract_buckets(later: Buckets, earlier: Buckets) -> Buckets | None:
    """Per-bucket ``later - earlier``: the observations made between two cumulative snapshots.

    ``None`` means a counter reset (a count went down, or the bucket layout changed): the exporter
    restarted and the caller must take ``later`` as a new baseline.

    >>> subtract_buckets([(0.1, 5.0), (math.inf, 9.0)], [(0.1, 2.0), (math.inf, 3.0)])
    [(0.1, 3.0), (inf, 6.0)]
    """
    old = dict(earlier)
    if set(old) != {le for le, _ in later}:
        return None
    delta = [(le, count - old[le]) for le, count in sorted(later)]
    return None if any(count < 0 for _, count in delta) else delta


class TelemetrySource(Protocol):
    """Anything that can say what the serving side looks like now. ``sample`` never raises."""

    def sample(self, now_s: float | None = None) -> Sample: ...


def _positive(value: float | None, field: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        raise TelemetryError(f"{field} must be a positive number of the stated unit, got {value!r}",
                             where=f"telemetry.{field}", fix=f"set {field} to a value > 0")


def _describe(exc: httpx.HTTPError, url: str, timeout_s: float) -> str:
    """One line for a transport failure; the URL first, since that is what an operator checks."""
    if isinstance(exc, httpx.TimeoutException):
        return f"{url}: timed out after {timeout_s:g} s ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"{url}: cannot connect ({exc}); is the server up and the port right?"
    return f"{url}: request failed ({type(exc).__name__}: {exc})"


class _HTTPSource:
    """A lazily built, reused httpx client: lazy so that a source pickles (e.g. into a Ray actor)."""

    timeout_s: float
    _transport: httpx.BaseTransport | None
    _client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s, transport=self._transport)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}  # sockets do not travel; the copy opens its own


class PrometheusScrapeSource(_HTTPSource):
    """Windowed p99 from a Prometheus histogram, scraped from any exposition endpoint (``/metrics``).

    Each poll sums the ``<histogram>_bucket`` series (those matching ``labels``) by ``le`` and takes
    the p99 of the bucket *deltas* over the last ``window_s`` (at least one poll interval), so the
    number reflects recent traffic rather than the whole lifetime of the process. A window of a second
    or two keeps a low-traffic p99 from being "the max of a dozen requests" without slowing the
    reaction to a real spike: a tail quantile moves as soon as 1 % of the window is slow. ``unit_ms`` converts the histogram's
    unit to milliseconds (1000 for seconds, 1 for a histogram already in ms, e.g. Ray Serve's).

    >>> src = PrometheusScrapeSource("http://127.0.0.1:8000/metrics", capacity_rps=200.0)  # doctest: +SKIP
    >>> src.sample(); time.sleep(1); src.sample()  # p99_ms=12.3, rps=84.0, ...  # doctest: +SKIP
    """

    def __init__(self, url: str, histogram: str = "serving_latency_seconds", *,
                 labels: dict[str, str] | None = None, timeout_s: float = 1.0, stale_after_s: float = 5.0,
                 capacity_rps: float | None = None, unit_ms: float = 1000.0, window_s: float = 0.0,
                 clock: Clock = time.time, transport: httpx.BaseTransport | None = None):
        for field, value in (("timeout_s", timeout_s), ("stale_after_s", stale_after_s), ("unit_ms", unit_ms)):
            _positive(value, field)
        _positive(capacity_rps, "capacity_rps", optional=True)
        if not (isinstance(window_s, (int, float)) and 0 <= window_s < math.inf):
            raise TelemetryError(f"window_s must be a number >= 0, got {window_s!r}", where="telemetry.window_s",
                                 fix="use e.g. 2.0 (seconds of traffic behind each p99)")
        self.window_s = float(window_s)
        self._history: collections.deque[tuple[Buckets, float]] = collections.deque()
        self.url, self.histogram, self.labels = url, histogram, dict(labels or {})
        self.timeout_s, self.stale_after_s = timeout_s, stale_after_s
        self.capacity_rps, self.unit_ms, self.clock = capacity_rps, unit_ms, clock
        self._transport = transport
        self._baseline: tuple[Buckets, float] | None = None  # (cumulative buckets, poll time)
        self._last_p99_ms: float | None = None
        self._last_fresh_s: float | None = None  # the last poll that saw new observations

    def sample(self, now_s: float | None = None) -> Sample:
        now = self.clock() if now_s is None else now_s
        try:
            return self._sample(now)
        except Exception as exc:  # noqa: BLE001 -- the contract is "never raises": fail safe instead
            return Sample.failed(now, f"{self.url}: internal error ({type(exc).__name__}: {exc})")

    def _sample(self, now: float) -> Sample:
        current = self._scrape()
        if isinstance(current, str):
            return self._failed(now, current)
        if self._baseline is None:
            self._baseline = (current, now)
            self._history.append((current, now))
            return self._failed(now, f"{self.url}: no baseline yet (first scrape); p99 comes from the next poll")
        previous, previous_s = self._baseline
        if subtract_buckets(current, previous) is None:
            self._baseline, self._last_p99_ms = (current, now), None
            self._history.clear()
            self._history.append((current, now))
            return self._failed(now, f"{self.url}: counter reset (counts went down); rebaselined")
        if now - previous_s <= 0:
            return self._failed(now, f"{self.url}: poll at {now} is not after the previous one at {previous_s}")
        fresh = current[-1][1] > previous[-1][1]  # anything new since the last poll (freeze detection)
        window_start, window_start_s = self._history[0]
        delta = subtract_buckets(current, window_start) or subtract_buckets(current, previous)
        elapsed_s = now - (window_start_s if delta is not None else previous_s)
        self._baseline = (current, now)
        self._history.append((current, now))
        while len(self._history) > 1 and self._history[1][1] <= now - self.window_s:
            self._history.popleft()
        new_observations = delta[-1][1]
        rps = new_observations / elapsed_s
        utilization = rps / self.capacity_rps if self.capacity_rps else None
        if fresh and new_observations > 0:
            p99 = quantile_from_buckets(delta, 0.99)
            self._last_p99_ms = None if p99 is None else p99 * self.unit_ms
            self._last_fresh_s = now
            return Sample(now, p99_ms=self._last_p99_ms, rps=rps, utilization=utilization, staleness_s=0.0)
        # Nothing new: the last p99 still describes the most recent traffic, but only for a while.
        if self._last_p99_ms is None or self._last_fresh_s is None:
            return self._failed(now, f"{self.url}: no observations in {self.histogram} since the baseline")
        staleness_s = now - self._last_fresh_s
        if staleness_s > self.stale_after_s:
            return self._failed(now, f"{self.url}: frozen histogram: no new observations for "
                                     f"{staleness_s:.1f} s (bound {self.stale_after_s:g} s)")
        return Sample(now, p99_ms=self._last_p99_ms, rps=rps, utilization=utilization, staleness_s=staleness_s)

    def _failed(self, now: float, reason: str) -> Sample:
        staleness_s = math.inf if self._last_fresh_s is None else max(0.0, now - self._last_fresh_s)
        return Sample.failed(now, reason, staleness_s=staleness_s)

    def _scrape(self) -> Buckets | str:
        """Cumulative buckets summed by ``le``, or a one-line reason why there are none."""
        try:
            response = self._http().get(self.url, headers={"Accept": "text/plain;version=0.0.4"})
        except httpx.HTTPError as exc:
            return _describe(exc, self.url, self.timeout_s)
        if response.status_code >= 400:
            return f"{self.url}: HTTP {response.status_code} {response.reason_phrase}"
        summed: dict[float, float] = {}
        bucket_name = f"{self.histogram}_bucket"
        names_seen: set[str] = set()
        try:
            for family in text_string_to_metric_families(response.text):
                names_seen.add(family.name)
                for s in family.samples:  # untyped exposition puts *_bucket in its own family
                    if s.name != bucket_name or any(s.labels.get(k) != v for k, v in self.labels.items()):
                        continue
                    le = float(s.labels["le"])
                    summed[le] = summed.get(le, 0.0) + float(s.value)
        except Exception as exc:  # noqa: BLE001 -- the parser raises ValueError, KeyError, IndexError...
            return f"{self.url}: unparseable exposition text ({type(exc).__name__}: {exc})"
        if not summed:
            where = f" with labels {self.labels}" if self.labels else ""
            seen = ", ".join(sorted(names_seen)[:8]) or "none"
            return f"{self.url}: histogram {self.histogram!r}{where} not found (families seen: {seen})"
        buckets = sorted(summed.items())
        if not math.isinf(buckets[-1][0]) or any(not math.isfinite(c) or c < 0 for _, c in buckets):
            return f"{self.url}: histogram {self.histogram!r} is malformed (no +Inf bucket or bad counts)"
        return buckets


class PromQLSource(_HTTPSource):
    """Tail latency (and optionally utilization) from a PromQL instant query against Prometheus.

    The query should return seconds (``unit_ms`` converts); the largest finite value over the
    returned series is the p99. ``utilization_query`` should return a 0..1 fraction.

    >>> q = 'histogram_quantile(0.99, sum(rate(serving_latency_seconds_bucket[30s])) by (le))'
    >>> PromQLSource("http://127.0.0.1:9090", q).sample()  # doctest: +SKIP
    """

    def __init__(self, base_url: str, query: str, *, utilization_query: str | None = None,
                 timeout_s: float = 1.0, stale_after_s: float = 10.0, unit_ms: float = 1000.0,
                 clock: Clock = time.time, transport: httpx.BaseTransport | None = None):
        for field, value in (("timeout_s", timeout_s), ("stale_after_s", stale_after_s), ("unit_ms", unit_ms)):
            _positive(value, field)
        self.base_url, self.query, self.utilization_query = base_url.rstrip("/"), query, utilization_query
        self.timeout_s, self.stale_after_s, self.unit_ms, self.clock = timeout_s, stale_after_s, unit_ms, clock
        self._transport = transport

    def sample(self, now_s: float | None = None) -> Sample:
        now = self.clock() if now_s is None else now_s
        try:
            latency = self._query(self.query)
            if isinstance(latency, str):
                return Sample.failed(now, latency)
            p99_s, latency_ts = latency
            if p99_s < 0:
                return Sample.failed(now, f"{self.base_url}: latency query returned {p99_s} < 0")
            utilization, staleness_s = None, max(0.0, now - latency_ts)
            if self.utilization_query:
                util = self._query(self.utilization_query)
                if isinstance(util, str):  # a configured signal that is missing is "no headroom" too
                    return Sample.failed(now, f"utilization query: {util}", staleness_s=staleness_s)
                utilization, staleness_s = util[0], max(staleness_s, now - util[1])
                if utilization < 0:
                    return Sample.failed(now, f"utilization query returned {utilization} < 0", staleness_s)
            if staleness_s > self.stale_after_s:
                return Sample.failed(now, f"{self.base_url}: stale PromQL result: {staleness_s:.1f} s old "
                                          f"(bound {self.stale_after_s:g} s)", staleness_s=staleness_s)
            return Sample(now, p99_ms=p99_s * self.unit_ms, utilization=utilization, staleness_s=staleness_s)
        except Exception as exc:  # noqa: BLE001 -- never raise out of sample
            return Sample.failed(now, f"{self.base_url}: internal error ({type(exc).__name__}: {exc})")

    def _query(self, query: str) -> tuple[float, float] | str:
        """(max finite value, its timestamp) for ``query``, or a one-line reason why not."""
        url = f"{self.base_url}/api/v1/query"
        try:
            response = self._http().get(url, params={"query": query})
        except httpx.HTTPError as exc:
            return _describe(exc, url, self.timeout_s)
        try:
            body = response.json()
        except ValueError:
            return f"{url}: HTTP {response.status_code}, body is not JSON: {response.text[:80]!r}"
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            return f"{url}: HTTP {response.status_code}, query {query!r} failed: {str(error)[:200]}"
        data = body.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar" and isinstance(result, list) and len(result) == 2:
            points = [result]
        elif kind == "vector" and isinstance(result, list):
            points = [series.get("value") for series in result if isinstance(series, dict)]
        else:
            return f"{url}: query {query!r} gave resultType {kind!r}; expected vector or scalar"
        values = [(float(p[1]), float(p[0])) for p in points if isinstance(p, list) and len(p) == 2]
        if not values:
            return f"{url}: query {query!r} returned no series (metric missing or no traffic in the range)"
        if any(math.isinf(v) for v, _ in values):
            return f"{url}: query {query!r} returned an infinite value"
        if any(not math.isfinite(ts) for _, ts in values):  # an unknown age cannot be judged fresh
            return f"{url}: query {query!r} returned a sample without a valid timestamp"
        finite = [(v, ts) for v, ts in values if not math.isnan(v)]
        if not finite:  # histogram_quantile over a window with no observations is NaN
            return f"{url}: query {query!r} returned NaN (no observations in the range)"
        return max(finite)


class HostCPUSource:
    """Host CPU utilization (0..1) since the previous sample; no latency.

    Keeps its own ``cpu_times`` baseline rather than ``psutil.cpu_percent(interval=None)``, whose
    baseline is global to the process: two callers of that would steal each other's interval.

    >>> src = HostCPUSource(); time.sleep(0.5); src.sample().utilization  # e.g. 0.23  # doctest: +SKIP
    """

    def __init__(self, clock: Clock = time.time, *, cpu_times: Callable[[], object] = psutil.cpu_times):
        self.clock, self._cpu_times = clock, cpu_times
        self._last = self._busy_total()  # prime: the first sample measures from construction

    def _busy_total(self) -> tuple[float, float]:
        t = self._cpu_times()
        # Same accounting as psutil.cpu_percent: guest time is already inside user/nice on Linux.
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        return total - t.idle - getattr(t, "iowait", 0.0), total

    def sample(self, now_s: float | None = None) -> Sample:
        now = self.clock() if now_s is None else now_s
        try:
            busy, total = self._busy_total()
            busy_delta, total_delta = busy - self._last[0], total - self._last[1]
            self._last = (busy, total)
            if total_delta <= 0:  # sampled twice within one kernel tick: nothing measured
                return Sample.failed(now, "host cpu: no time elapsed since the previous sample")
            utilization = min(1.0, max(0.0, busy_delta / total_delta))
            return Sample(now, utilization=utilization, staleness_s=0.0)
        except Exception as exc:  # noqa: BLE001 -- never raise out of sample
            return Sample.failed(now, f"host cpu: psutil failed ({type(exc).__name__}: {exc})")


SOURCE_KINDS = ("prometheus", "promql", "host")


def build_source(kind: str, *, url: str | None = None, histogram: str = "serving_latency_seconds", window_s: float = 0.0,
                 query: str | None = None, timeout_s: float = 1.0, stale_after_s: float | None = None,
                 capacity_rps: float | None = None) -> TelemetrySource:
    """A telemetry source from config values; raises ``TelemetryError`` naming the field to fix.

    ``url`` is the exposition endpoint for "prometheus" and the Prometheus server for "promql";
    ``stale_after_s=None`` keeps each source's default.

    >>> build_source("promql", url="http://prom:9090", query="max(p99_seconds)")  # doctest: +SKIP
    """
    if kind not in SOURCE_KINDS:
        raise TelemetryError(f"unknown telemetry kind {kind!r}", where="telemetry.kind",
                             fix=f"use one of {', '.join(SOURCE_KINDS)}")
    if kind == "host":
        return HostCPUSource()
    if not url or not url.startswith(("http://", "https://")):
        example = "http://127.0.0.1:8000/metrics" if kind == "prometheus" else "http://127.0.0.1:9090"
        raise TelemetryError(f"telemetry kind {kind!r} needs an http(s) url, got {url!r}",
                             where="telemetry.url", fix=f"set url, e.g. {example}")
    stale = {} if stale_after_s is None else {"stale_after_s": stale_after_s}
    if kind == "prometheus":
        if not histogram:
            raise TelemetryError("telemetry kind 'prometheus' needs a histogram name", where="telemetry.histogram",
                                 fix="set histogram to the metric's base name, e.g. serving_latency_seconds")
        return PrometheusScrapeSource(url, histogram, timeout_s=timeout_s, capacity_rps=capacity_rps,
                                      window_s=window_s, **stale)
    if not query:
        raise TelemetryError("telemetry kind 'promql' needs a query", where="telemetry.query",
                             fix="set query, e.g. histogram_quantile(0.99, sum(rate("
                                 "serving_latency_seconds_bucket[30s])) by (le))")
    return PromQLSource(url, query, timeout_s=timeout_s, **stale)
