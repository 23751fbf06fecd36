"""The job's artifacts folder: the timeline the post-mortem drew is reused, not drawn a second time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import runtime.plots
from runtime.driver.office import write_artifacts

DECISIONS = [{"t": 100.0 + i, "level": "RUN", "reason": "OK", "p99_ms": 20.0 + i, "active": 1, "allowed_rows_per_s": 500.0}
             for i in range(5)]
PROGRESS = [{"t": 100.0 + i, "rows_consumed": 100 * i, "rows_per_s": 100.0, "loss": None} for i in range(5)]


class Tracker:
    def __init__(self):
        self.logged = []

    def log_file(self, path, artifact_dir=None):
        self.logged.append((path.name, artifact_dir))


def _args(tmp_path):
    spec = SimpleNamespace(name="job", serving=SimpleNamespace(slo_p99_ms=50.0))
    return spec, {"job": "job"}, Tracker(), tmp_path / "out"


def test_the_post_mortems_timeline_is_copied_not_drawn_again(tmp_path, monkeypatch):
    drawn = tmp_path / "postmortem-timeline.png"
    drawn.write_bytes(b"\x89PNG the post-mortem's plot")
    monkeypatch.setattr(runtime.plots, "plot_timeline", lambda *a, **k: pytest.fail("the timeline was drawn twice"))
    spec, summary, tracker, out = _args(tmp_path)

    write_artifacts(spec, DECISIONS, PROGRESS, summary, tracker, str(out), timeline=drawn)

    assert (out / "timeline.png").read_bytes() == drawn.read_bytes()
    assert ("timeline.png", "governor") in tracker.logged and ("summary.json", None) in tracker.logged


def test_without_a_post_mortem_the_timeline_is_drawn(tmp_path):
    spec, summary, tracker, out = _args(tmp_path)

    write_artifacts(spec, DECISIONS, PROGRESS, summary, tracker, str(out))  # a window that ended: no post-mortem yet

    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert {name for name, _ in tracker.logged} == {"summary.json", "decisions.json", "progress.json", "timeline.png"}
