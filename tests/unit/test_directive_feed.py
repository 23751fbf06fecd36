"""The worker's directive feed: a long poll off the training path, a stop on silence (no Ray)."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.training.directive import DirectiveFeed


class FakeGovernor:
    """Answers like Governor.heartbeat: at once when ``known`` is stale, else after ``wait_s`` or a change."""

    def __init__(self) -> None:
        self.version = 1
        self.answer = {"action": "run", "rows_per_s": 100.0}
        self.changed = threading.Condition()
        self.calls = 0
        self.progress: list = []
        self.down = False

    def heartbeat(self, progress, known, wait_s):
        self.calls += 1
        if self.down:
            raise ConnectionError("governor down")
        self.progress.append(progress)
        with self.changed:
            if known == self.version:
                self.changed.wait(wait_s)
            return dict(self.answer, version=self.version)

    def set(self, **answer) -> float:
        with self.changed:
            self.answer = answer
            self.version += 1
            self.changed.notify_all()
        return time.monotonic()


def _until(cond, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False


def test_a_change_is_heard_within_one_round_trip_not_a_period():
    gov = FakeGovernor()
    feed = DirectiveFeed(gov.heartbeat, silence_s=5.0, wait_s=1.0).start()
    try:
        assert feed.wait_first(2.0)["action"] == "run"
        time.sleep(0.1)  # the feed is now parked in a long poll of up to 1 s
        changed_at = gov.set(action="stop", rows_per_s=0.0, why="SLO_VIOLATED")
        assert _until(lambda: feed.current()["action"] == "stop")
        heard_s = time.monotonic() - changed_at
        print(f"\n[figures] directive change heard after {heard_s * 1e3:.1f} ms (long poll of 1 s)")
        assert feed.current()["why"] == "SLO_VIOLATED"
    finally:
        feed.stop()


def test_a_steady_directive_costs_one_call_per_wait():
    gov = FakeGovernor()
    feed = DirectiveFeed(gov.heartbeat, silence_s=5.0, wait_s=0.1).start()
    try:
        feed.wait_first(2.0)
        calls_before, t0 = gov.calls, time.monotonic()
        assert _until(lambda: gov.calls >= calls_before + 3)
        assert time.monotonic() - t0 >= 0.15  # three calls span two long polls of 0.1 s: no busy loop
        time.sleep(0.5)
        assert gov.calls - calls_before <= 12, gov.calls - calls_before  # ~5 more long polls, not a busy loop
    finally:
        feed.stop()


def test_progress_rides_on_the_next_request():
    gov = FakeGovernor()
    feed = DirectiveFeed(gov.heartbeat, silence_s=5.0, wait_s=0.05).start()
    try:
        feed.wait_first(2.0)
        feed.report({"steps": 7, "rows": 1792})
        assert _until(lambda: {"steps": 7, "rows": 1792} in gov.progress)
    finally:
        feed.stop()


def test_silence_stops_the_worker_whatever_the_last_answer():
    clock = [0.0]
    gov = FakeGovernor()
    feed = DirectiveFeed(gov.heartbeat, silence_s=2.0, wait_s=0.01, clock=lambda: clock[0]).start()
    try:
        assert feed.wait_first(2.0)["action"] == "run"
        gov.down = True
        # the thread's calls now fail; a call already answered before `down` has landed by the time one
        # fails (the thread is sequential), so no later answer moves the time it was last heard
        assert _until(lambda: feed._error == "ConnectionError")
        clock[0] = 1.9
        assert feed.current()["action"] == "run"  # heard 1.9 s ago: still within the bound
        clock[0] = 2.1
        stop = feed.current()
        assert stop["action"] == "stop" and "unreachable" in stop["why"] and "ConnectionError" in stop["why"]
        gov.down = False
        assert _until(lambda: feed.current()["action"] == "run")  # heard again: the answer counts again
    finally:
        feed.stop()


def test_never_heard_counts_as_silence_from_the_start():
    def hang(progress, known, wait_s):
        time.sleep(0.2)
        raise TimeoutError("no answer")

    clock = [0.0]
    feed = DirectiveFeed(hang, silence_s=1.0, wait_s=0.1, clock=lambda: clock[0]).start()
    try:
        assert feed.current()["action"] == "wait"
        clock[0] = 1.0
        assert feed.current()["action"] == "stop"
    finally:
        feed.stop()


def test_an_answer_without_a_version_does_not_spin():
    calls = []

    def unknown(progress, known, wait_s):
        calls.append(known)
        return {"action": "stop", "why": "unknown job", "version": None}

    feed = DirectiveFeed(unknown, silence_s=5.0, wait_s=0.1).start()
    time.sleep(0.35)
    feed.stop()
    assert len(calls) <= 6, len(calls)


def test_wait_must_fit_in_the_silence_bound():
    with pytest.raises(ValueError, match="wait_s"):
        DirectiveFeed(lambda *a: {}, silence_s=0.5, wait_s=1.0)
