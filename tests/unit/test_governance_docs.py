"""Governance without Ray or MLflow runs: spec sections and their errors, the gate's thresholds,
the runbook and the post-mortem rendered from plain inputs, and the CLI's one-line errors."""

from __future__ import annotations

import pytest
import yaml

from runtime.cli.main import main
from runtime.errors import SpecError
from runtime.governance.gate import thresholds_for
from runtime.governance.postmortem import compute_cost, latency_comparison, render_postmortem, write_postmortem
from runtime.governance.runbook import render_runbook
from runtime.spec.job import ValidationSpec, load_spec, spec_from_dict
from tests.unit.test_spec import valid_raw


def governed_raw() -> dict:
    raw = valid_raw()
    raw.update(owner="ml-platform", contacts=[{"name": "Ada", "role": "on-call", "channel": "#ml-oncall"},
                                              {"name": "Bo", "role": "model reviewer", "channel": "bo@example.org"}],
               checklist={"max_data_age_s": 86400, "psi_max": 0.2, "ks_pvalue_min": 0.001},
               cost={"price_per_cpu_hour": 0.04, "currency": "EUR"})
    raw["validation"].update(min_score=0.6, min_improvement=0.01)
    return raw


def test_specs_without_governance_sections_keep_their_defaults():
    spec = spec_from_dict(valid_raw())
    assert spec.checklist.items == ("data_fresh", "schema", "drift", "harness")
    assert spec.checklist.max_data_age_s is None and spec.checklist.psi_max == 0.25
    assert spec.cost.price_per_cpu_hour == 0 and spec.contacts == [] and spec.owner is None
    assert spec.validation.min_score is None and spec.validation.min_relative_improvement is None


@pytest.mark.parametrize("dotted, value, needle", [
    ("checklist.items", ["drift", "vibes"], "checklist.items.1: Input should be"),
    ("checklist.items", ["drift", "drift"], "checklist: items must not repeat"),
    ("checklist.psi_max", 0, "checklist.psi_max: Input should be greater than 0"),
    ("checklist.ks_pvalue_min", 1.5, "checklist.ks_pvalue_min: Input should be less than 1"),
    ("checklist.threshold", 3, "checklist.threshold: Extra inputs are not permitted"),
    ("cost.price_per_cpu_hour", -1, "cost.price_per_cpu_hour: Input should be greater than or equal to 0"),
    ("contacts", [{"name": "Ada"}], "contacts.0.role: Field required"),
    ("validation.min_relative_improvement", -0.1, "validation.min_relative_improvement: Input should be greater"),
])
def test_bad_governance_fields_give_one_spec_error(dotted, value, needle):
    raw = valid_raw()
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw, source="job.yaml")
    assert str(info.value).startswith("job.yaml: " + needle), str(info.value)
    assert "\n" not in str(info.value)


def _threshold(validation, **kw):
    return thresholds_for(ValidationSpec(holdout="h", **validation), **kw)


def test_gate_thresholds_follow_the_spec():
    assert _threshold({}, has_champion=False) == {}
    t = _threshold({}, has_champion=True)["holdout_r2"]  # default: at least as good as the champion
    assert t.threshold is None and t.min_absolute_change is None and t.min_relative_change == 0.0
    t = _threshold({"min_score": 0.7, "min_improvement": 0.02}, has_champion=True)["holdout_r2"]
    assert (t.threshold, t.min_absolute_change, t.min_relative_change) == (0.7, 0.02, None)
    t = _threshold({"metric": "neg_mse", "min_relative_improvement": 0.05}, has_champion=True)["holdout_neg_mse"]
    assert t.min_relative_change == 0.05 and t.greater_is_better
    t = _threshold({"min_score": 0.7, "min_improvement": 0.02}, has_champion=False)["holdout_r2"]
    assert (t.threshold, t.min_absolute_change) == (0.7, None)  # no champion: only the absolute bound


