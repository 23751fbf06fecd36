"""``headroom plan`` in-process through ``runtime.cli.main.main``, the jobs file, and the plan's outputs."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from runtime.cli.main import main
from runtime.errors import SpecError
from runtime.windows.plan_report import ics_text, plan_records, render_table
from runtime.windows.history import read_history_csv
from runtime.windows.plan import load_plan_spec, make_plan
from runtime.windows.placement import Plan, Reason, Unplaced, Window

ROOT = Path(__file__).resolve().parents[2]
NASA = ROOT / "data" / "nasa-http-1995-07.csv"
PORTFOLIO = ROOT / "examples" / "portfolio.yaml"
START = "1995-07-22T00:00:00-04:00"

ONE_JOB = """\
timezone: America/New_York
pool_workers: 2
jobs:
  - name: nightly
    duration_minutes: 120
    cadence_days: 1
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def plan_args(history: Path | str, jobs: Path | str, *extra: str) -> list[str]:
    return ["plan", "--history", str(history), "--jobs", str(jobs), "--start", START, "--horizon-days", "7", *extra]


# --- malformed history: one line, names the line, exit 2 ----------------------------------------

@pytest.mark.parametrize("name, text, line, fragment", [
    ("bad timestamp", "timestamp,requests\n1995-07-01T00:00:00-04:00,1\n1995-07-01T25:00:00-04:00,2\n", 3,
     "bad timestamp"),
    ("non-numeric count", "timestamp,requests\n1995-07-01T00:00:00-04:00,1\n1995-07-01T00:01:00-04:00,12a\n", 3,
     "non-numeric request count"),
    ("empty file", "", 1, "history file is empty"),
])
def test_malformed_csv_is_one_clear_line(tmp_path, capsys, name, text, line, fragment):
    history = write(tmp_path, "bad.csv", text)
    jobs = write(tmp_path, "jobs.yaml", ONE_JOB)
    code = main(plan_args(history, jobs, "--out", str(tmp_path / "plan.json")))
    err = capsys.readouterr().err
    assert code == 2, name
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("headroom plan: error: ")
    assert f"{history}:{line}:" in lines[0] and fragment in lines[0] and "fix:" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "plan.json").exists()


def test_missing_history_file(tmp_path, capsys):
    code = main(plan_args(tmp_path / "nope.csv", write(tmp_path, "jobs.yaml", ONE_JOB)))
    assert code == 2 and "history file not found" in capsys.readouterr().err


# --- the whole thing on the NASA trace ----------------------------------------------------------

