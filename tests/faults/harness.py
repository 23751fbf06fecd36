"""What every fault test shares: the governed job from the integration tier, and the figure line.

Each fault test ends with one line such as
``FAULT worker-sigkill: rows_lost=0 rows_duplicated=0 recover_s=1.8`` (printed, not asserted: the
machine is shared), and asserts what must hold on any machine: nothing lost, nothing repeated.
"""

from __future__ import annotations

from tests.integration.test_governed_job import JobThread, assert_exactly_once, make_spec

__all__ = ["JobThread", "assert_exactly_once", "fault_line", "first_snap_after", "make_spec", "rows_lost"]


def rows_lost(summary: dict) -> int:
    return summary["rows_total"] - summary["rows_consumed"]


def fault_line(capsys, fault: str, summary: dict, **figures) -> str:
    parts = [f"rows_lost={rows_lost(summary)}", f"rows_duplicated={summary['rows_duplicated']}"]
    parts += [f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()]
    line = f"FAULT {fault}: " + " ".join(parts)
    with capsys.disabled():
        print("\n" + line, flush=True)
    return line


def first_snap_after(job: JobThread, t: float, rows_above: int) -> dict:
    """The first status snapshot after ``t`` showing more rows than ``rows_above``: training is back."""
    job.wait_for(lambda s: s["seen"] > t and s["rows_consumed"] > rows_above, timeout_s=120)
    return next(s for s in job.snaps if s["seen"] > t and s["rows_consumed"] > rows_above)
