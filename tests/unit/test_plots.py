"""plot_timeline draws valid PNGs from governor/job records, including empty and gappy ones."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from runtime.plots import _pause_spans, plot_timeline, rolling_p99_ms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000.0


def _decision(t: float, level: str, p99_ms: float | None, **extra) -> dict:
    record = {"t": T0 + t, "job": "demo", "level": level, "reason": "test", "workers": 2, "rows_per_s": 500.0,
              "slack": None if p99_ms is None else (50.0 - p99_ms) / 50.0, "p99_ms": p99_ms, "rps": 60.0,
              "utilization": 0.5, "error": None}
    record.update(extra)
    return record


def _assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_timeline_synthetic_run(tmp_path: Path) -> None:
    decisions = [_decision(float(t), "RUN" if t < 20 or t >= 40 else ("THROTTLE" if t < 25 else "PAUSE"),
                           20.0 + (60.0 if 25 <= t < 40 else 0.0)) for t in range(0, 60, 1)]
    decisions[10] = _decision(10.0, "PAUSE", None, error="scrape timed out", rps=None, utilization=None,
                              slack=None, rows_per_s=None)
    progress = [{"t": T0 + t, "rows_consumed": 100 * t, "rows_per_s": 0.0 if 25 <= t < 40 else 100.0,
                 "loss": None if t % 7 == 0 else 1.0 / (t + 1)} for t in range(0, 60, 2)]
    rng = np.random.default_rng(0)
    client = [(T0 + t, None if i % 97 == 0 else float(rng.exponential(0.01))) for i, t in
              enumerate(np.sort(rng.uniform(0, 60, 3000)))]
    out = plot_timeline(decisions, progress, tmp_path / "sub" / "run.png", client_latency=client,
                        slo_p99_ms=50.0, title="synthetic")
    assert out == tmp_path / "sub" / "run.png"
    _assert_png(out)


@pytest.mark.parametrize("client", [None, []])
def test_plot_timeline_empty_inputs(tmp_path: Path, client) -> None:
    _assert_png(plot_timeline([], [], tmp_path / "empty.png", client_latency=client))


def test_plot_timeline_only_none_values(tmp_path: Path) -> None:
    decisions = [{"t": T0, "level": "PAUSE"}, {"t": T0 + 5, "level": None, "p99_ms": None, "rps": None}]
    progress = [{"t": T0 + 1, "rows_consumed": 0, "rows_per_s": None, "loss": None}]
    _assert_png(plot_timeline(decisions, progress, tmp_path / "none.png", client_latency=[(T0 + 2, None)],
                              slo_p99_ms=10.0))


def test_pause_spans_close_on_resume_and_at_end() -> None:
    decisions = [{"t": T0 + t, "level": level} for t, level in
                 [(0, "RUN"), (5, "PAUSE"), (8, "PAUSE"), (10, "RUN"), (20, "PAUSE")]]
    assert _pause_spans(decisions, T0, 30.0) == [(5.0, 10.0), (20.0, 30.0)]


def test_rolling_p99_skips_failures() -> None:
    points = [(T0 + 0.1 * i, 0.010) for i in range(50)] + [(T0 + 6.0, None)]
    t, p99 = rolling_p99_ms(points, T0, window_s=5.0)
    assert len(t) == 2
    assert p99[0] == pytest.approx(10.0)
    assert math.isnan(p99[1])


def test_drawing_leaves_the_callers_backend_and_pyplot_alone(tmp_path):
    """The library draws on Figure objects of its own: no backend switch, no pyplot state."""
    import subprocess
    import sys

    code = f"""
import sys, matplotlib
matplotlib.use("svg")
from runtime.plots import plot_timeline
from runtime.governance.postmortem import plot_latency
from runtime.windows import plan_report
from runtime.release import report
plot_timeline([{{"t": 0, "level": "RUN", "p99_ms": 5.0, "rps": 3.0}}], [{{"t": 0, "rows_per_s": 1.0}}], r"{tmp_path}/t.png")
plot_latency([{{"t": 0, "p99_ms": 5.0, "active": 1}}], __import__("pathlib").Path(r"{tmp_path}/l.png"), 10.0)
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["svg", "False"]
    assert (tmp_path / "t.png").stat().st_size > 1000 and (tmp_path / "l.png").stat().st_size > 1000
