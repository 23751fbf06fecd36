"""One picture of a governed run: load, tail latency, the governor's directive, and training throughput.

Four stacked panels share a time axis (seconds since the first record of any input); every span in which
the directive was PAUSE is shaded on all of them, so cause (latency) and effect (training stopped) line up.

>>> plot_timeline(decisions, progress, "run.png", client_latency=load.latency_series(),  # doctest: +SKIP
...               slo_p99_ms=50.0, title="headroom demo")
PosixPath('run.png')

Record formats (as the governor and the job driver write them):

- decision: ``{"t": epoch_s, "job", "level": "RUN"|"THROTTLE"|"PAUSE", "reason", "workers", "rows_per_s",
  "slack", "p99_ms", "rps", "utilization", "error"}``
- progress: ``{"t": epoch_s, "rows_consumed", "rows_per_s", "loss"}``
- client_latency: ``(epoch_s of the intended send, latency_s or None for a failed request)``

Missing keys and ``None`` values are gaps in the lines, never errors; empty inputs give empty panels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

LEVEL_VALUE = {"PAUSE": 0, "THROTTLE": 1, "RUN": 2}
PAUSE_COLOR = "#f4b6b6"
CLIENT_P99_WINDOW_S = 5.0  # rolling window of the client-side p99: a few hundred requests at demo rates


def _num(value: object) -> float:
    """``value`` as a float, NaN for None or anything non-numeric (NaN breaks the line: a visible gap)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _series(records: Sequence[dict], key: str, t0_s: float) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in records if not math.isnan(_num(r.get("t")))]
    rows.sort(key=lambda r: _num(r["t"]))
    return (np.array([_num(r["t"]) - t0_s for r in rows]), np.array([_num(r.get(key)) for r in rows]))


def _pause_spans(decisions: Sequence[dict], t0_s: float, t_end_s: float) -> list[tuple[float, float]]:
    """``[start, end)`` of each stretch in which the latest decision was PAUSE (relative seconds)."""
    spans, start = [], None
    for r in sorted((r for r in decisions if not math.isnan(_num(r.get("t")))), key=lambda r: _num(r["t"])):
        t = _num(r["t"]) - t0_s
        paused = r.get("level") == "PAUSE"
        if paused and start is None:
            start = t
        elif not paused and start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, max(t_end_s, start)))
    return spans


def rolling_p99_ms(client_latency: Iterable[tuple[float, float | None]], t0_s: float,
                   window_s: float = CLIENT_P99_WINDOW_S) -> tuple[np.ndarray, np.ndarray]:
    """p99 (ms) of successful requests in consecutive ``window_s`` windows, stamped at each window's end.

    A window whose requests all failed gets NaN; failures are not latencies, and the panel marks them apart.
    """
    points = [(t - t0_s, lat) for t, lat in client_latency if t is not None]
    if not points:
        return np.array([]), np.array([])
    t = np.array([p[0] for p in points])
    lat_ms = np.array([math.nan if p[1] is None else p[1] * 1e3 for p in points])
    edges = np.arange(t.min(), t.max() + window_s, window_s)
    ends, p99 = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = lat_ms[(t >= lo) & (t < hi)]
        ok = sel[~np.isnan(sel)]
        if len(sel):
            ends.append(hi)
            p99.append(float(np.percentile(ok, 99)) if len(ok) else math.nan)
    return np.array(ends), np.array(p99)