def test_runbook_renders_every_section_from_the_spec():
    text = render_runbook(spec_from_dict(governed_raw()))
    for heading in ("# Runbook: `unit-job`", "## Contacts", "## Steps", "## Pause criteria", "## Risk budget",
                    "## Rollback", "## Where to look"):
        assert heading in text
    assert "| Ada | on-call | #ml-oncall |" in text and "Owner: ml-platform" in text
    assert "younger than 86400 s" in text and "PSI <= 0.2" in text and "KS p-value >= 0.001" in text
    assert "serving p99 above the SLO of 40 ms" in text
    assert "at most 2 worker(s) x 1 CPU = 2 CPUs" in text and "0.08 EUR per hour" in text
    assert "and >= 0.6 absolute" in text and "+ 0.01" in text
    assert "headroom rollback unit-job" in text and "previous-champion" in text


def test_runbook_says_what_is_missing_when_nobody_is_named():
    text = render_runbook(spec_from_dict(valid_raw()))
    assert "None in the spec: add `contacts" in text and "**none set**" in text


def test_runbook_cli_prints_writes_and_fails_in_one_line(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(governed_raw()))
    assert main(["runbook", str(spec)]) == 0
    assert capsys.readouterr().out.startswith("# Runbook: `unit-job`")
    out = tmp_path / "runbook.md"
    assert main(["runbook", str(spec), "-o", str(out)]) == 0
    assert "## Rollback" in out.read_text()
    bad = governed_raw()
    bad["checklist"]["psi_max"] = "high"
    spec.write_text(yaml.safe_dump(bad))
    assert main(["runbook", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("headroom runbook: error: ") and "checklist.psi_max" in err and "\n" not in err
    assert main(["runbook", str(spec.with_name("missing.yaml"))]) == 2


def test_demo_spec_loads_and_names_its_contacts():
    spec = load_spec("jobs/demo.yaml", check_paths=False)
    assert spec.contacts and spec.cost.price_per_cpu_hour > 0
    text = render_runbook(spec)
    assert spec.contacts[0].name in text and "None in the spec" not in text  # the heading alone is always there


def test_latency_comparison_splits_by_workers_held():
    decisions = [{"p99_ms": v, "active": 0} for v in (10, 12, 14)] + [{"p99_ms": v, "active": 2} for v in (20, 60)] + \
                [{"p99_ms": None, "active": 1}]
    lat = latency_comparison(decisions, slo_p99_ms=50)
    assert lat["baseline"] == {"samples": 3, "median_ms": 12.0, "p95_ms": pytest.approx(13.8), "over_slo": 0}
    assert lat["training"]["samples"] == 2 and lat["training"]["over_slo"] == 1
    assert lat["training_over_baseline"] == pytest.approx(40 / 12)
    assert latency_comparison([])["training_over_baseline"] is None


def test_cost():
    assert compute_cost(7200, 0.05) == pytest.approx(0.1)


def _summary(**over) -> dict:
    s = {"job": "unit-job", "status": "completed", "mlflow_run_id": "abc", "warm_start": "champion:v2",
         "rows_total": 1000, "rows_consumed": 1000, "rows_consumed_this_run": 400, "pauses": 2, "resumes": 2,
         "checkpoints": 7, "worker_crashes": 0, "duration_s": 12.5,
         "reaction": {"count": 2, "median_s": 0.3, "p95_s": 0.5, "max_s": 0.52},
         "validation": {"metric": "r2", "candidate": 0.91, "champion": 0.88, "champion_version": 2, "passed": True,
                        "reasons": "", "thresholds": {"threshold": 0.6}},
         "registered_version": 3, "registered_alias": "challenger",
         "lineage": {"start": "champion:v2", "rollback_target": "models:/unit-job/2",
                     "slices": [{"slice": "slice-0003.parquet", "rows": 400, "rows_consumed_this_run": 400, "sha256": "ab" * 32}]},
         "checklist": {"passed": True, "items": [{"item": "drift", "passed": True, "detail": "ok", "numbers": {}}],
                       "drift": [{"slice": "slice-0003.parquet", "feature": "f0", "psi": 0.01, "ks_stat": 0.02,
                                  "ks_pvalue": 0.5, "within": True}]},
         "compute": {"cpu_s": 90.0, "worker_cpu_s": 80.0, "driver_cpu_s": 2.0, "office_cpu_s": 8.0, "price_per_cpu_hour": 0.04,
                     "cost": 0.001}}
    s.update(over)
    return s


def test_postmortem_markdown_carries_the_numbers():
    decisions = [{"p99_ms": 10, "active": 0}, {"p99_ms": 30, "active": 1}]
    text = render_postmortem(_summary(), latency=latency_comparison(decisions, 40), slo_p99_ms=40, currency="EUR",
                             plots={"timeline": "timeline.png"})
    assert "# Post-mortem: `unit-job`" in text and "version 3, alias challenger" in text
    assert "| slice-0003.parquet | 400 / 400 | `abababababababab` |" in text
    assert "rollback target `models:/unit-job/2`" in text
    assert "## Validation gate: passed" in text and "candidate 0.9100; champion v2: 0.8800" in text
    assert "Bounds (MLflow MetricThreshold): at least 0.6." in text
    assert "| baseline (job held no workers) | 1 | 10.0 |" in text and "| while training | 1 | 30.0 |" in text
    assert "Training / baseline median p99: 3.00x" in text and "median 0.300 s" in text and "Checkpoints written: 7" in text
    assert "90.0 CPU-seconds (workers 80.0, driver 2.0, office 8.0) at 0.04 EUR/CPU-hour = **0.001000 EUR**" in text
    assert "Per worker CPU-s: driver 0.03, office 0.10" in text
    assert "![timeline](timeline.png)" in text


def test_postmortem_of_a_failed_checklist_shows_the_failed_item():
    failed = {"passed": False, "items": [{"item": "drift", "passed": False, "detail": "1 pair drifted: PSI 1.2", "numbers": {}}],
              "drift": [{"slice": "slice-9.parquet", "feature": "f3", "psi": 1.2, "ks_stat": 0.4, "ks_pvalue": 1e-30,
                         "within": False}]}
    text = render_postmortem(_summary(status="checklist_failed", checklist=failed, validation={"skipped": "checklist failed"},
                                      registered_version=None), latency=latency_comparison([]), slo_p99_ms=40,
                             currency="USD", plots={})
    assert "**failed** — nothing trained" in text and "| drift | **FAIL** | 1 pair drifted: PSI 1.2 |" in text
    assert "| slice-9.parquet | f3 | 1.200 | 0.400 |" in text and "checklist failed." in text
    assert "| registered | nothing |" in text


def test_write_postmortem_writes_the_report_and_png_plots(tmp_path):
    decisions = [{"t": 100.0 + i, "p99_ms": 10.0 + i, "active": i % 2, "level": "RUN" if i % 2 else "PAUSE"} for i in range(10)]
    progress = [{"t": 100.0 + i, "rows_consumed": 100 * i, "rows_per_s": 100.0} for i in range(10)]
    files = write_postmortem(tmp_path / "pm", _summary(), decisions, progress, slo_p99_ms=40, psi_max=0.25, currency="USD")
    names = sorted(f.name for f in files)
    assert names == ["drift.png", "latency.png", "postmortem.md", "timeline.png", "validation.png"]
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    assert "![drift](drift.png)" in (tmp_path / "pm" / "postmortem.md").read_text()


def test_postmortem_compares_the_planned_window_with_the_time_used():
    window = {"planned_start_s": 1_800_000_000.0, "planned_end_s": 1_800_007_200.0, "started_s": 1_800_000_060.0,
              "ended_s": 1_800_001_860.0, "used_fraction": 0.25}
    text = render_postmortem(_summary(window=window), latency=latency_comparison([]), slo_p99_ms=40, currency="USD", plots={})
    assert "## Planned window against time used" in text
    assert "Planned 2027-01-15 08:00:00 .. 2027-01-15 10:00:00 UTC (2.00 h)" in text and "25 % of the window." in text
    assert "Planned window" not in render_postmortem(_summary(), latency=latency_comparison([]), slo_p99_ms=40,
                                                     currency="USD", plots={})
