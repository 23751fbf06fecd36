"""What a plan looks like to people and programs: JSON records, a table, an iCalendar file, a PNG.

Everything here is deterministic for a given plan (no wall clock: the calendar's DTSTAMP is the
horizon start), so re-running the planner on the same input rewrites identical files.

>>> records = plan_records(plan)                         # doctest: +SKIP
>>> write_plan_json(plan, "plan.json"); write_ics(plan, "plan.ics")   # doctest: +SKIP
>>> print(render_table(plan))                            # doctest: +SKIP
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.errors import DataError
from runtime.windows.profile import Forecast, zone
from runtime.windows.placement import Blackout, Plan


def local_datetime(epoch_s: float, tz_name: str) -> datetime:
    return datetime.fromtimestamp(epoch_s, zone(tz_name))


def iso_local(epoch_s: float, tz_name: str) -> str:
    """ISO-8601 with the zone's offset at that instant, e.g. ``1995-07-22T03:45:00-04:00``."""
    return local_datetime(epoch_s, tz_name).isoformat()


def plan_records(plan: Plan) -> list[dict[str, Any]]:
    """One ``{job, start, end, ...}`` record per window, in start order (the ``plan.json`` list)."""
    return [{
        "job": w.job,
        "run": w.run,
        "start": iso_local(w.start_epoch_s, plan.tz_name),
        "end": iso_local(w.end_epoch_s, plan.tz_name),
        "workers": w.workers,
        "predicted_load_rps": round(w.mean_load_rps, 6),
        "predicted_peak_rps": round(w.peak_load_rps, 6),
        "mean_price": None if w.mean_price is None else round(w.mean_price, 6),
        "cost": round(w.cost, 6),
    } for w in plan.windows]


def unplaced_records(plan: Plan) -> list[dict[str, Any]]:
    return [{"job": u.job, "run": u.run, "release": iso_local(u.release_epoch_s, plan.tz_name),
             "due": None if u.due_epoch_s == float("inf") else iso_local(u.due_epoch_s, plan.tz_name),
             "reason": u.reason.value, "detail": u.detail} for u in plan.unplaced]


