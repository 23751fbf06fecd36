"""A real serving endpoint with a latency knob, and a fixed-rate load generator, for integration tests.

``LatencyServer`` is a threaded HTTP server on 127.0.0.1 (ephemeral port). ``GET /predict`` sleeps for
the configured delay, answers 200, and observes its own latency in a Prometheus histogram
(``serving_latency_seconds``) that ``GET /metrics`` exposes. ``set_metrics_mode`` breaks ``/metrics`` on
purpose so that telemetry failure paths are exercised against a real socket, not a mock.

>>> with LatencyServer() as server, LoadThread(server.predict_url, rps=50) as load:  # doctest: +SKIP
...     server.set_delay(0.2)          # serving gets slow: p99 rises to ~200 ms
...     server.set_metrics_mode("hang")  # the exporter stops answering
...     load.counts()["ok"]
"""

from __future__ import annotations

import collections
import http.server
import queue
import socket
import ssl
import threading
import time
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

HISTOGRAM = "serving_latency_seconds"
IN_FLIGHT = "serving_requests_in_flight"  # a gauge: /predict requests accepted and not yet answered
# Fine buckets so that a windowed p99 resolves a few milliseconds at the low end and 200 ms clearly.
BUCKETS_S = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
             0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5)
# ok: normal exposition; down: drop the connection without answering (a crashed exporter);
# error: HTTP 500; garbage: 200 with text that is not exposition format; hang: never answer (until
# the mode changes or the server stops); frozen: a stuck server -- /metrics answers, but every /predict
# blocks until the mode changes, so the histogram stops while the in-flight gauge grows.
METRICS_MODES = ("ok", "down", "error", "garbage", "hang", "frozen")
_HANG_LIMIT_S = 120.0  # a hung handler gives up eventually so a forgotten test cannot leak forever


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (also handy for "connection refused" tests)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports nothing listens on right now. Each is held until all are chosen: asked
    one at a time, the kernel may hand out the same port twice (CI once got the Ray head's GCS and
    dashboard ports equal, and the head refused to start)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class LatencyServer:
    """A real HTTP serving endpoint whose latency and metrics endpoint the test controls.

    Attributes: ``url`` (base), ``predict_url``, ``metrics_url``, ``registry`` (its own
    ``CollectorRegistry``), ``predict_count``, ``metrics_count``.
    """

    def __init__(self, delay_s: float = 0.0, *, host: str = "127.0.0.1"):
        self.host = host
        self.registry = CollectorRegistry()
        self.histogram = Histogram(HISTOGRAM, "Latency of /predict as the server saw it.",
                                   registry=self.registry, buckets=BUCKETS_S)
        self.in_flight = Gauge(IN_FLIGHT, "/predict requests accepted and not yet answered.", registry=self.registry)
        self._unfreeze = threading.Event()
        self._unfreeze.set()
        self._lock = threading.Lock()
        self._delay_s = float(delay_s)
        self._mode = "ok"
        self._unhang = threading.Event()
        self._unhang.set()
        self._conns: set[socket.socket] = set()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.predict_count = 0
        self.metrics_count = 0
        self.url = self.predict_url = self.metrics_url = ""

    # -- knobs ---------------------------------------------------------------------------------
    def set_delay(self, seconds: float) -> None:
        """Every later ``/predict`` sleeps ``seconds`` before answering."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 s, got {seconds}")
        with self._lock:
            self._delay_s = float(seconds)

    @property
    def delay_s(self) -> float:
        with self._lock:
            return self._delay_s

    def set_metrics_mode(self, mode: str) -> None:
        """Switch ``/metrics`` behaviour; one of ``METRICS_MODES``."""
        if mode not in METRICS_MODES:
            raise ValueError(f"metrics mode must be one of {METRICS_MODES}, got {mode!r}")
        with self._lock:
            self._mode = mode
        if mode == "frozen":
            self._unfreeze.clear()
        else:
            self._unfreeze.set()  # the stuck requests finish now
        if mode == "hang":
            self._unhang.clear()
        else:
            self._unhang.set()  # release handlers stuck in an earlier hang

    @property
    def metrics_mode(self) -> str:
        with self._lock:
            return self._mode

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "LatencyServer":
        if self._httpd is not None:
            return self
        self._httpd = http.server.ThreadingHTTPServer((self.host, 0), _make_handler(self))
        self._httpd.daemon_threads = True  # a hung handler must never block interpreter exit
        port = self._httpd.server_address[1]
        self.url = f"http://{self.host}:{port}"
        self.predict_url = f"{self.url}/predict"
        self.metrics_url = f"{self.url}/metrics"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"latency-server-{port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._unhang.set()
        self._unfreeze.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        # Keep-alive connections outlive the listener; cut them so a stopped server really is gone.
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> "LatencyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- request handling (called from handler threads) ----------------------------------------
    def _predict(self) -> bytes:
        start = time.perf_counter()
        self.in_flight.inc()
        self._unfreeze.wait(_HANG_LIMIT_S)  # a stuck server: nothing finishes while frozen
        delay_s = self.delay_s
        if delay_s > 0:
            time.sleep(delay_s)
        self.histogram.observe(time.perf_counter() - start)
        self.in_flight.dec()
        with self._lock:
            self.predict_count += 1
        return b'{"prediction": 0.0}\n'

    def _metrics(self) -> tuple[int, bytes] | None:
        """(status, body) to send, or None to drop the connection without answering."""
        with self._lock:
            self.metrics_count += 1
            mode = self._mode
        if mode == "hang":
            self._unhang.wait(_HANG_LIMIT_S)
            return None
        if mode == "down":
            return None
        if mode == "error":
            return 500, b"internal error\n"
        if mode == "garbage":
            return 200, b"<html><body>this is not the exposition format {{{</body></html>\n"
        return 200, generate_latest(self.registry)  # "frozen" too: the endpoint is fine, the requests are stuck


def _make_handler(owner: LatencyServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real clients and Prometheus use it
        timeout = 30  # idle keep-alive connections close eventually

        def setup(self) -> None:
            super().setup()
            with owner._lock:
                owner._conns.add(self.connection)

        def finish(self) -> None:
            with owner._lock:
                owner._conns.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/predict":
                self._send(200, owner._predict(), "application/json")
            elif path == "/metrics":
                answer = owner._metrics()
                if answer is None:
                    self.close_connection = True
                    return
                self._send(answer[0], answer[1], CONTENT_TYPE_LATEST)
            elif path in ("/", "/healthz"):
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (timeout) or the server is stopping
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per request would drown the test output

    return Handler


class LoadThread:
    """Sends GETs to ``url`` at roughly ``rps`` requests per second until stopped.

    A pacer thread issues one ticket per ``1/rps`` s and ``workers`` threads send the requests, so a
    slow server does not slow the offered rate until all workers are busy; tickets that find every
    worker busy (backlog full) are counted as ``dropped`` instead of being sent in a later burst.

    >>> with LoadThread("http://127.0.0.1:8000/predict", rps=100) as load:  # doctest: +SKIP
    ...     time.sleep(2); load.counts()
    {'sent': 200, 'ok': 200, 'failed': 0, 'dropped': 0}
    """

    def __init__(self, url: str, rps: float, *, workers: int = 32, timeout_s: float = 5.0):
        if rps < 0:
            raise ValueError(f"rps must be >= 0, got {rps}")
        self.url = url
        self._rps = float(rps)
        self.workers = workers
        self.timeout_s = timeout_s
        self._tickets: queue.Queue[None] = queue.Queue(maxsize=workers)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._counts = {"sent": 0, "ok": 0, "failed": 0, "dropped": 0}
        self._latencies_s: collections.deque[float] = collections.deque(maxlen=100_000)

    def set_rps(self, rps: float) -> None:
        """Change the offered rate while running (0 pauses the load)."""
        if rps < 0:
            raise ValueError(f"rps must be >= 0, got {rps}")
        with self._lock:
            self._rps = float(rps)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def latencies_s(self) -> list[float]:
        """Client-side latencies of completed requests (the newest 100k)."""
        with self._lock:
            return list(self._latencies_s)

    def start(self) -> "LoadThread":
        if self._threads:
            return self
        self._stop.clear()
        # Clients are built before pacing starts, sharing one TLS context: each default client loads
        # the CA bundle (~70 ms), and a pacer that started first would count that warm-up as drops.
        tls = ssl.create_default_context()
        clients = [httpx.Client(timeout=self.timeout_s, verify=tls) for _ in range(self.workers)]
        self._threads = [threading.Thread(target=self._work, args=(client,), name=f"load-worker-{i}",
                                          daemon=True) for i, client in enumerate(clients)]
        self._threads.append(threading.Thread(target=self._pace, name="load-pacer", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 1)
        self._threads = []

    def __enter__(self) -> "LoadThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _pace(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                rps = self._rps
            if rps <= 0:
                self._stop.wait(0.05)
                next_t = time.monotonic()
                continue
            next_t += 1.0 / rps
            now = time.monotonic()
            if next_t < now - 1.0:  # fell far behind (paused process): do not replay a burst
                next_t = now
            if next_t > now:
                self._stop.wait(next_t - now)
            try:
                self._tickets.put_nowait(None)
            except queue.Full:
                with self._lock:
                    self._counts["dropped"] += 1

    def _work(self, client: httpx.Client) -> None:
        with client:
            while not self._stop.is_set():
                try:
                    self._tickets.get(timeout=0.05)
                except queue.Empty:
                    continue
                start = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code < 400
                except httpx.HTTPError:
                    ok = False
                elapsed_s = time.perf_counter() - start
                with self._lock:
                    self._counts["sent"] += 1
                    self._counts["ok" if ok else "failed"] += 1
                    if ok:
                        self._latencies_s.append(elapsed_s)


def _serve_in_child(conn, delay_s: float, rps: float) -> None:
    """Child process: a LatencyServer plus its own load, driven by commands over a pipe."""
    with LatencyServer(delay_s) as server, LoadThread(server.predict_url, rps=rps) as load:
        conn.send(server.url)
        while True:
            command, value = conn.recv()
            if command == "stop":
                break
            if command == "delay":
                server.set_delay(value)
            elif command == "metrics_mode":
                server.set_metrics_mode(value)
            elif command == "rps":
                load.set_rps(value)
            conn.send("ok")


class ServingProcess:
    """A LatencyServer and its load in a separate process (its own GIL), with the same knobs.

    In-process servers share the GIL with the job driver under test, whose bursts of Python work
    (merging model states, MLflow writes) would show up as serving latency that no governor can fix.

    >>> with ServingProcess(delay_s=0.002, rps=60) as server:  # doctest: +SKIP
    ...     server.set_delay(0.2)
    """

    def __init__(self, delay_s: float = 0.0, *, rps: float = 50.0):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds a Ray connection
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_in_child, args=(child, delay_s, rps), daemon=True)
        self._proc.start()
        if not self._conn.poll(60):
            self._proc.kill()
            raise RuntimeError("serving process did not start within 60 s")
        self.url = self._conn.recv()
        self.predict_url, self.metrics_url = f"{self.url}/predict", f"{self.url}/metrics"

    def _command(self, command: str, value: Any = None) -> None:
        self._conn.send((command, value))
        self._conn.recv()

    def set_delay(self, seconds: float) -> None:
        self._command("delay", float(seconds))

    def set_metrics_mode(self, mode: str) -> None:
        self._command("metrics_mode", mode)

    def set_rps(self, rps: float) -> None:
        """The load's offered rate; 0 leaves the service idle."""
        self._command("rps", float(rps))

    def stop(self) -> None:
        if self._proc.is_alive():
            self._conn.send(("stop", None))
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

    def __enter__(self) -> "ServingProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
