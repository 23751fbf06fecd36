"""The rollout report: ``report.md`` with two PNG plots, written at the end of every rollout.

- ``latency.png`` -- every request's model latency over the rollout, champion and challenger apart,
  with the phases shaded and named;
- ``shadow.png`` -- champion vs challenger predictions on the mirrored requests (the diagonal is
  perfect agreement), when the rollout had a shadow phase.

The controller logs the folder to the rollout's MLflow run under ``release/``.
"""

from __future__ import annotations

from pathlib import Path

from runtime.plots import new_figure, save_figure

from runtime.release.stats import CHALLENGER, CHAMPION, mirrored_pairs

PHASE_COLUMNS = [  # (key in the phase row, title, format)
    ("phase", "phase", "{}"), ("percent", "split %", "{:g}"), ("champion_requests", "champion req", "{}"),
    ("champion_p50_ms", "p50 ms", "{:.1f}"), ("champion_p99_ms", "p99 ms", "{:.1f}"),
    ("challenger_requests", "challenger req", "{}"), ("challenger_p50_ms", "p50 ms", "{:.1f}"),
    ("challenger_p99_ms", "p99 ms", "{:.1f}"), ("challenger_error_rate", "errors", "{:.1%}"),
    ("drift", "drift (KS)", "{:.3f}"), ("agreement", "agreement", "{:.1%}"),
    ("metric_champion", "metric champion", "{:.4f}"), ("metric_challenger", "metric challenger", "{:.4f}"),
]


def write_report(out_dir: Path, result: dict, records: list[dict], plan, *, t0_wall_s: float) -> list[Path]:
    """Write ``report.md`` (and the plots it links) into ``out_dir``; returns the files written."""
    written = [_plot_latency(out_dir / "latency.png", records, t0_wall_s)]
    pairs = mirrored_pairs(r for r in records if r["phase"] == "shadow")
    if pairs:
        written.append(_plot_shadow(out_dir / "shadow.png", pairs))
    report = out_dir / "report.md"
    report.write_text(_markdown(result, plan, [p.name for p in written]), encoding="utf-8")
    return [report, *written]


def _markdown(result: dict, plan, images: list[str]) -> str:
    budget = plan.risk_budget
    lines = [
        f"# Rollout of {result['model']} v{result['challenger']} against champion v{result['champion_before']}: "
        f"**{result['outcome'].upper()}**",
        "",
        f"- decision: `{result['reason']}` -- {result['detail']}",
        f"- champion after: v{result['champion_after']}"
        + (f" (previous-champion: v{result['previous_champion']})" if result.get("previous_champion") else ""),
        f"- duration: {result['duration_s']:.0f} s; MLflow run `{result['run_id']}`",
        f"- risk budget: p99 <= baseline + max({budget.max_p99_increase_ratio:.0%}, {budget.max_p99_increase_ms:g} ms), "
        f"error rate <= {budget.max_error_rate:.2%}, prediction drift (KS) <= {budget.max_prediction_drift}, "
        f"judged after {budget.min_requests} challenger requests",
        "",
        "## Phases",
        "",
        "| " + " | ".join(title for _, title, _ in PHASE_COLUMNS) + " |",
        "|" + "---|" * len(PHASE_COLUMNS),
    ]
    lines += ["| " + " | ".join("n/a" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in PHASE_COLUMNS)
              + " |" for row in result["phases"]]
    shadow = next((row for row in result["phases"] if row["phase"] == "shadow"), None)
    if shadow:
        lines += ["", *_shadow_section(shadow)]
    lines += ["", "## Decisions", "",
              "| t (s) | action | reason | split % | detail |", "|---|---|---|---|---|"]
    lines += [f"| {d['at_s']:.1f} | {d['action']} | {d['reason']} | {d['split_percent']:g} | {d['detail']} |"
              for d in result["decisions"]]
    lines += ["", *[f"![{Path(name).stem}]({name})" for name in images], ""]
    return "\n".join(lines)


def _shadow_section(row: dict) -> list[str]:
    """The shadow report: both models on the same mirrored requests."""
    def f(key: str, fmt: str) -> str:
        return "n/a" if row.get(key) is None else fmt.format(row[key])

    return [
        "## Shadow test", "",
        f"{row['challenger_requests']} mirrored requests, {row['pairs']} prediction pairs: agreement "
        f"{f('agreement', '{:.1%}')}, prediction drift (KS) {f('drift', '{:.3f}')}; "
        f"{row['labelled']} labelled rows from feedback.", "",
        "| | champion (served) | challenger (mirrored) |", "|---|---|---|",
        f"| p50 ms | {f('champion_p50_ms', '{:.1f}')} | {f('challenger_p50_ms', '{:.1f}')} |",
        f"| p99 ms | {f('champion_p99_ms', '{:.1f}')} | {f('challenger_p99_ms', '{:.1f}')} |",
        f"| metric on feedback | {f('metric_champion', '{:.4f}')} | {f('metric_challenger', '{:.4f}')} |",
    ]


def _plot_latency(path: Path, records: list[dict], t0_wall_s: float) -> Path:
    fig = new_figure(figsize=(10, 4.5))
    ax = fig.subplots()
    for role, color in ((CHAMPION, "tab:blue"), (CHALLENGER, "tab:orange")):
        pts = [(r["t"] - t0_wall_s, r["latency_ms"][role]) for r in records if role in r["latency_ms"]]
        if pts:
            ax.scatter(*zip(*pts), s=6, alpha=0.6, color=color, label=role)
    spans: dict[str, list[float]] = {}
    for r in records:
        t = r["t"] - t0_wall_s
        lo, hi = spans.get(r["phase"], [t, t])
        spans[r["phase"]] = [min(lo, t), max(hi, t)]
    for i, (label, (lo, hi)) in enumerate(sorted(spans.items(), key=lambda kv: kv[1][0])):
        ax.axvspan(lo, hi, color="grey", alpha=0.08 if i % 2 else 0.16)
        ax.text((lo + hi) / 2, 1.01, label, transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the rollout's first request")
    ax.set_ylabel("model latency (ms, log)")
    ax.legend(loc="upper left")
    save_figure(fig, path)
    return path


def _plot_shadow(path: Path, pairs: list[tuple[float, float]]) -> Path:
    fig = new_figure(figsize=(5, 5))
    ax = fig.subplots()
    a, b = zip(*pairs)
    ax.scatter(a, b, s=6, alpha=0.6)
    lo, hi = min(min(a), min(b)), max(max(a), max(b))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
    ax.set_xlabel("champion prediction")
    ax.set_ylabel("challenger prediction")
    ax.set_title(f"shadow: {len(pairs)} mirrored predictions")
    save_figure(fig, path)
    return path
