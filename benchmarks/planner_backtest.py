"""Backtest of the window planner on the NASA July 1995 trace.

Fits the weekly profile on the first three weeks (Jul 1-21, local time), plans the fourth (Jul 22 to
the end of the log on Jul 28 13:32) and measures, on what *actually* happened, the mean traffic
inside the planned windows against

* (a) a fixed nightly window 01:00-05:00 every day, the usual hand-picked maintenance window, and
* (b) the best windows in hindsight: the same planner, same constraints, fed the real traffic.

Scenario ``daily-4h``: one 4-hour job a day (the nightly window's length, so the comparison is like
for like). Scenario ``portfolio``: ``examples/portfolio.yaml`` (four jobs, pool capacity, a blackout,
a price schedule) solved together, against the same jobs placed greedily one at a time.

    python -m benchmarks.planner_backtest [--data data/nasa-http-1995-07.csv] [--out-dir bench-out]

Prints the figures and ratios, writes ``bench-out/planner_backtest.json`` and two PNGs, and exits 1
if the planned windows do not carry less traffic than the nightly window.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from runtime.windows.history import History, read_history_csv
from runtime.windows.plan_report import iso_local, plan_records, plot_plan
from runtime.windows.plan import load_plan_spec
from runtime.windows.profile import ProfileConfig, fit_weekly_profile, forecast_load, observed_load, zone
from runtime.windows.profile import Forecast
from runtime.windows.placement import JobRequest, Plan, PlanConstraints, plan_windows, slot_costs

ROOT = Path(__file__).resolve().parents[1]
TZ = "America/New_York"
NIGHTLY = (1, 5)  # local hours of the fixed window


def actual_mean_rpm(history: History, spans: list[tuple[float, float]]) -> float:
    """Mean requests per minute over every history row inside any of ``spans`` (half-open)."""
    inside = np.zeros(len(history.epoch_s), dtype=bool)
    for start, end in spans:
        inside |= (history.epoch_s >= start) & (history.epoch_s < end)
    if not inside.any():
        return float("nan")
    return float(history.requests[inside].mean() * 60.0 / history.step_s)


def nightly_spans(start_epoch_s: float, end_epoch_s: float, tz_name: str) -> list[tuple[float, float]]:
    """01:00-05:00 local on every day of the horizon that has the whole window."""
    tz = zone(tz_name)
    day = datetime.fromtimestamp(start_epoch_s, tz).date()
    spans = []
    while True:
        a = datetime(day.year, day.month, day.day, NIGHTLY[0], tzinfo=tz).timestamp()
        b = datetime(day.year, day.month, day.day, NIGHTLY[1], tzinfo=tz).timestamp()
        if a >= end_epoch_s:
            return spans
        if a >= start_epoch_s and b <= end_epoch_s:
            spans.append((a, b))
        day += timedelta(days=1)


def realized_cost(plan: Plan, actual: Forecast, constraints: PlanConstraints) -> float:
    """The planner's objective (workers x normalised load, plus weighted price) evaluated on real traffic."""
    cost, _ = slot_costs(actual, constraints)
    total = 0.0
    for w in plan.windows:
        covered = (actual.start_epoch_s < w.end_epoch_s) & (actual.start_epoch_s + actual.slot_s > w.start_epoch_s)
        total += w.workers * float(cost[covered].sum())
    return total


def spans_of(plan: Plan) -> list[tuple[float, float]]:
    return [(w.start_epoch_s, w.end_epoch_s) for w in plan.windows]


