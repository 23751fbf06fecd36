"""Step metrics that survive a tracking-server outage: buffered in memory, sent by a background thread,
retried with exponential backoff, and caught up when the server is back.

Training must never wait for MLflow: the job driver logs a few metrics a second, and a blocking
``log_batch`` against a stopped server would hold the driver (and so the workers' next round) for
as long as MLflow's HTTP retries last. So :class:`MetricBuffer` only queues; its thread sends up to
1,000 metrics per ``log_batch`` (MLflow's limit), in order, and on failure keeps them and backs off
(0.5 s, doubling, at most ``max_backoff_s``). :meth:`MetricBuffer.flush` cuts a backoff short (the
server may be back) and waits until everything is sent; the tracker calls it before registering a
model, so a server that is still down fails the job with one clear :class:`TrackingError` *before*
anything is registered.

>>> buf = MetricBuffer(client.log_batch, run_id)  # doctest: +SKIP
>>> buf.add([Metric("loss", 0.3, ts, 1)]); buf.flush(timeout_s=30)  # doctest: +SKIP
True
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("headroom.tracking")
MAX_BATCH = 1000  # MLflow's log_batch limit on metrics per request


class MetricBuffer:
    """An in-order queue of MLflow ``Metric`` entities and the thread that sends them."""

    def __init__(self, log_batch: Callable, run_id: str, *, max_backoff_s: float = 5.0):
        self._log_batch, self.run_id, self.max_backoff_s = log_batch, run_id, max_backoff_s
        self._pending: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._retry_now = False  # flush() cuts a backoff short: the server may be back
        self.sent = 0
        self.failures = 0  # failed sends (each followed by a backoff)
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"mlflow-metrics-{run_id[:8]}", daemon=True)
        self._thread.start()

    def add(self, metrics: list) -> None:
        with self._cond:
            self._pending.extend(metrics)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued metric is sent; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._retry_now = True
            self._cond.notify_all()
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay_s = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._pending)
                if self._closed:
                    return
                batch = [self._pending[i] for i in range(min(MAX_BATCH, len(self._pending)))]
            try:
                self._log_batch(self.run_id, metrics=batch)
            except Exception as exc:  # server down, timing out, refusing: keep the metrics, back off
                if self.last_error is None:
                    log.warning("MLflow unreachable (%s); buffering metrics and retrying", type(exc).__name__)
                delay_s = min(self.max_backoff_s, max(0.5, delay_s * 2))
                with self._cond:  # under the lock, as a flush() that times out reads them for its error
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self._cond.wait_for(lambda: self._closed or self._retry_now, timeout=delay_s)
                    self._retry_now = False
                continue
            with self._cond:  # state settles before flush() is woken: it may return at once
                for _ in batch:
                    self._pending.popleft()
                self.sent += len(batch)
                recovered, self.last_error = self.last_error is not None, None
                self._cond.notify_all()
            if recovered:
                log.warning("MLflow reachable again; %d metrics sent so far", self.sent)
            delay_s = 0.0
