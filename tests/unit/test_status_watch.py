"""``headroom status --watch``: refreshes until Ctrl-C, keeps going through a failed fetch, and stops on
Ctrl-C even when started with SIGINT ignored (a background job of a script inherits SIG_IGN)."""

from __future__ import annotations

import io
import json
import os
import signal

from runtime.cli.jobs import _watch_status


class Runaway(BaseException):
    """The watch went on after Ctrl-C (raised past the watch's own error handling, so the test fails
    instead of hanging)."""


def _fetch_then_ctrl_c(after: int, fail_at: int | None = None):
    calls = []

    def fetch() -> dict:
        calls.append(1)
        if len(calls) > after + 3:
            raise Runaway(f"still watching {len(calls) - after} refreshes after Ctrl-C")
        if len(calls) == fail_at:
            raise ConnectionError("governor restarting")
        if len(calls) == after:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C
        return {"poll_interval_s": 0.25, "ticks": len(calls), "tick_errors": 0, "last_tick_ms": 1.0, "jobs": []}

    return fetch, calls


def test_ctrl_c_ends_the_watch_even_when_sigint_was_ignored_and_the_disposition_comes_back():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        fetch, calls = _fetch_then_ctrl_c(after=3, fail_at=2)
        out = io.StringIO()
        assert _watch_status(fetch, as_json=True, interval_s=0.01, stream=out) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the caller's choice, restored
    finally:
        signal.signal(signal.SIGINT, previous)
    lines = [json.loads(line) for line in out.getvalue().split("\n") if line.strip()]
    assert len(calls) == 3
    assert lines[0]["ticks"] == 1 and "governor unreachable" in lines[1]["error"]


def test_plain_tables_are_written_until_ctrl_c():
    fetch, calls = _fetch_then_ctrl_c(after=2)
    out = io.StringIO()
    assert _watch_status(fetch, interval_s=0.01, stream=out) == 0
    assert out.getvalue().count("governor: poll 0.25s") == 1 and len(calls) == 2