def run(data: Path, out_dir: Path) -> dict:
    history = read_history_csv(data)
    tz = zone(TZ)
    split = datetime(1995, 7, 22, tzinfo=tz).timestamp()
    end = float(history.epoch_s[-1] + history.step_s)
    train, test = history.between(-np.inf, split), history.between(split, end)
    config = ProfileConfig()
    profile = fit_weekly_profile(train, TZ, config)
    forecast = forecast_load(profile, split, end - split)
    actual = observed_load(test, split, end - split, TZ, config.slot_s)
    report: dict = {"data": str(data), "tz": TZ, "fit": [iso_local(float(train.epoch_s[0]), TZ), iso_local(split, TZ)],
                    "plan": [iso_local(split, TZ), iso_local(end, TZ)], "scenarios": {}}

    # (1) daily-4h: one 4-hour job per local day, compared with the fixed 01:00-05:00 window.
    job = JobRequest("daily-4h", duration_s=3.5 * 3600, validation_s=0.5 * 3600, workers=1, cadence_days=1)
    constraints = PlanConstraints(pool_workers=1)
    planned = plan_windows(forecast, [job], constraints)
    hindsight = plan_windows(actual, [job], constraints)
    nightly = nightly_spans(split, end, TZ)
    figures = {
        "planned_rpm": actual_mean_rpm(test, spans_of(planned)),
        "nightly_rpm": actual_mean_rpm(test, nightly),
        "hindsight_rpm": actual_mean_rpm(test, spans_of(hindsight)),
    }
    figures["planned_over_nightly"] = figures["planned_rpm"] / figures["nightly_rpm"]
    figures["planned_over_hindsight"] = figures["planned_rpm"] / figures["hindsight_rpm"]
    figures["nightly_over_hindsight"] = figures["nightly_rpm"] / figures["hindsight_rpm"]
    report["scenarios"]["daily-4h"] = {**figures, "windows": plan_records(planned),
                                       "hindsight_windows": plan_records(hindsight),
                                       "nightly_windows": [[iso_local(a, TZ), iso_local(b, TZ)] for a, b in nightly]}

    # (2) portfolio: the example jobs file solved together vs greedily, and vs hindsight.
    spec = load_plan_spec(ROOT / "examples" / "portfolio.yaml", tz_override=TZ)
    together = plan_windows(forecast, spec.jobs, spec.constraints)
    greedy = plan_windows(forecast, spec.jobs, spec.constraints, strategy="greedy")
    best = plan_windows(actual, spec.jobs, spec.constraints)
    report["scenarios"]["portfolio"] = {
        "planned_rpm": actual_mean_rpm(test, spans_of(together)),
        "greedy_rpm": actual_mean_rpm(test, spans_of(greedy)),
        "hindsight_rpm": actual_mean_rpm(test, spans_of(best)),
        "planned_forecast_cost": together.total_cost, "greedy_forecast_cost": greedy.total_cost,
        "planned_realized_cost": realized_cost(together, actual, spec.constraints),
        "greedy_realized_cost": realized_cost(greedy, actual, spec.constraints),
        "hindsight_realized_cost": realized_cost(best, actual, spec.constraints),
        "placed": len(together.windows), "greedy_placed": len(greedy.windows), "hindsight_placed": len(best.windows),
        "proven_optimal": together.proven_optimal, "windows": plan_records(together),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "planner_backtest.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_plan(planned, forecast, out_dir / "planner_backtest.png", actual=actual,
              title="Backtest week Jul 22-28 1995: profile from Jul 1-21, daily 4-h windows, actual traffic in grey")
    plot_plan(together, forecast, out_dir / "planner_backtest_portfolio.png", actual=actual,
              max_load_rps=spec.constraints.max_load_rps, blackouts=spec.constraints.blackouts,
              title="Backtest week: examples/portfolio.yaml placed together")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "nasa-http-1995-07.csv")
    parser.add_argument("--out-dir", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    report = run(args.data, args.out_dir)
    a, p = report["scenarios"]["daily-4h"], report["scenarios"]["portfolio"]
    print(f"planner backtest on {args.data.name}: fit {report['fit'][0]} .. {report['fit'][1]}, "
          f"plan {report['plan'][0]} .. {report['plan'][1]} ({TZ})")
    print("scenario daily-4h (one 4-h window per day), mean actual requests/min inside the windows:")
    print(f"  planned {a['planned_rpm']:.2f}   nightly 01:00-05:00 {a['nightly_rpm']:.2f}   "
          f"hindsight best {a['hindsight_rpm']:.2f}")
    print(f"  ratios: planned/nightly {a['planned_over_nightly']:.3f}   planned/hindsight "
          f"{a['planned_over_hindsight']:.3f}   nightly/hindsight {a['nightly_over_hindsight']:.3f}")
    print(f"scenario portfolio (examples/portfolio.yaml, {p['placed']} windows), mean actual requests/min:")
    print(f"  planned together {p['planned_rpm']:.2f}   greedy one-by-one {p['greedy_rpm']:.2f} "
          f"({p['greedy_placed']} windows)   hindsight best {p['hindsight_rpm']:.2f}")
    print(f"  objective (workers x load + price), forecast: together {p['planned_forecast_cost']:.2f} vs greedy "
          f"{p['greedy_forecast_cost']:.2f}; realized on actual traffic: together {p['planned_realized_cost']:.2f}, "
          f"greedy {p['greedy_realized_cost']:.2f}, hindsight {p['hindsight_realized_cost']:.2f}")
    print(f"wrote {args.out_dir / 'planner_backtest.json'}, {args.out_dir / 'planner_backtest.png'}, "
          f"{args.out_dir / 'planner_backtest_portfolio.png'}")
    if not a["planned_rpm"] < a["nightly_rpm"]:
        print("FAIL: the planned windows do not carry less traffic than the fixed nightly window", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