def plot_timeline(
    decisions: list[dict],
    progress: list[dict],
    out_path: str | Path,
    *,
    client_latency: list[tuple[float, float | None]] | None = None,
    slo_p99_ms: float | None = None,
    title: str = "",
) -> Path:
    """Draw the four-panel timeline to ``out_path`` (PNG, or any format matplotlib infers) and return it."""
    out_path = Path(out_path)
    client_latency = list(client_latency or [])
    all_t = [_num(r.get("t")) for r in [*decisions, *progress]] + [_num(t) for t, _ in client_latency]
    all_t = [t for t in all_t if not math.isnan(t)]
    t0_s = min(all_t) if all_t else 0.0
    t_end_s = (max(all_t) - t0_s) if all_t else 1.0

    fig = new_figure(figsize=(11, 9))
    axes = fig.subplots(4, 1, sharex=True)
    ax_load, ax_lat, ax_level, ax_train = axes

    # Load: what the telemetry saw, and what the client offered.
    t, rps = _series(decisions, "rps", t0_s)
    if len(t):
        ax_load.plot(t, rps, color="tab:blue", label="served rps (telemetry)")
    if client_latency:
        ct = np.array([_num(t) - t0_s for t, _ in client_latency])
        ct = ct[~np.isnan(ct)]
        if len(ct):
            bins = np.arange(ct.min(), ct.max() + 1.0, 1.0)
            if len(bins) >= 2:
                counts, _ = np.histogram(ct, bins=bins)
                ax_load.plot(bins[1:], counts, color="tab:gray", alpha=0.6, lw=0.8, label="offered rps (client)")
    ax_load.set_ylabel("load (req/s)")

    # Tail latency: the signal the governor acted on, the client's own view, and the objective.
    t, p99 = _series(decisions, "p99_ms", t0_s)
    if len(t):
        ax_lat.plot(t, p99, color="tab:red", marker=".", ms=3, label="p99 (telemetry)")
    if client_latency:
        ct, cp99 = rolling_p99_ms(client_latency, t0_s)
        if len(ct):
            ax_lat.plot(ct, cp99, color="tab:orange", alpha=0.8, label=f"p99 client ({CLIENT_P99_WINDOW_S:g} s windows)")
        failed = [_num(t) - t0_s for t, lat in client_latency if lat is None]
        if failed:
            ax_lat.plot(failed, [0.0] * len(failed), "x", color="black", ms=4, label="failed requests")
    if slo_p99_ms is not None:
        ax_lat.axhline(slo_p99_ms, color="black", ls="--", lw=1, label=f"SLO p99 {slo_p99_ms:g} ms")
    ax_lat.set_ylabel("p99 latency (ms)")

    # Directive: a step plot, because a level holds until the next decision.
    levels = [(r, LEVEL_VALUE.get(r.get("level"))) for r in decisions]
    levels = [(_num(r.get("t")) - t0_s, v) for r, v in levels if v is not None and not math.isnan(_num(r.get("t")))]
    levels.sort()
    if levels:
        lt = [x for x, _ in levels] + [max(t_end_s, levels[-1][0])]
        lv = [v for _, v in levels] + [levels[-1][1]]
        ax_level.step(lt, lv, where="post", color="tab:purple", lw=1.5)
    ax_level.set_yticks([0, 1, 2], ["PAUSE", "THROTTLE", "RUN"])
    ax_level.set_ylim(-0.3, 2.3)
    ax_level.set_ylabel("directive")

    # Training: what the job driver reported, and what the governor allowed.
    t, rows = _series(progress, "rows_per_s", t0_s)
    if len(t):
        ax_train.plot(t, rows, color="tab:green", label="rows/s (trainer)")
    t, allowed = _series(decisions, "rows_per_s", t0_s)
    if len(t) and not np.all(np.isnan(allowed)):
        ax_train.step(t, allowed, where="post", color="tab:olive", ls=":", label="rows/s allowed (governor)")
    ax_train.set_ylabel("training (rows/s)")
    ax_train.set_xlabel("time (s since first record)")

    for start, end in _pause_spans(decisions, t0_s, t_end_s):
        for ax in axes:
            ax.axvspan(start, end, color=PAUSE_COLOR, alpha=0.5, lw=0)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    ax_train.set_xlim(0.0, max(t_end_s, 1.0))
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, dpi=110)


def new_figure(**kwargs) -> Figure:
    """A figure of its own, not pyplot's: the caller's backend, windows and state stay untouched
    (a file is written with Agg whatever backend the caller chose)."""
    return Figure(constrained_layout=True, **kwargs)


def save_figure(fig: Figure, out_path: str | Path, dpi: int = 100) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    return out_path
