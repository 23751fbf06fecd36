"""The post-mortem of a job: one Markdown report with PNG plots, logged to the job's MLflow run.

It answers what an on-call engineer or a model reviewer asks after the fact: what was trained on,
what the checklist and the drift check found, how the candidate fared against the champion, what
serving latency did while training held workers compared with the window's baseline (the samples in
which the job held none), how often and how fast the job got out of the way, and what it cost.

Everything is computed from the summary and the governor's decision log; nothing here talks to
MLflow or Ray (``headroom report RUN_ID`` fetches the logged file).

>>> latency_comparison([{"p99_ms": 10, "active": 0}, {"p99_ms": 30, "active": 1}])["training"]["median_ms"]
30.0
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from runtime.plots import new_figure, plot_timeline, save_figure
from runtime.training.checkpoint import atomic_write_text

REPORT = "postmortem.md"
ARTIFACT_DIR = "postmortem"


def latency_comparison(decisions: list[dict], slo_p99_ms: float | None = None) -> dict:
    """Serving p99 samples split by whether the job held running workers at the time."""
    groups: dict[str, list[float]] = {"baseline": [], "training": []}
    for d in decisions:
        p99 = d.get("p99_ms")
        if p99 is None or (isinstance(p99, float) and math.isnan(p99)):
            continue
        groups["training" if (d.get("active") or 0) > 0 else "baseline"].append(float(p99))
    out = {}
    for name, values in groups.items():
        arr = np.asarray(values)
        out[name] = {"samples": len(arr),
                     "median_ms": float(np.median(arr)) if len(arr) else None,
                     "p95_ms": float(np.percentile(arr, 95)) if len(arr) else None,
                     "over_slo": int((arr > slo_p99_ms).sum()) if len(arr) and slo_p99_ms else 0}
    b, t = out["baseline"]["median_ms"], out["training"]["median_ms"]
    out["training_over_baseline"] = (t / b) if b and t is not None else None
    return out


def compute_cost(cpu_s: float, price_per_cpu_hour: float) -> float:
    return cpu_s / 3600.0 * price_per_cpu_hour


def render_postmortem(summary: dict, *, latency: dict, slo_p99_ms: float, currency: str, plots: dict[str, str]) -> str:
    """The report as Markdown; ``plots`` maps a plot's role to its file name beside the report."""
    parts = [_overview(summary), _trained_on(summary), _checklist(summary, plots), _validation(summary, plots),
             _serving(summary, latency, slo_p99_ms, plots), _window(summary), _compute(summary, currency)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _overview(s: dict) -> str:
    return (f"# Post-mortem: `{s['job']}`\n\n"
            f"| | |\n|---|---|\n| status | **{s['status']}** |\n| MLflow run | `{s['mlflow_run_id']}` |\n"
            f"| started from | {s.get('warm_start')} |\n| rows consumed (this run / total) | "
            f"{s.get('rows_consumed_this_run', 0)} ({s.get('rows_consumed', 0)} of {s.get('rows_total', 0)}) |\n"
            f"| registered | {_registered(s)} |\n| duration | {s.get('duration_s', 0):.1f} s |"
            + (f"\n| error | `{s['error']}` |" if s.get("error") else ""))


def _registered(s: dict) -> str:
    if s.get("registered_version") is None:
        return "nothing"
    return f"version {s['registered_version']}, alias {s.get('registered_alias') or 'none'}"


def _trained_on(s: dict) -> str:
    lineage = s.get("lineage") or {}
    slices = lineage.get("slices") or []
    head = (f"## What it was trained on\n\nStarted from `{lineage.get('start', s.get('warm_start'))}`; "
            f"rollback target `{lineage.get('rollback_target', 'none')}`.")
    if not slices:
        return head + "\n\nNo slice was consumed in this run."
    rows = "\n".join(f"| {x['slice']} | {x['rows_consumed_this_run']} / {x['rows']} | `{x['sha256'][:16]}` |" for x in slices)
    return head + "\n\n| slice | rows consumed / rows | sha256 |\n|---|---|---|\n" + rows


def _checklist(s: dict, plots: dict) -> str:
    cl = s.get("checklist")
    if not cl:
        return ""
    rows = "\n".join(f"| {i['item']} | {'pass' if i['passed'] else '**FAIL**'} | {i['detail']} |" for i in cl["items"])
    text = f"## Pre-work checklist: {'passed' if cl['passed'] else '**failed** — nothing trained'}\n\n" \
           f"| item | result | detail |\n|---|---|---|\n{rows}"
    drift = [d for d in cl.get("drift", []) if not d["within"]]
    if drift:
        worst = sorted(drift, key=lambda d: -d["psi"])[:10]
        text += "\n\nDrifted slice-feature pairs (worst first):\n\n| slice | feature | PSI | KS | KS p-value |\n|---|---|---|---|---|\n"
        text += "\n".join(f"| {d['slice']} | {d['feature']} | {d['psi']:.3f} | {d['ks_stat']:.3f} | {d['ks_pvalue']:.2g} |"
                          for d in worst)
    if "drift" in plots:
        text += f"\n\n![drift]({plots['drift']})"
    return text


def _validation(s: dict, plots: dict) -> str:
    v = s.get("validation") or {}
    if not v or "candidate" not in v:
        return f"## Validation\n\n{v.get('skipped', 'not run')}."
    champ = "no champion" if v.get("champion") is None else f"champion v{v.get('champion_version')}: {v['champion']:.4f}"
    verdict = "passed" if v.get("passed") else "**failed**"
    text = (f"## Validation gate: {verdict}\n\nHoldout `{v['metric']}` — candidate {v['candidate']:.4f}; {champ}. "
            f"Bounds (MLflow MetricThreshold): {_bounds(v.get('thresholds') or {})}.")
    if v.get("reasons"):
        text += f"\n\n```\n{v['reasons']}\n```"
    if "validation" in plots:
        text += f"\n\n![validation]({plots['validation']})"
    return text


def _bounds(thresholds: dict) -> str:
    labels = {"threshold": "at least {:g}", "min_absolute_change": "champion + {:g}",
              "min_relative_change": "champion + {:.1%} of it"}
    parts = [labels[k].format(v) for k, v in thresholds.items() if v is not None and k in labels]
    return ", ".join(parts) or "none"


def _serving(s: dict, latency: dict, slo: float, plots: dict) -> str:
    b, t = latency["baseline"], latency["training"]
    ratio = latency.get("training_over_baseline")
    r = s.get("reaction") or {}
    stop, read = s.get("stopped") or {}, s.get("read") or {}
    react = (f"median {r['median_s']:.3f} s, p95 {r['p95_s']:.3f} s, max {r['max_s']:.3f} s (n={r['count']})"
             + (f"; of it, until the workers' last step ended: median {stop['median_s']:.3f} s, p95 {stop['p95_s']:.3f} s"
                if stop.get("count") else "")
             + (f"; before it, the telemetry read that showed the loss: median {read['median_s']:.3f} s, "
                f"p95 {read['p95_s']:.3f} s" if read.get("count") else "")
             if r.get("count") else "no pause needed a release")
    text = ("## Serving during the window\n\n"
            f"| serving p99 (SLO {slo:g} ms) | samples | median ms | p95 ms | samples over SLO |\n|---|---|---|---|---|\n"
            f"| baseline (job held no workers) | {b['samples']} | {_ms(b['median_ms'])} | {_ms(b['p95_ms'])} | {b['over_slo']} |\n"
            f"| while training | {t['samples']} | {_ms(t['median_ms'])} | {_ms(t['p95_ms'])} | {t['over_slo']} |\n\n"
            f"Training / baseline median p99: {'n/a' if ratio is None else f'{ratio:.2f}x'}. "
            f"Pauses {s.get('pauses', 0)}, resumes {s.get('resumes', 0)}; reaction (pause decided -> workers released): "
            f"{react}. Checkpoints written: {s.get('checkpoints', 0)}; worker crashes: {s.get('worker_crashes', 0)}"
            f"{f'; workers replaced for sending no heartbeat for budget.worker_hung_s: {h}' if (h := s.get('workers_hung', 0)) else ''}.")
    for role in ("latency", "timeline"):
        if role in plots:
            text += f"\n\n![{role}]({plots[role]})"
    return text


def _window(s: dict) -> str:
    """The planned window against the time this run used (runs started by the window scheduler)."""
    w = s.get("window")
    if not w:
        return ""
    from datetime import datetime, timezone

    def at(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    planned_h = (w["planned_end_s"] - w["planned_start_s"]) / 3600
    return ("## Planned window against time used\n\n"
            f"Planned {at(w['planned_start_s'])} .. {at(w['planned_end_s'])} UTC ({planned_h:.2f} h); this run "
            f"{at(w['started_s'])} .. {at(w['ended_s'])} UTC, {100 * w['used_fraction']:.0f} % of the window"
            + (" -- it ended with the window, rows left for the next one." if s.get("status") == "window_ended" else "."))


def _compute(s: dict, currency: str) -> str:
    c = s.get("compute") or {}
    if not c:
        return ""
    office = c.get("office_cpu_s", 0.0)
    text = ("## Compute used\n\n"
            f"{c['cpu_s']:.1f} CPU-seconds (workers {c['worker_cpu_s']:.1f}, driver {c['driver_cpu_s']:.1f}, "
            f"office {office:.1f}) at {c['price_per_cpu_hour']:g} {currency}/CPU-hour = **{c['cost']:.6f} {currency}**. "
            "The office is the job's actor on the training pool, isolated like a worker: MLflow, the checklist, the "
            "gate, registration and this report. Figures as of this report's writing.")
    if c.get("worker_cpu_s"):
        text += (f" Per worker CPU-s: driver {c['driver_cpu_s'] / c['worker_cpu_s']:.2f}, office "
                 f"{office / c['worker_cpu_s']:.2f} (every worker and office process counted from its start; the "
                 "driver from the job's start).")
    for who in ("driver", "office"):
        phases = s.get(f"{who}_cpu_by_phase_s") or {}
        if phases:
            text += (f"\n\n| {who} phase | CPU-s |\n|---|---|\n"
                     + "\n".join(f"| {k} | {v:.2f} |" for k, v in phases.items()))
    held = s.get("held") or {}
    if held.get("phases"):
        text += ("\n\nThe job's work after training waited for headroom: " +
                 "; ".join(f"{h['phase']} {h['waited_s']:.1f} s ({h['reason']})" for h in held["phases"]) + ".")
    return text


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


# --- plots --------------------------------------------------------------------------------------

def _save(fig, out: Path) -> Path:
    save_figure(fig, out, dpi=100)
    return out


def plot_drift(drift: list[dict], out: Path, psi_max: float) -> Path:
    """Worst PSI per feature across the new slices, with the bound."""
    worst: dict[str, float] = {}
    for d in drift:
        worst[d["feature"]] = max(worst.get(d["feature"], 0.0), 0.0 if math.isnan(d["psi"]) else d["psi"])
    fig = new_figure(figsize=(7, 3.5))
    ax = fig.subplots()
    names = list(worst)
    ax.bar(names, [worst[n] for n in names], color=["tab:red" if worst[n] > psi_max else "tab:blue" for n in names])
    ax.axhline(psi_max, color="black", ls="--", lw=1, label=f"psi_max {psi_max:g}")
    ax.set_ylabel("worst PSI over new slices")
    ax.set_title("feature drift against the reference")
    ax.legend()
    return _save(fig, out)


def plot_validation(v: dict, out: Path) -> Path:
    fig = new_figure(figsize=(5, 3.5))
    ax = fig.subplots()
    labels, values = ["candidate"], [v["candidate"]]
    if v.get("champion") is not None:
        labels.append(f"champion v{v.get('champion_version')}")
        values.append(v["champion"])
    ax.bar(labels, values, color=["tab:green" if v.get("passed") else "tab:red", "tab:gray"][:len(values)])
    if (v.get("thresholds") or {}).get("threshold") is not None:
        ax.axhline(v["thresholds"]["threshold"], color="black", ls="--", lw=1, label="min_score")
        ax.legend()
    ax.set_ylabel(f"holdout {v['metric']}")
    ax.set_title("validation gate")
    return _save(fig, out)


def plot_latency(decisions: list[dict], out: Path, slo_p99_ms: float) -> Path:
    """Distribution of serving p99 samples without and with the job's workers running."""
    split = {"baseline": [], "training": []}
    for d in decisions:
        if d.get("p99_ms") is not None:
            split["training" if (d.get("active") or 0) > 0 else "baseline"].append(float(d["p99_ms"]))
    fig = new_figure(figsize=(6, 3.5))
    ax = fig.subplots()
    data = [v if v else [math.nan] for v in split.values()]
    ax.boxplot(data, tick_labels=[f"{k} (n={len(v)})" for k, v in split.items()], showfliers=True)
    ax.axhline(slo_p99_ms, color="black", ls="--", lw=1, label=f"SLO {slo_p99_ms:g} ms")
    ax.set_ylabel("serving p99 (ms)")
    ax.set_title("serving p99 without and with the job's workers running")
    ax.legend()
    return _save(fig, out)


def write_postmortem(out_dir: Path, summary: dict, decisions: list[dict], progress: list[dict], *,
                     slo_p99_ms: float, psi_max: float, currency: str) -> list[Path]:
    """Write the report and its plots into ``out_dir``; returns the files to log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    drift = (summary.get("checklist") or {}).get("drift") or []
    if drift:
        plots["drift"] = plot_drift(drift, out_dir / "drift.png", psi_max).name
    if "candidate" in (summary.get("validation") or {}):
        plots["validation"] = plot_validation(summary["validation"], out_dir / "validation.png").name
    if decisions:
        plots["latency"] = plot_latency(decisions, out_dir / "latency.png", slo_p99_ms).name
        plots["timeline"] = plot_timeline(decisions, progress, out_dir / "timeline.png", slo_p99_ms=slo_p99_ms,
                                          title=f"{summary['job']}: governed retraining").name
    latency = latency_comparison(decisions, slo_p99_ms)
    report = out_dir / REPORT
    atomic_write_text(report, render_postmortem(summary, latency=latency, slo_p99_ms=slo_p99_ms, currency=currency, plots=plots))
    return [report, *(out_dir / name for name in plots.values())]
