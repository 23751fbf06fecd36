"""The serving side's metrics endpoint fails in each way a real one does — down (connection dropped),
hanging (no answer within ``serving.timeout_s``), answering garbage, and a stuck server (the endpoint
answers, but requests stop finishing while more arrive) — while a governed job trains. Each time the job
pauses (serving first), the cause is in the governor's decision log, and training resumes once the
endpoint is healthy again. And the opposite: a service nobody calls is idle, the best time to train."""

from __future__ import annotations

import re
import time

import pytest

from tests.faults.harness import JobThread, assert_exactly_once, fault_line, make_spec
from tests.integration.test_governed_job import logged_decisions
from tests.support import ServingProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# mode -> what the recorded cause must say
CAUSES = {"down": "request failed|disconnected", "hang": "timed out", "garbage": "unparseable|not found",
          "frozen": "none finished"}


@pytest.mark.slow
def test_endpoint_down_hanging_garbage_frozen_each_pause_with_the_cause(ray_session, tmp_path, capsys):
    pauses_s: dict[str, float] = {}
    with ServingProcess(delay_s=0.002, rps=40) as server:
        job = JobThread(make_spec(tmp_path, "fault-telemetry", server.metrics_url, rows_per_s=400, slices=4, rows=2000))
        job.start()
        job.wait_for(lambda s: s["active"] > 0 and s["rows_consumed"] > 0, timeout_s=120)
        for mode in CAUSES:
            broke_at = time.time()
            server.set_metrics_mode(mode)
            paused = job.wait_for(lambda s: s["seen"] > broke_at and s["level"] == "PAUSE" and s["active"] == 0)
            pauses_s[mode] = paused["seen"] - broke_at
            server.set_metrics_mode("ok")
            healed_at = time.time()
            job.wait_for(lambda s: s["seen"] > healed_at and s["level"] != "PAUSE"
                         and s["rows_consumed"] > paused["rows_consumed"], timeout_s=90)
        summary = job.finish(timeout_s=240)

    decisions = logged_decisions(summary, tmp_path)
    for mode, cause in CAUSES.items():
        hits = [d for d in decisions if d["level"] == "PAUSE" and re.search(cause, d.get("error") or "")]
        seen = sorted({d.get("error") for d in decisions if d["level"] == "PAUSE"} - {None})
        assert hits, f"no PAUSE decision recorded with cause {cause!r} for mode {mode!r}; causes seen: {seen}"
        assert {d["reason"] for d in hits} <= {"TELEMETRY_MISSING", "TELEMETRY_STALE", "COOLDOWN", "HYSTERESIS"}
    fault_line(capsys, "telemetry-down-hang-garbage-frozen", summary,
               **{f"pause_{m}_s": round(v, 2) for m, v in pauses_s.items()}, pauses=summary["pauses"])
    assert_exactly_once(summary)


def test_an_idle_service_is_headroom_not_missing_telemetry(ray_session, tmp_path):
    """Traffic stops mid-job: the histogram stops moving and nothing is in flight. The job keeps training."""
    with ServingProcess(delay_s=0.002, rps=40) as server:
        job = JobThread(make_spec(tmp_path, "fault-idle", server.metrics_url, rows_per_s=300, slices=4, rows=2000))
        job.start()
        job.wait_for(lambda s: s["active"] > 0 and s["rows_consumed"] > 0, timeout_s=120)
        server.set_rps(0)
        quiet_at = time.time()
        before = job.wait_for(lambda s: s["seen"] > quiet_at + 5.0, timeout_s=60)  # well past idle_after_s
        after = job.wait_for(lambda s: s["seen"] > before["seen"] + 3.0, timeout_s=60)
        assert after["rows_consumed"] > before["rows_consumed"], (before, after)  # trained while nobody called
        assert after["level"] != "PAUSE" and after["error"] is None, after
        server.set_rps(40)
        summary = job.finish(timeout_s=240)
    assert_exactly_once(summary)
