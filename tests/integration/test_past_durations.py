"""A job's past durations for the planner, read from a real MLflow store: runs that ended with their
window (tag ``headroom.status=window_ended``) add up with the run that finished the job; failed,
unfinished and other jobs' runs do not count; `headroom plan` plans with the estimate."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from runtime.windows.plan import load_plan_spec, past_run_durations_s
from runtime.windows.placement import estimate_duration_s

pytestmark = pytest.mark.integration

MIN = 60_000  # ms
T0 = 1_793_000_000_000  # 2026-10-26, ms


def _run(client, exp: str, name: str, start_min: float, minutes: float, status: str = "FINISHED", tag: str | None = None):
    run = client.create_run(exp, start_time=T0 + int(start_min * MIN), run_name=name,
                            tags={"headroom.status": tag} if tag else None)
    client.set_terminated(run.info.run_id, status=status, end_time=T0 + int((start_min + minutes) * MIN))


def test_durations_add_up_across_windows_and_feed_the_plan(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ranker-exp")
    _run(client, exp, "ranker-20261101-020000", 0, 40, tag="window_ended")  # day 1: two windows ...
    _run(client, exp, "ranker-20261101-230000", 1260, 35)  # ... 40 + 35 = 75 min of training
    _run(client, exp, "ranker-20261102-020000", 1440, 70)  # day 2: one window, 70 min
    _run(client, exp, "ranker-20261103-020000", 2880, 5, status="FAILED")  # failed: not a duration
    _run(client, exp, "other-20261103-020000", 2880, 500)  # another job
    _run(client, exp, "ranker-20261104-020000", 4320, 30, tag="window_ended")  # still unfinished: left out
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"timezone: UTC\npool_workers: 2\njobs:\n  - name: ranker\n    mlflow_experiment: ranker-exp\n"
                    f"    mlflow_tracking_uri: {uri}\n    cadence_days: 1\n")

    spec = load_plan_spec(jobs)
    durations = past_run_durations_s(_model(jobs))
    assert sorted(durations) == [70 * 60.0, 75 * 60.0]
    assert spec.jobs[0].duration_s == pytest.approx(estimate_duration_s([75 * 60.0, 70 * 60.0]))


def _model(jobs_file):
    import yaml

    from runtime.windows.plan import JobModel

    return JobModel(**yaml.safe_load(jobs_file.read_text())["jobs"][0])