def _writable(path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise DataError("output folder does not exist", where=str(path), fix=f"create {path.parent} first")
    return path


def write_plan_json(plan: Plan, path: str | Path) -> Path:
    """Write the window records as a JSON list."""
    from runtime.training.checkpoint import atomic_write_text

    path = _writable(path)
    atomic_write_text(path, json.dumps(plan_records(plan), indent=2) + "\n")
    return path


def render_table(plan: Plan) -> str:
    """A plain-text table of windows then unplaced runs (what ``headroom plan`` prints)."""
    fmt = "%a %Y-%m-%d %H:%M"
    header = ("job", "run", f"start ({plan.tz_name})", "end", "workers", "load rps", "peak rps", "price", "cost")
    rows = [(w.job, str(w.run), local_datetime(w.start_epoch_s, plan.tz_name).strftime(fmt),
             local_datetime(w.end_epoch_s, plan.tz_name).strftime(fmt), str(w.workers), f"{w.mean_load_rps:.3f}",
             f"{w.peak_load_rps:.3f}", "-" if w.mean_price is None else f"{w.mean_price:.3f}", f"{w.cost:.3f}")
            for w in plan.windows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    summary = (f"{len(plan.windows)} window(s), total cost {plan.total_cost:.3f}, "
               f"{'optimal' if plan.proven_optimal else 'NOT proven optimal'} ({plan.method})")
    lines.append(summary)
    for u in plan.unplaced:
        lines.append(f"UNPLACED {u.job} run {u.run} (from {local_datetime(u.release_epoch_s, plan.tz_name).strftime(fmt)}): "
                     f"{u.reason.value}: {u.detail}")
    lines.extend(f"note: {n}" for n in plan.notes)
    return "\n".join(lines)


def _ics_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def _fold(line: str) -> str:
    """RFC 5545 3.1: lines longer than 75 octets continue on the next line after one space."""
    raw = line.encode("utf-8")
    if len(raw) <= 75:
        return line
    parts, chunk = [], b""
    for ch in line:
        enc = ch.encode("utf-8")
        if len(chunk) + len(enc) > (75 if not parts else 74):
            parts.append(chunk.decode("utf-8"))
            chunk = b""
        chunk += enc
    parts.append(chunk.decode("utf-8"))
    return "\r\n ".join(parts)


def _utc_stamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def ics_text(plan: Plan, calendar_name: str = "Headroom retraining windows") -> str:
    """An iCalendar (RFC 5545) document with one event per window, times in UTC."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Headroom//maintenance-window planner//EN",
             "CALSCALE:GREGORIAN", "METHOD:PUBLISH", f"X-WR-CALNAME:{_ics_text(calendar_name)}",
             f"X-WR-TIMEZONE:{plan.tz_name}"]
    stamp = _utc_stamp(plan.horizon_start_epoch_s)  # deterministic: the same plan, the same bytes
    for w in plan.windows:
        description = (f"Headroom retraining of {w.job} (run {w.run}) on {w.workers} worker(s). "
                       f"Predicted serving load {w.mean_load_rps:.3f} rps (peak {w.peak_load_rps:.3f}). "
                       f"The governor still yields to serving inside this window.")
        lines += ["BEGIN:VEVENT", f"UID:{w.job}-{w.run}-{_utc_stamp(w.start_epoch_s)}@headroom",
                  f"DTSTAMP:{stamp}", f"DTSTART:{_utc_stamp(w.start_epoch_s)}", f"DTEND:{_utc_stamp(w.end_epoch_s)}",
                  f"SUMMARY:{_ics_text(f'Retraining: {w.job}')}", f"DESCRIPTION:{_ics_text(description)}",
                  "CATEGORIES:MAINTENANCE", "TRANSP:TRANSPARENT", "END:VEVENT"]
    lines.append("END:VCALENDAR")
    return "\r\n".join(_fold(line) for line in lines) + "\r\n"


def write_ics(plan: Plan, path: str | Path) -> Path:
    path = _writable(path)
    from runtime.training.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, ics_text(plan).encode("utf-8"))
    return path


def plot_plan(plan: Plan, forecast: Forecast, path: str | Path, *, max_load_rps: float | None = None,
              blackouts: tuple[Blackout, ...] = (), actual: Forecast | None = None, title: str | None = None) -> Path:
    """PNG: the profile laid over the horizon, windows shaded per job, blackouts hatched, the threshold dashed."""
    import matplotlib
    import matplotlib.dates as mdates

    from runtime.plots import new_figure, save_figure

    path = _writable(path)
    tz = zone(plan.tz_name)
    times = [datetime.fromtimestamp(t, tz) for t in forecast.start_epoch_s.tolist()]
    fig = new_figure(figsize=(14, 4.5), dpi=100)
    ax = fig.subplots()
    ax.step(times, forecast.load_rps, where="post", color="black", lw=1.2, label="forecast (weekly profile)")
    if actual is not None:
        ax.step([datetime.fromtimestamp(t, tz) for t in actual.start_epoch_s.tolist()], actual.load_rps,
                where="post", color="tab:gray", lw=0.7, alpha=0.8, label="actual")
    colors = matplotlib.colormaps["tab10"]
    jobs = sorted({w.job for w in plan.windows})
    for k, job in enumerate(jobs):
        for n, w in enumerate(x for x in plan.windows if x.job == job):
            ax.axvspan(datetime.fromtimestamp(w.start_epoch_s, tz), datetime.fromtimestamp(w.end_epoch_s, tz),
                       color=colors(k % 10), alpha=0.3, label=job if n == 0 else None)
    for n, b in enumerate(blackouts):
        ax.axvspan(datetime.fromtimestamp(b.start_epoch_s, tz), datetime.fromtimestamp(b.end_epoch_s, tz),
                   facecolor="none", edgecolor="tab:red", hatch="//", label="blackout" if n == 0 else None)
    if max_load_rps is not None:
        ax.axhline(max_load_rps, color="tab:red", ls="--", lw=1, label=f"max load {max_load_rps:g} rps")
    ax.set_xlim(times[0], datetime.fromtimestamp(forecast.end_epoch_s, tz))
    ax.xaxis.set_major_locator(mdates.DayLocator(tz=tz))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%a %m-%d", tz=tz))
    ax.set_ylabel("requests per second")
    ax.set_title(title or f"Traffic profile and planned windows ({plan.tz_name})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, ncol=8, frameon=False)
    save_figure(fig, path)
    return path
