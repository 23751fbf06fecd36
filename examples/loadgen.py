"""Open-loop load replay: real traffic shape, compressed in time, with honest latency accounting.

``trace_rate_fn`` turns a day of the NASA trace into a rate function; ``OpenLoopLoad`` sends requests at
the times a non-homogeneous Poisson process of that rate dictates, whether or not earlier requests have
returned, and measures each latency from the request's *intended* send time -- a server that stalls
is charged for the whole stall, not just for the requests that happened to be in flight
(no coordinated omission).

>>> from runtime.windows.history import read_history_csv
>>> rate = trace_rate_fn(read_history_csv("data/nasa-http-1995-07.csv"), seconds_per_day=240, peak_rps=60)  # doctest: +SKIP
>>> load = OpenLoopLoad("http://127.0.0.1:8000/", rate, duration_s=240)  # doctest: +SKIP
>>> load.start(); load.join(); load.window_stats(100, 140)  # doctest: +SKIP
{'p50_ms': ..., 'p99_ms': ..., 'p999_ms': ..., 'rps': ..., 'errors': 0, ...}
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import numpy as np

from runtime.errors import DataError
from runtime.windows.history import History

SECONDS_PER_DAY = 86400.0

# Monday 3 July 1995: a working day with a clear midday peak (hourly mean ~100/min at 13:00 local vs
# ~25/min at 04:00); Jul 1-2 are a weekend and Jul 4 a holiday, both flat.
DEFAULT_DAY_START_LOCAL = "1995-07-03T00:00"


@dataclass(frozen=True)
class TraceRate:
    """Requests/s at ``t_s`` seconds since the replay started (linear between trace minutes).

    Outside ``[0, duration_s]`` the rate holds its edge value.
    """

    t_s: np.ndarray
    rate_rps: np.ndarray
    duration_s: float
    peak_rps: float

    def __call__(self, t_s: float) -> float:
        return float(np.interp(t_s, self.t_s, self.rate_rps))


def trace_rate_fn(
    history: History,
    *,
    day_start_local: str = DEFAULT_DAY_START_LOCAL,
    seconds_per_day: float,
    peak_rps: float,
    days: float = 1.0,
    smooth_min: int = 15,
) -> TraceRate:
    """Rate function replaying ``days`` of ``history`` from ``day_start_local`` (the trace's local time).

    A whole day lasts ``seconds_per_day`` of replay time. The per-minute counts are first smoothed with a
    centred ``smooth_min``-minute moving average (single-minute spikes in the trace are up to 2x the hour's
    mean; compressed, they would be sub-second bursts that say nothing about daily headroom), then scaled
    so that the smoothed peak equals ``peak_rps``. ``smooth_min=1`` keeps the raw minutes.
    Raises :class:`DataError` when the span holds fewer than two trace rows.
    """
    if seconds_per_day <= 0 or peak_rps <= 0 or days <= 0 or smooth_min < 1:
        raise ValueError("seconds_per_day, peak_rps and days must be > 0 and smooth_min >= 1")
    try:
        start_local = datetime.fromisoformat(day_start_local).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise DataError(f"bad day_start_local {day_start_local!r}", where="trace_rate_fn",
                        fix="use local ISO time without offset, e.g. 1995-07-03T00:00") from None
    local_s = history.epoch_s + history.utc_offsets_s  # compare in the trace's own wall-clock time
    span_s = days * SECONDS_PER_DAY
    keep = (local_s >= start_local) & (local_s < start_local + span_s)
    if keep.sum() < 2:
        raise DataError(f"the trace has fewer than 2 rows in {days} day(s) from {day_start_local}",
                        where=history.source, fix="pick a day_start_local inside the trace's range")
    offset_s = local_s[keep] - start_local
    counts = history.requests[keep].astype(float)
    if smooth_min > 1:
        # Mean over the window, normalised by the rows actually present so the edges are not pulled down.
        kernel = np.ones(smooth_min)
        counts = np.convolve(counts, kernel, mode="same") / np.convolve(np.ones_like(counts), kernel, mode="same")
    peak = counts.max()
    if peak <= 0:
        raise DataError("the chosen span has no traffic", where=history.source, fix="pick another day_start_local")
    scale = seconds_per_day / SECONDS_PER_DAY
    return TraceRate(t_s=offset_s * scale, rate_rps=counts / peak * peak_rps,
                     duration_s=span_s * scale, peak_rps=float(peak_rps))


def repeat_days(day: TraceRate, days: int) -> TraceRate:
    """``day`` replayed ``days`` times back to back: the same hours come round again, so a phase of a
    later day can be compared with the same hours of the first.

    >>> r = repeat_days(TraceRate(np.array([0.0, 9.9]), np.array([1.0, 2.0]), 10.0, 2.0), 3)
    >>> r.duration_s, r(10.0), r(29.9)
    (30.0, 1.0, 2.0)
    """
    return TraceRate(t_s=np.concatenate([day.t_s + k * day.duration_s for k in range(days)]),
                     rate_rps=np.tile(day.rate_rps, days), duration_s=days * day.duration_s, peak_rps=day.peak_rps)


class OpenLoopLoad:
    """Poisson arrivals of rate ``rate_fn(t_s)`` against ``url`` for ``duration_s``, in a background thread.

    ``records`` holds ``(intended_t_s, latency_s or None, ok)`` per intended request, ``t`` counted from
    ``start_epoch_s``. A request that would exceed ``max_in_flight`` is not sent but recorded as a drop
    (``latency_s=None, ok=False``), so a slow server never slows the schedule down.
    """

    def __init__(self, url: str, rate_fn: Callable[[float], float], duration_s: float, *,
                 timeout_s: float = 2.0, seed: int = 0, max_in_flight: int = 256):
        self.url = url
        self.rate_fn = rate_fn
        self.duration_s = float(duration_s)
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self._rows: list[tuple[float, float | None, str]] = []  # (intended_t_s, latency_s, outcome)
        self._send_lags_s: list[tuple[float, float]] = []  # (intended_t_s, how late the send started)
        self.start_epoch_s: float | None = None
        self.seed = seed
        self.error: BaseException | None = None  # what ended the load thread early, if anything
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> "OpenLoopLoad":
        if self._thread is not None:
            raise RuntimeError("OpenLoopLoad.start() called twice")
        self._thread = threading.Thread(target=self._thread_main, name="openloop-load", daemon=True)
        self._thread.start()
        return self

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # keep it for the caller: an exception in a thread is otherwise lost
            self.error = exc

    def stop(self) -> None:
        """Stop scheduling new requests; those in flight finish (or time out) before ``join`` returns."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- schedule -----------------------------------------------------------------------------------------
    def arrival_times_s(self) -> list[float]:
        """Intended send times by thinning: candidates at the peak rate, each kept with rate(t)/peak.

        Deterministic for a given ``seed``.
        """
        rng = np.random.default_rng(self.seed)
        peak_rps = getattr(self.rate_fn, "peak_rps", None)
        if peak_rps is None:
            grid = np.linspace(0.0, self.duration_s, max(2, int(self.duration_s * 20)))
            peak_rps = 1.1 * max(self.rate_fn(float(t)) for t in grid)  # margin for peaks between grid points
        if peak_rps <= 0:
            return []
        times, t = [], 0.0
        while True:
            t += rng.exponential(1.0 / peak_rps)
            if t >= self.duration_s:
                return times
            if rng.random() * peak_rps < min(self.rate_fn(t), peak_rps):
                times.append(t)

    async def _run(self) -> None:
        schedule = self.arrival_times_s()
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
        in_flight: set[asyncio.Task] = set()
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            start_mono = time.perf_counter()
            self.start_epoch_s = time.time()
            for intended_s in schedule:
                if self._stop.is_set():
                    break
                # Sleep in short slices so stop() takes effect even across a long lull in the trace.
                while (delay_s := intended_s - (time.perf_counter() - start_mono)) > 0 and not self._stop.is_set():
                    await asyncio.sleep(min(delay_s, 0.1))
                if self._stop.is_set():
                    break
                if len(in_flight) >= self.max_in_flight:
                    self._record(intended_s, None, "drop")
                    continue
                # A late start means the generator itself fell behind (a starved host): keep it to tell apart.
                with self._lock:
                    self._send_lags_s.append((intended_s, time.perf_counter() - start_mono - intended_s))
                task = asyncio.create_task(self._send(client, start_mono, intended_s))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _send(self, client: httpx.AsyncClient, start_mono: float, intended_s: float) -> None:
        try:
            # httpx's timeout bounds each phase (connect, read, ...); wait_for bounds the whole request.
            response = await asyncio.wait_for(client.get(self.url), self.timeout_s)
            # Latency from the intended time: a late send (loop lag, pool wait) is part of the wait.
            latency_s = time.perf_counter() - start_mono - intended_s
            if response.status_code < 400:
                self._record(intended_s, latency_s, "ok")
            else:  # the server answered, so the time is real, but the request failed
                self._record(intended_s, latency_s, "http")
        except (httpx.TimeoutException, asyncio.TimeoutError):
            self._record(intended_s, None, "timeout")
        except (httpx.HTTPError, OSError):
            self._record(intended_s, None, "error")

    def _record(self, intended_s: float, latency_s: float | None, outcome: str) -> None:
        with self._lock:
            self._rows.append((intended_s, latency_s, outcome))

    # -- results ------------------------------------------------------------------------------------------
    @property
    def records(self) -> list[tuple[float, float | None, bool]]:
        """``(intended_t_s, latency_s or None, ok)`` per intended request so far, in send order."""
        with self._lock:
            return [(t, lat, outcome == "ok") for t, lat, outcome in self._rows]

    def window_stats(self, since_s: float = 0.0, until_s: float = math.inf) -> dict:
        """Latency percentiles (ms, successful requests) and counts for requests intended in [since, until).

        ``rps`` is the offered rate (requests intended per second of the window); ``errors`` counts every
        failure (HTTP >= 400, timeout, connection error, drop), and ``timeouts``, ``drops`` two kinds of it.
        Percentiles are ``None`` when nothing succeeded in the window. ``send_lag_p99_ms`` is how late the
        generator started its sends: when it is a sizeable part of ``p99_ms``, the client host, not the
        server, was the bottleneck.
        """
        with self._lock:
            rows = [r for r in self._rows if since_s <= r[0] < until_s]
            lags_ms = [lag * 1e3 for t, lag in self._send_lags_s if since_s <= t < until_s]
        lat_ms = np.array([lat * 1e3 for _, lat, outcome in rows if outcome == "ok"])
        width_s = max(min(until_s, self.duration_s) - since_s, 1e-9)

        def pct(q: float) -> float | None:
            return float(np.percentile(lat_ms, q)) if len(lat_ms) else None

        outcomes = [outcome for _, _, outcome in rows]
        return {
            "p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9),
            "rps": len(rows) / width_s,
            "errors": sum(o != "ok" for o in outcomes),
            "timeouts": outcomes.count("timeout"),
            "drops": outcomes.count("drop"),
            "count": len(rows),
            "send_lag_p99_ms": float(np.percentile(lags_ms, 99)) if lags_ms else None,
        }

    def latency_series(self) -> list[tuple[float, float | None]]:
        """``(epoch_s of the intended send, latency_s or None)`` per request: ``plot_timeline``'s ``client_latency``."""
        base_s = self.start_epoch_s or 0.0
        return [(base_s + t, lat if ok else None) for t, lat, ok in self.records]


def sleep_until(epoch_s: float, slice_s: float = 0.2) -> None:
    while (delay_s := epoch_s - time.time()) > 0:
        time.sleep(min(delay_s, slice_s))


def _loadgen_server(conn) -> None:
    """Child process: one OpenLoopLoad per request, so the driver's work never shares its GIL.

    A request is ``(url, rate, duration_s, seed, start_at_s, warmup_s)``. With ``warmup_s``, steady
    traffic at the replay's opening rate runs for that long before ``start_at_s`` (not recorded). A
    ``"stop"`` while a load runs ends it early; either way the records go back.
    """
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        if msg == "stop":  # a stop for a load that had already ended on its own: nothing to stop
            continue
        url, rate, duration_s, seed, start_at_s, warmup_s = msg
        warm = None
        if warmup_s > 0:
            r0 = max(rate(0.0), 1.0)
            warm = OpenLoopLoad(url, TraceRate(np.array([0.0, warmup_s]), np.array([r0, r0]), warmup_s, r0),
                                duration_s=warmup_s + 1.0, seed=seed + 10_000)
            sleep_until(start_at_s - warmup_s, 0.02)
            warm.start()
        load = OpenLoopLoad(url, rate, duration_s=duration_s, seed=seed)
        sleep_until(start_at_s, 0.02)
        if warm is not None:
            warm.stop()
        load.start()
        while load.is_alive():
            if conn.poll(0.1) and conn.recv() == "stop":
                load.stop()
        load.join()
        if warm is not None:
            warm.join()
        conn.send({"start_epoch_s": load.start_epoch_s, "records": load.records, "stats": load.window_stats(),
                   "error": repr(load.error) if load.error else None})


class LoadProcess:
    """An :class:`OpenLoopLoad` in a process of its own: the caller's CPU work (a job driver, an MLflow
    evaluation) never shares a GIL with the load, so the latencies it records are the service's.

    >>> load = LoadProcess()  # doctest: +SKIP
    >>> load.begin(url, rate, duration_s=60, seed=0, start_at_s=time.time() + 1); ...; load.stop()
    >>> load.result(timeout_s=30)["records"]  # [(intended_t_s, latency_s or None, ok), ...]
    """

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_loadgen_server, args=(child,), daemon=True, name="headroom-loadgen")
        self.proc.start()
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            raise RuntimeError("the load generator process did not start")

    def begin(self, url: str, rate, duration_s: float, seed: int, start_at_s: float, warmup_s: float = 0.0) -> None:
        self.conn.send((url, rate, duration_s, seed, start_at_s, warmup_s))

    def stop(self) -> None:
        """End the running load now (its records still come back through :meth:`result`)."""
        self.conn.send("stop")

    def result(self, timeout_s: float) -> dict:
        if not self.conn.poll(timeout_s):
            raise RuntimeError("the load generator did not report back")
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):  # the child is gone already: nothing to tell it
            pass
        self.proc.join(10)
