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
import threading
import time
from dataclasses import replace
from typing import Callable, Protocol

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from runtime.errors import TelemetryError
from runtime.control.sample import Buckets, Sample, quantile_from_buckets, sum_buckets  # noqa: F401 -- part of this module's API

Clock = Callable[[], float]




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
    """Windowed p99 from a Prometheus histogram, scraped from exposition endpoints (``/metrics``).

    Each poll scrapes every target (``url``, or the list ``targets()`` returns: e.g. every Ray node's
    metrics endpoint), sums the ``<histogram>_bucket`` series that match ``labels`` by ``le``, and
    keeps each target's own cumulative baseline: a target that restarts resets only itself, and a
    target scraped through a load balancer would not, which is why targets are scraped one by one.
    The p99 is taken over the summed bucket *deltas* of the last ``window_s`` (at least one poll), so
    it reflects recent traffic; a window of a second or two keeps a low-traffic p99 from being "the max
    of a dozen requests" without slowing the reaction: a tail quantile moves as soon as 1 % of the
    window is slow. ``unit_ms`` converts the histogram's unit (1000 for seconds, 1 for milliseconds).

    ``in_flight`` names a gauge of requests accepted and not yet answered (summed over targets and
    series); it becomes the sample's ``in_flight``, which the law holds against ``queue_limit``.

    No request for ``idle_after_s`` and none in flight is *idle*: full headroom, not missing telemetry.
    Requests in flight that stop finishing for ``stale_after_s`` mean a stuck server: a failed sample.
    Between the two, the last p99 stands, with its age as ``staleness_s``.

    >>> src = PrometheusScrapeSource("http://127.0.0.1:8000/metrics", capacity_rps=200.0)  # doctest: +SKIP
    >>> src.sample(); time.sleep(1); src.sample()  # p99_ms=12.3, rps=84.0, ...  # doctest: +SKIP
    """

    def __init__(self, url: str | None = None, histogram: str = "serving_latency_seconds", *,
                 targets: Callable[[], list[str]] | None = None, labels: dict[str, str] | None = None,
                 in_flight: str | None = None, timeout_s: float = 1.0, stale_after_s: float = 5.0,
                 idle_after_s: float | None = None, capacity_rps: float | None = None, unit_ms: float = 1000.0,
                 window_s: float = 0.0, min_interval_s: float = 0.0, clock: Clock = time.time,
                 transport: httpx.BaseTransport | None = None):
        for field, value in (("timeout_s", timeout_s), ("stale_after_s", stale_after_s), ("unit_ms", unit_ms)):
            _positive(value, field)
        _positive(capacity_rps, "capacity_rps", optional=True)
        _positive(idle_after_s, "idle_after_s", optional=True)
        if not (isinstance(window_s, (int, float)) and 0 <= window_s < math.inf):
            raise TelemetryError(f"window_s must be a number >= 0, got {window_s!r}", where="telemetry.window_s",
                                 fix="use e.g. 2.0 (seconds of traffic behind each p99)")
        if (url is None) == (targets is None):
            raise TelemetryError("a scrape source needs exactly one of url and targets", where="telemetry.url",
                                 fix="set url to the /metrics endpoint")
        self.url = url or "(discovered targets)"
        self._targets = targets
        self.histogram, self.labels, self.in_flight = histogram, dict(labels or {}), in_flight
        self.window_s = float(window_s)
        self.min_interval_s = float(min_interval_s)  # an endpoint that refreshes slower is not scraped faster
        self._pace_s = 0.0  # set_pace: the reader's own, slower pace while it needs no fresher reading
        self._last_sample: Sample | None = None
        self.idle_after_s = float(idle_after_s) if idle_after_s is not None else max(self.window_s, 1.0)
        self.timeout_s, self.stale_after_s = timeout_s, stale_after_s
        self.capacity_rps, self.unit_ms, self.clock = capacity_rps, unit_ms, clock
        self._transport = transport
        self._baselines: dict[str, Buckets] = {}  # per target: cumulative buckets at its last scrape
        self._polls: collections.deque[tuple[float, float, Buckets]] = collections.deque()  # (from, to, summed delta)
        self._last_poll_s: float | None = None
        self._last_p99_ms: float | None = None
        self._last_fresh_s: float | None = None  # the last poll that saw new observations
        self._watching_since_s: float | None = None  # the baseline poll: quiet counts from here if nothing came yet

    def sample(self, now_s: float | None = None) -> Sample:
        now = self.clock() if now_s is None else now_s
        last = self._last_sample
        if last is not None and last.error is None and 0 <= now - last.time_s and self._repeat(last, now - last.time_s):
            return replace(last, time_s=now, staleness_s=last.staleness_s + (now - last.time_s), counts=None)
        try:
            self._last_sample = self._sample(now)
        except Exception as exc:  # noqa: BLE001 -- the contract is "never raises": fail safe instead
            self._last_sample = Sample.failed(now, f"{self.url}: internal error ({type(exc).__name__}: {exc})")
        return self._last_sample

    def _repeat(self, last: Sample, age_s: float) -> bool:
        """Within the endpoint's refresh, always; within the pace, while the repeated reading stays a
        second short of ``stale_after_s`` (a reading that was already old when read gets less)."""
        return age_s < self.min_interval_s or (age_s < self._pace_s and last.staleness_s + age_s < self.stale_after_s - 1.0)

    def set_pace(self, seconds: float) -> None:
        """Read the endpoints at most every ``seconds`` (never faster than ``min_interval_s``); between
        reads, :meth:`sample` repeats the last reading, older by the time passed. Each read of a Ray
        node's endpoint costs that node's metrics agent 40-160 ms of CPU (it renders all ~0.55 MB of it), so
        the governor reads every refresh only while it needs to (:func:`runtime.control.law.read_every_s`).
        A repeated reading never comes within a second of ``stale_after_s``: then the source reads."""
        self._pace_s = max(0.0, float(seconds))

    def _urls(self) -> list[str] | str:
        if self._targets is None:
            return [self.url]
        try:
            urls = sorted(self._targets())
        except Exception as exc:  # noqa: BLE001 -- discovery failing is "no telemetry", never a crash
            return f"cannot discover the metrics targets ({type(exc).__name__}: {exc})"
        return urls or "no metrics target discovered (is the cluster up, with a metrics export port?)"

    def _sample(self, now: float) -> Sample:
        urls = self._urls()
        if isinstance(urls, str):
            return self._failed(now, urls)
        scraped: dict[str, tuple[Buckets, float | None]] = {}
        for url in urls:
            got = self._scrape(url)
            if isinstance(got, str):  # one target unread is a partial view: no headroom on a guess
                return self._failed(now, got)
            scraped[url] = got
        layouts = {tuple(le for le, _ in buckets) for buckets, _ in scraped.values()}
        if len(layouts) > 1:
            return self._failed(now, f"{self.url}: the targets' {self.histogram!r} bucket layouts differ; "
                                     "give every replica (or node) the same buckets")
        if self._last_poll_s is not None and now - self._last_poll_s <= 0:
            return self._failed(now, f"{self.url}: poll at {now} is not after the previous one at {self._last_poll_s}")
        new = [u for u in scraped if u not in self._baselines]
        reset = [u for u in scraped if u in self._baselines and subtract_buckets(scraped[u][0], self._baselines[u]) is None]
        gone = set(self._baselines) - set(scraped)
        delta = sum_buckets([subtract_buckets(scraped[u][0], self._baselines[u]) for u in scraped
                              if u not in new and u not in reset])
        first_poll = self._last_poll_s is None
        previous_s = self._last_poll_s
        self._baselines = {u: b for u, (b, _) in scraped.items()}
        self._last_poll_s = now
        in_flight = None if self.in_flight is None else sum(f for _, f in scraped.values() if f is not None)
        if first_poll:
            self._watching_since_s = now
            return self._failed(now, f"{self.url}: no baseline yet (first scrape); p99 comes from the next poll")
        if reset:
            self._polls.clear()
            self._last_p99_ms = None
            return self._failed(now, f"{', '.join(reset)}: counter reset (counts went down); rebaselined")
        if delta is None:  # every target is new (or gone): nothing to compare yet
            return self._failed(now, f"{self.url}: targets changed ({sorted(new)} new, {sorted(gone)} gone); rebaselined")
        self._polls.append((previous_s, now, delta))
        while len(self._polls) > 1 and self._polls[0][1] <= now - self.window_s:
            self._polls.popleft()
        window = sum_buckets([d for _, _, d in self._polls])
        elapsed_s = now - self._polls[0][0]
        observed = window[-1][1]
        rps = observed / elapsed_s
        utilization = rps / self.capacity_rps if self.capacity_rps else None
        if delta[-1][1] > 0:
            self._last_fresh_s = now
        if observed > 0:
            p99 = quantile_from_buckets(window, 0.99)
            self._last_p99_ms = None if p99 is None else p99 * self.unit_ms
            staleness_s = 0.0 if delta[-1][1] > 0 else now - (self._last_fresh_s or now)
            counts = tuple((le * self.unit_ms, c) for le, c in delta) if delta[-1][1] > 0 else None
            return Sample(now, p99_ms=self._last_p99_ms, rps=rps, utilization=utilization,
                          staleness_s=staleness_s, in_flight=in_flight, counts=counts)
        # Quiet since the last new observation, or since watching began (an app that has served nothing yet):
        # not since the window's start, which slides and would never let a quiet spell reach idle_after_s.
        quiet_s = now - (self._last_fresh_s if self._last_fresh_s is not None else self._watching_since_s)
        if in_flight:
            if quiet_s > self.stale_after_s:
                return self._failed(now, f"{self.url}: {in_flight:g} request(s) in flight but none finished for "
                                         f"{quiet_s:.1f} s (bound {self.stale_after_s:g} s): the server is stuck")
        elif quiet_s >= self.idle_after_s:  # nothing finished, nothing waiting: idle is headroom
            return Sample(now, rps=0.0, utilization=0.0 if self.capacity_rps else None, in_flight=in_flight)
        if self._last_p99_ms is None:
            return self._failed(now, f"{self.url}: no observations in {self.histogram} yet "
                                     f"(idle after {self.idle_after_s:g} s without requests)")
        return Sample(now, p99_ms=self._last_p99_ms, rps=0.0, utilization=utilization, staleness_s=quiet_s,
                      in_flight=in_flight)

    def _failed(self, now: float, reason: str) -> Sample:
        staleness_s = math.inf if self._last_fresh_s is None else max(0.0, now - self._last_fresh_s)
        return Sample.failed(now, reason, staleness_s=staleness_s)

    def _scrape(self, url: str) -> tuple[Buckets, float | None] | str:
        """One target's cumulative buckets summed by ``le`` and its in-flight gauge, or why there are none."""
        try:
            # Uncompressed: a Ray node's endpoint is ~0.6 MB, and gzip costs its agent ~5 ms of CPU a read.
            response = self._http().get(url, headers={"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity"})
        except httpx.HTTPError as exc:
            return _describe(exc, url, self.timeout_s)
        if response.status_code >= 400:
            return f"{url}: HTTP {response.status_code} {response.reason_phrase}"
        summed: dict[float, float] = {}
        bucket_name = f"{self.histogram}_bucket"
        names_seen: set[str] = set()
        in_flight: float | None = None
        # Parse only the lines that matter: a Ray node's endpoint is ~0.5 MB of text, most of it other series.
        wanted = (bucket_name, self.in_flight) if self.in_flight else (bucket_name,)
        text = "\n".join(line for line in response.text.splitlines() if line.startswith(wanted)) + "\n"
        try:
            for family in text_string_to_metric_families(text):
                names_seen.add(family.name)
                for s in family.samples:  # untyped exposition puts *_bucket in its own family
                    if self.in_flight is not None and s.name == self.in_flight:
                        in_flight = (in_flight or 0.0) + float(s.value)
                        continue
                    if s.name != bucket_name or any(s.labels.get(k) != v for k, v in self.labels.items()):
                        continue
                    le = float(s.labels["le"])
                    summed[le] = summed.get(le, 0.0) + float(s.value)
        except Exception as exc:  # noqa: BLE001 -- the parser raises ValueError, KeyError, IndexError...
            return f"{url}: unparseable exposition text ({type(exc).__name__}: {exc})"
        if not summed:
            where = f" with labels {self.labels}" if self.labels else ""
            names_seen |= {line.split("{")[0].split(" ")[0] for line in response.text.splitlines()[:2000]
                           if line and not line.startswith("#")}
            if not response.text.strip() or any(not _looks_like_exposition(n) for n in list(names_seen)[:50]):
                try:  # text that is not the exposition format at all says so
                    list(text_string_to_metric_families(response.text))
                except Exception as exc:  # noqa: BLE001
                    return f"{url}: unparseable exposition text ({type(exc).__name__}: {exc})"
            seen = ", ".join(sorted(names_seen)[:8]) or "none"
            return f"{url}: histogram {self.histogram!r}{where} not found (families seen: {seen})"
        buckets = sorted(summed.items())
        if not math.isinf(buckets[-1][0]) or any(not math.isfinite(c) or c < 0 for _, c in buckets):
            return f"{url}: histogram {self.histogram!r} is malformed (no +Inf bucket or bad counts)"
        if in_flight is not None and not (math.isfinite(in_flight) and in_flight >= 0):
            return f"{url}: gauge {self.in_flight!r} is not a count ({in_flight})"
        return buckets, in_flight