def test_plan_writes_json_ics_png_and_is_deterministic(tmp_path, capsys):
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        code = main(plan_args(NASA, PORTFOLIO, "--out", str(out / "plan.json"), "--ics", str(out / "plan.ics"),
                              "--plot", str(out / "plan.png")))
        stdout = capsys.readouterr().out
        assert code == 0
        assert "ranker" in stdout and "search-index" in stdout and "optimal" in stdout
        outputs.append(out)
    a, b = outputs
    for name in ("plan.json", "plan.ics"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    records = json.loads((a / "plan.json").read_text())
    assert isinstance(records, list) and len(records) == 22
    spec = load_plan_spec(PORTFOLIO)
    jobs = {j.name: j for j in spec.jobs}
    blackout = spec.constraints.blackouts[0]
    for r in records:
        assert {"job", "start", "end", "predicted_load_rps"} <= set(r)
        start, end = datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"])
        assert start.utcoffset().total_seconds() == -4 * 3600
        assert (end - start).total_seconds() == jobs[r["job"]].total_s
        assert r["predicted_peak_rps"] <= spec.constraints.max_load_rps
        assert end.timestamp() <= blackout.start_epoch_s or start.timestamp() >= blackout.end_epoch_s
    ics = (a / "plan.ics").read_bytes().decode("utf-8")
    assert ics.startswith("BEGIN:VCALENDAR\r\n") and ics.count("BEGIN:VEVENT") == 22


def test_horizon_and_tz_flags(tmp_path, capsys):
    jobs = write(tmp_path, "jobs.yaml", ONE_JOB.replace("America/New_York", "UTC"))
    out = tmp_path / "plan.json"
    code = main(plan_args(NASA, jobs, "--tz", "America/New_York", "--out", str(out)) + ["--horizon-days", "2"])
    assert code == 0
    records = json.loads(out.read_text())
    assert len(records) == 2 and records[0]["start"].endswith("-04:00")
    assert "America/New_York" in capsys.readouterr().out


def test_unplaceable_runs_exit_1_but_the_plan_is_written(tmp_path, capsys):
    jobs = write(tmp_path, "jobs.yaml", ONE_JOB + "max_load_rps: 0.01\n")
    out = tmp_path / "plan.json"
    code = main(plan_args(NASA, jobs, "--out", str(out)))
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(out.read_text()) == []
    assert "over_threshold" in captured.out and "could not be placed" in captured.err


# --- bad jobs files and flags -------------------------------------------------------------------

@pytest.mark.parametrize("name, text, fragments", [
    ("no pool", "jobs:\n  - name: a\n    duration_minutes: 5\n", ["pool_workers: Field required"]),
    ("zero workers", ONE_JOB + "    workers: 0\n", ["jobs[0].workers", "greater than or equal to 1"]),
    ("unquoted refresh", ONE_JOB + "    data_refresh: 12:30\n", ["jobs[0].data_refresh", "quoted"]),
    ("unknown field", ONE_JOB + "    gpus: 2\n", ["jobs[0].gpus", "unknown field 'gpus'"]),
    ("no duration", "pool_workers: 1\njobs:\n  - name: a\n", ["duration_minutes, past_durations_minutes"]),
    ("duplicate names", ONE_JOB + "  - name: nightly\n    duration_minutes: 5\n", ["unique"]),
    ("bad zone", ONE_JOB.replace("America/New_York", "Mars/Olympus"), ["unknown time zone", "timezone"]),
    ("prices too short", ONE_JOB + "prices:\n  hourly: [1, 2]\n", ["prices.hourly", "24 prices"]),
    ("blackout backwards", ONE_JOB + "blackouts:\n  - start: 1995-07-23T05:00:00\n    end: 1995-07-23T01:00:00\n",
     ["blackouts[0]", "end is not after start"]),
    ("not yaml", "pool_workers: [1\n", ["jobs.yaml:", "not valid YAML"]),
    ("not a mapping", "- 1\n- 2\n", ["expected a mapping"]),
])
def test_bad_jobs_file_names_file_field_and_fix(tmp_path, capsys, name, text, fragments):
    jobs = write(tmp_path, "jobs.yaml", text)
    code = main(plan_args(NASA, jobs))
    err = capsys.readouterr().err.strip()
    assert code == 2, name
    assert len(err.splitlines()) == 1 and str(jobs) in err and "fix:" in err, err
    for fragment in fragments:
        assert fragment in err, (name, err)


@pytest.mark.parametrize("flags, fragment", [
    (["--start", "next tuesday"], "--start: bad timestamp"),
    (["--horizon-days", "0"], "--horizon-days must be > 0"),
    (["--tz", "Nowhere/Land"], "unknown time zone"),
])
def test_bad_flags(tmp_path, capsys, flags, fragment):
    code = main(plan_args(NASA, write(tmp_path, "jobs.yaml", ONE_JOB)) + flags)
    assert code == 2 and fragment in capsys.readouterr().err


def test_unreachable_prometheus_names_the_url(tmp_path, capsys):
    jobs = write(tmp_path, "jobs.yaml", ONE_JOB)
    code = main(["plan", "--prometheus-url", "http://127.0.0.1:9", "--timeout-s", "2", "--jobs", str(jobs),
                 "--start", START])
    err = capsys.readouterr().err
    assert code == 1 and "http://127.0.0.1:9/api/v1/query_range" in err and len(err.strip().splitlines()) == 1


# --- the jobs file as a library -----------------------------------------------------------------

def test_example_portfolio_loads():
    spec = load_plan_spec(PORTFOLIO)
    assert spec.tz_name == "America/New_York" and spec.constraints.pool_workers == 6
    by_name = {j.name: j for j in spec.jobs}
    assert by_name["ranker"].data_refresh_s_of_day == 3600.0
    # 80th percentile of [160, 170, 175, 185, 240] minutes: 196 min.
    assert by_name["embeddings"].duration_s == pytest.approx(196 * 60)
    b = spec.constraints.blackouts[0]
    # Naive times in the file are read on the New York clock (EDT in July).
    assert b.start_epoch_s == datetime.fromisoformat("1995-07-25T04:30:00-04:00").timestamp()
    assert b.end_epoch_s - b.start_epoch_s == 2 * 3600


def test_durations_from_mlflow_runs_are_estimated_conservatively(tmp_path):
    text = ONE_JOB.replace("    duration_minutes: 120\n", "    mlflow_experiment: headroom\n")
    asked = []

    def lookup(job):
        asked.append((job.name, job.mlflow_experiment))
        return [3000.0, 3100.0, 3300.0, 2900.0, 9000.0]

    spec = load_plan_spec(write(tmp_path, "jobs.yaml", text), durations_lookup=lookup)
    assert asked == [("nightly", "headroom")]
    assert spec.jobs[0].duration_s == pytest.approx(4440.0)
    with pytest.raises(SpecError, match="no finished MLflow runs"):
        load_plan_spec(write(tmp_path, "jobs2.yaml", text), durations_lookup=lambda job: [])


def test_make_plan_uses_only_history_before_the_start(tmp_path):
    history = read_history_csv(NASA)
    spec = load_plan_spec(write(tmp_path, "jobs.yaml", ONE_JOB))
    start = datetime.fromisoformat(START).timestamp()
    result = make_plan(history, spec, start, 7)
    assert result.profile.source == str(NASA) and result.plan.proven_optimal
    # The profile of Jul 1-21 alone gives the same plan: nothing after the start leaked in.
    again = make_plan(history.between(-float("inf"), start), spec, start, 7)
    assert again.plan == result.plan


# --- report formats -----------------------------------------------------------------------------

def small_plan() -> Plan:
    w = Window("ranker, v2; \"eu\"", 0, 806_392_800.0, 806_403_600.0, 2, 0.4, 0.5, 0.6, 1.25)
    u = Unplaced("other", 1, 806_392_800.0, float("inf"), Reason.POOL_FULL, "pool full")
    return Plan("America/New_York", 806_385_600.0, 806_990_400.0, (w,), (u,), 1.25, True, "relaxation")


def test_ics_is_rfc5545_shaped():
    text = ics_text(small_plan())
    lines = text.split("\r\n")
    assert lines[-1] == "" and all(len(line.encode()) <= 75 for line in lines)
    assert "DTSTART:19950722T060000Z" in lines and "DTEND:19950722T090000Z" in lines
    assert "SUMMARY:Retraining: ranker\\, v2\\; \"eu\"" in lines
    assert "DTSTAMP:19950722T040000Z" in lines  # the horizon start: no wall clock, same bytes every run


def test_records_and_table():
    plan = small_plan()
    (record,) = plan_records(plan)
    assert record["start"] == "1995-07-22T02:00:00-04:00" and record["end"] == "1995-07-22T05:00:00-04:00"
    table = render_table(plan)
    assert "Sat 1995-07-22 02:00" in table and "UNPLACED other run 1" in table and "pool_full" in table
