"""A worker's directive, kept fresh off the training path.

A training step must not wait on the network: a blocking round trip to the governor before every
256-row step cost the job ~40 % of its throughput. So each worker keeps its latest directive in a
:class:`DirectiveFeed`, whose thread asks the governor again and again with a *long poll*: the
governor answers at once when the job's directive changes, else after ``wait_s`` (a worker's is 1 s:
each answer costs the governor CPU). A pause is heard within one round trip of the decision, and a
step only reads a field.

Silence still stops the worker: when no answer has arrived for ``silence_s``, :meth:`current` says
stop, whatever the last answer was (the governor may be dead, restarting or cut off).

No Ray here: ``fetch(progress, known, wait_s)`` is whatever asks the governor (in a worker,
``ray.get(governor.heartbeat.remote(...))``), so the feed is tested with a plain function.

>>> feed = DirectiveFeed(lambda progress, known, wait_s: {"action": "run", "rows_per_s": 10.0, "version": 1},
...                      silence_s=1.0).start()
>>> feed.wait_first(1.0)["action"]
'run'
>>> feed.stop()
"""

from __future__ import annotations

import threading
import time
from typing import Callable

Fetch = Callable[[dict | None, int | None, float], dict]
UNHEARD = {"action": "wait", "rows_per_s": 0.0, "why": "no answer from the governor yet"}


class DirectiveFeed:
    """The latest answer of ``fetch``, refreshed in a daemon thread; ``current()`` never blocks."""

    def __init__(self, fetch: Fetch, *, silence_s: float, wait_s: float = 0.1, retry_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic):
        if not 0 < wait_s <= silence_s:
            raise ValueError(f"wait_s must be in (0, silence_s={silence_s}], got {wait_s}")
        self._fetch, self.silence_s, self.wait_s, self.retry_s, self._clock = fetch, silence_s, wait_s, retry_s, clock
        self._answer: dict = dict(UNHEARD)
        self._heard_s: float | None = None  # when the last answer arrived
        self._started_s: float | None = None
        self._progress: dict | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self.answers = 0  # answers received (for tests and the worker's figures)

    def start(self) -> "DirectiveFeed":
        self._started_s = self._clock()
        self._thread = threading.Thread(target=self._run, name="directive-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.silence_s + 1.0)

    def report(self, progress: dict) -> None:
        """Progress for the governor, sent with the next request (a dict swap: no lock needed)."""
        self._progress = progress

    def wait_first(self, timeout_s: float) -> dict:
        """Block until the first answer (or ``timeout_s``), then return :meth:`current`."""
        self._first.wait(timeout_s)
        return self.current()

    def current(self) -> dict:
        """The latest answer; ``stop`` once the governor has been silent for ``silence_s``."""
        now = self._clock()
        heard = self._heard_s if self._heard_s is not None else self._started_s
        if heard is not None and now - heard >= self.silence_s:
            why = f"governor unreachable for {now - heard:.1f} s" + (f" ({self._error})" if self._error else "")
            return {"action": "stop", "rows_per_s": 0.0, "why": why}
        return self._answer

    def _run(self) -> None:
        while not self._stop.is_set():
            known = self._answer.get("version")
            try:
                answer = self._fetch(self._progress, known, self.wait_s)
            except Exception as exc:  # governor dead, restarting or unreachable: silence decides
                self._error = type(exc).__name__
                self._stop.wait(self.retry_s)
                continue
            self._answer, self._heard_s, self._error = answer, self._clock(), None
            self.answers += 1
            self._first.set()
            if answer.get("version") is None:  # nothing to long-poll on (e.g. the job is unknown): do not spin
                self._stop.wait(self.wait_s)