def set_pace(source, seconds: float) -> None:
    """``source.set_pace(seconds)`` where the source reads an endpoint it can read less often; others
    (a PromQL query, host CPU) read at every sample."""
    getattr(source, "set_pace", lambda _: None)(seconds)


def _looks_like_exposition(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] in "_:") and all(c.isalnum() or c in "_:" for c in name)


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


class Prober:
    """An active probe: one request to ``url`` every ``interval_s``, timed as a client sees it.

    Through the proxy, the router and the replica's queue, a probe is charged every delay a user's
    request meets, and it lands every ``interval_s`` -- far fresher than a histogram Ray refreshes
    once a second. The price is one extra request per interval on the serving side (a real request:
    pick a cheap route where the application has one). Runs in a daemon thread of its own, started
    at the first :meth:`window` call, so the object pickles into an actor before it starts.

    >>> prober = Prober("http://127.0.0.1:8000/", interval_s=0.2)  # doctest: +SKIP
    >>> prober.window(time.time(), 1.0)  # doctest: +SKIP
    ... # ([12.1, 9.8, 11.0, 10.4, 30.2], 0): latencies ms, failures
    """

    def __init__(self, url: str, *, interval_s: float = 0.2, timeout_s: float = 1.0, clock: Clock = time.time,
                 transport: httpx.BaseTransport | None = None, keep_s: float = 30.0):
        _positive(interval_s, "probe.interval_s")
        _positive(timeout_s, "probe.timeout_s")
        self.url, self.interval_s, self.timeout_s, self.clock = url, interval_s, timeout_s, clock
        self._transport, self.keep_s = transport, keep_s
        self._results: collections.deque[tuple[float, float | None]] = collections.deque()  # (sent at, ms or None)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.sent = 0

    def __getstate__(self) -> dict:  # threads, locks and results stay here; the copy starts its own
        return {**self.__dict__, "_thread": None, "_stop": None, "_lock": None, "_results": collections.deque()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _stop=threading.Event(), _lock=threading.Lock())

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, transport=self._transport) as client:
            while not self._stop.is_set():
                sent_s, started = self.clock(), time.perf_counter()
                try:
                    response = client.get(self.url)
                    ms = (time.perf_counter() - started) * 1e3 if response.status_code < 400 else None
                except httpx.HTTPError:
                    ms = None
                with self._lock:
                    self._results.append((sent_s, ms))
                    while self._results and self._results[0][0] < sent_s - self.keep_s:
                        self._results.popleft()
                self.sent += 1
                self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - started)))

    def window(self, now: float, window_s: float) -> tuple[list[float], int]:
        """Latencies (ms) of the probes sent in the last ``window_s``, and how many of them failed."""
        self._ensure_started()
        with self._lock:
            recent = [ms for sent_s, ms in self._results if now - window_s <= sent_s <= now]
        return [ms for ms in recent if ms is not None], sum(ms is None for ms in recent)


class ProbedSource:
    """A source's sample, made fresher by a :class:`Prober` on the same path users take.

    The p99 is the larger of the source's and the slowest probe of the last ``window_s``: a probe can
    only raise the estimate, and only with a delay it met itself, so it never flatters the service.
    A probe that failed (timeout, error) in the window is a user-visible failure: no headroom.

    >>> src = ProbedSource(build_source("ray_serve", window_s=2.0), Prober("http://127.0.0.1:8000/"))  # doctest: +SKIP
    """

    def __init__(self, inner: TelemetrySource, prober: Prober, window_s: float = 1.0):
        self.inner, self.prober, self.window_s = inner, prober, window_s
        self.timeout_s = max(getattr(inner, "timeout_s", 1.0), prober.timeout_s)

    def sample(self, now_s: float | None = None) -> Sample:
        sample = self.inner.sample(now_s)
        latencies, failures = self.prober.window(sample.time_s, self.window_s)
        if sample.error is not None:
            return sample
        if failures:
            return Sample.failed(sample.time_s, f"probe {self.prober.url}: {failures} of {failures + len(latencies)} "
                                                f"probes in the last {self.window_s:g} s failed or timed out "
                                                f"({self.prober.timeout_s:g} s)", staleness_s=sample.staleness_s)
        if not latencies:
            return sample
        probe_ms = max(latencies)
        if sample.idle or sample.p99_ms is None or probe_ms > sample.p99_ms:
            return replace(sample, p99_ms=probe_ms, staleness_s=0.0)
        return sample

    def set_pace(self, seconds: float) -> None:
        """The inner source's pace (the probe keeps its own interval)."""
        set_pace(self.inner, seconds)

    def close(self) -> None:
        self.prober.close()
        getattr(self.inner, "close", lambda: None)()


class GPUSource:
    """Utilization (0..1, the busiest of ``indices``) of this node's GPUs, through NVML (nvidia-ml-py).

    NVML sees the GPUs of the node it runs on -- the governor's: right for a single node that serves
    and trains. On a cluster, read the serving GPUs where they are, from the DCGM exporter's
    ``DCGM_FI_DEV_GPU_UTIL`` through ``promql``'s ``utilization_query``. Building one on a host without
    NVML raises :class:`TelemetryError` saying so; a later NVML failure is a failed sample.

    >>> GPUSource([0]).sample().utilization  # doctest: +SKIP
    0.42
    """

    def __init__(self, indices: list[int] | None = None, *, clock: Clock = time.time, nvml=None):
        self.indices, self.clock = indices, clock
        self.timeout_s = 1.0
        self._nvml, self._handles = nvml, None
        self._open()

    def __getstate__(self) -> dict:  # handles do not travel; the copy opens NVML itself
        return {**self.__dict__, "_handles": None, "_nvml": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def _open(self) -> None:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                raise TelemetryError("GPU telemetry needs NVML, and nvidia-ml-py is not installed", where="serving.gpu",
                                     fix="pip install nvidia-ml-py, or read GPU use from DCGM (promql) instead") from None
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            indices = list(range(count)) if self.indices is None else list(self.indices)
            bad = [i for i in indices if not 0 <= i < count]
            if bad or not indices:
                raise TelemetryError(f"GPU index {bad or indices} not on this node ({count} GPU(s))", where="serving.gpu.indices",
                                     fix=f"use indices between 0 and {count - 1}")
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        except TelemetryError:
            raise
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            raise TelemetryError(f"NVML is not usable here ({type(exc).__name__}: {exc})", where="serving.gpu",
                                 fix="run the governor on a node with an NVIDIA driver, or read DCGM through promql") from None

    def utilization(self) -> float:
        return max(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles) / 100.0

    def sample(self, now_s: float | None = None) -> Sample:
        now = self.clock() if now_s is None else now_s
        try:
            return Sample(now, utilization=self.utilization(), staleness_s=0.0)
        except Exception as exc:  # noqa: BLE001 -- never raise out of sample
            return Sample.failed(now, f"GPU utilization: NVML failed ({type(exc).__name__}: {exc})")


class WithGPUUtilization:
    """Another source's sample, its utilization the larger of its own and the serving GPUs' (NVML):
    latency stays the primary signal, GPU use joins the load slack."""

    def __init__(self, inner: TelemetrySource, gpu: GPUSource):
        self.inner, self.gpu = inner, gpu
        self.timeout_s = getattr(inner, "timeout_s", 1.0)

    def sample(self, now_s: float | None = None) -> Sample:
        sample = self.inner.sample(now_s)
        if sample.error is not None:
            return sample
        gpu = self.gpu.sample(sample.time_s)
        if gpu.error is not None:
            return Sample.failed(sample.time_s, gpu.error, staleness_s=sample.staleness_s)
        return replace(sample, utilization=max(gpu.utilization, sample.utilization or 0.0))

    def set_pace(self, seconds: float) -> None:
        set_pace(self.inner, seconds)

    def close(self) -> None:
        getattr(self.inner, "close", lambda: None)()


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


SOURCE_KINDS = ("prometheus", "ray_serve", "promql", "host", "gpu")
RAY_SERVE_HISTOGRAM = "ray_serve_http_request_latency_ms"  # Serve's proxy: the ingress, in milliseconds
RAY_SERVE_IN_FLIGHT = "ray_serve_num_ongoing_http_requests"  # requests the proxies hold now
RAY_METRICS_REFRESH_S = 1.0  # Ray's metrics endpoint changes this often at best: scraping faster only costs CPU
RAY_SERVE_MIN_WINDOW_S = 1.5  # Ray's metrics endpoint refreshes every ~1 s: a shorter window would often be empty
UNIT_MS = {"s": 1000.0, "ms": 1.0}


class RayNodeTargets:
    """Every live Ray node's metrics endpoint (``--metrics-export-port``), asked of the GCS at most
    every ``refresh_s``: the ingress histogram lives on each node that runs a Serve proxy.

    >>> RayNodeTargets()()  # doctest: +SKIP
    ['http://127.0.0.1:52817/metrics']
    """

    def __init__(self, refresh_s: float = 5.0, clock: Clock = time.monotonic):
        self.refresh_s, self.clock = refresh_s, clock
        self._cached: tuple[float, list[str]] | None = None

    def __call__(self) -> list[str]:
        now = self.clock()
        if self._cached is None or now - self._cached[0] >= self.refresh_s:
            import ray

            urls = []
            for node in ray.nodes():
                port = node.get("MetricsExportPort")
                if node.get("Alive") and port:
                    host = node["NodeManagerAddress"]
                    urls.append(f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics")
            self._cached = (now, urls)
        return list(self._cached[1])


def build_source(kind: str, *, url: str | None = None, histogram: str = "serving_latency_seconds", unit: str = "s",
                 labels: dict[str, str] | None = None, in_flight: str | None = None, application: str | None = None,
                 window_s: float = 0.0, query: str | None = None, timeout_s: float = 1.0,
                 stale_after_s: float | None = None, capacity_rps: float | None = None,
                 idle_after_s: float | None = None, probe: dict | None = None, gpu: dict | None = None,
                 utilization_query: str | None = None) -> TelemetrySource:
    """A telemetry source from config values; raises ``TelemetryError`` naming the field to fix.

    - ``prometheus``: scrape ``url`` (an exposition endpoint) for ``histogram`` in ``unit`` (s or ms),
      series filtered by ``labels``, requests in flight from the gauge ``in_flight``;
    - ``ray_serve``: Ray Serve's own ingress (``ray_serve_http_request_latency_ms`` and its proxies'
      ongoing requests), read from every Ray node's metrics endpoint (or only ``url``), filtered to
      ``application``;
    - ``promql``: ``query`` against the Prometheus server at ``url``;
    - ``host``: this host's CPU utilization; ``gpu``: this node's GPU utilization (NVML).

    ``stale_after_s=None`` keeps each source's default. ``probe`` (``url``, ``interval_s``,
    ``timeout_s``, ``window_s``) adds an active probe on the users' path (:class:`ProbedSource`);
    ``gpu`` (``indices``) adds the serving GPUs' utilization to the load slack (:class:`WithGPUUtilization`);
    ``utilization_query`` (promql) reads the load as a 0..1 fraction, e.g. DCGM's GPU utilization.

    >>> build_source("ray_serve", application="headroom-serving", window_s=2.0)  # doctest: +SKIP
    """
    source = _build_source(kind, url=url, histogram=histogram, unit=unit, labels=labels, in_flight=in_flight,
                           application=application, window_s=window_s, query=query, timeout_s=timeout_s,
                           stale_after_s=stale_after_s, capacity_rps=capacity_rps, idle_after_s=idle_after_s,
                           utilization_query=utilization_query, gpu_indices=(gpu or {}).get("indices"))
    if gpu and kind != "gpu":
        source = WithGPUUtilization(source, GPUSource((gpu or {}).get("indices")))
    if not probe:
        return source
    probe = dict(probe)
    probe_url = probe.pop("url", None)
    if not probe_url or not str(probe_url).startswith(("http://", "https://")):
        raise TelemetryError(f"a probe needs an http(s) url, got {probe_url!r}", where="serving.probe.url",
                             fix="set it to a route of the application, e.g. http://127.0.0.1:8000/")
    probe_window_s = probe.pop("window_s", 1.0)
    return ProbedSource(source, Prober(probe_url, **probe), window_s=probe_window_s)


def _build_source(kind: str, *, url, histogram, unit, labels, in_flight, application, window_s, query, timeout_s,
                  stale_after_s, capacity_rps, idle_after_s, utilization_query, gpu_indices) -> TelemetrySource:
    if kind not in SOURCE_KINDS:
        raise TelemetryError(f"unknown telemetry kind {kind!r}", where="telemetry.kind",
                             fix=f"use one of {', '.join(SOURCE_KINDS)}")
    if kind == "host":
        return HostCPUSource()
    if kind == "gpu":
        return GPUSource(gpu_indices)
    if unit not in UNIT_MS:
        raise TelemetryError(f"unknown histogram unit {unit!r}", where="serving.unit", fix="use s or ms")
    if (url or kind != "ray_serve") and (not url or not url.startswith(("http://", "https://"))):
        example = "http://127.0.0.1:9090" if kind == "promql" else "http://127.0.0.1:8000/metrics"
        raise TelemetryError(f"telemetry kind {kind!r} needs an http(s) url, got {url!r}",
                             where="telemetry.url", fix=f"set url, e.g. {example}")
    stale = {} if stale_after_s is None else {"stale_after_s": stale_after_s}
    if kind == "ray_serve":
        if window_s < RAY_SERVE_MIN_WINDOW_S:
            raise TelemetryError(f"window_s {window_s:g} is shorter than Ray's metrics refresh allows",
                                 where="serving.window_s",
                                 fix=f"use at least {RAY_SERVE_MIN_WINDOW_S:g} s (Ray refreshes Serve's metrics every ~1 s)")
        return PrometheusScrapeSource(url, RAY_SERVE_HISTOGRAM, targets=None if url else RayNodeTargets(),
                                      labels={**({"application": application} if application else {}), **(labels or {})},
                                      in_flight=in_flight or RAY_SERVE_IN_FLIGHT, unit_ms=1.0, timeout_s=timeout_s,
                                      capacity_rps=capacity_rps, window_s=window_s, min_interval_s=RAY_METRICS_REFRESH_S,
                                      idle_after_s=idle_after_s or 2 * window_s, **stale)
    if kind == "prometheus":
        if not histogram:
            raise TelemetryError("telemetry kind 'prometheus' needs a histogram name", where="telemetry.histogram",
                                 fix="set histogram to the metric's base name, e.g. serving_latency_seconds")
        return PrometheusScrapeSource(url, histogram, labels=labels, in_flight=in_flight, unit_ms=UNIT_MS[unit],
                                      timeout_s=timeout_s, capacity_rps=capacity_rps, window_s=window_s,
                                      idle_after_s=idle_after_s, **stale)
    if not query:
        raise TelemetryError("telemetry kind 'promql' needs a query", where="telemetry.query",
                             fix="set query, e.g. histogram_quantile(0.99, sum(rate("
                                 "serving_latency_seconds_bucket[30s])) by (le))")
    return PromQLSource(url, query, utilization_query=utilization_query, timeout_s=timeout_s, unit_ms=UNIT_MS[unit], **stale)
