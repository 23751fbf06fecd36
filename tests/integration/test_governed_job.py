"""A governed job on a real Ray cluster beside a real HTTP server whose latency the test moves.

Figures (detection and release times) are printed, not asserted: this machine is shared and noisy.
What is asserted is what must hold on any machine: the job pauses after latency rises and before it
falls, resumes after it falls, consumes every row exactly once, and registers a model version.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
import traceback

import pytest

from runtime.training.datagen import write_regression_slices
from runtime.driver.job import run_job
from runtime.spec.job import spec_from_dict
from tests.support import LatencyServer, LoadThread

pytestmark = pytest.mark.integration


def make_spec(tmp_path, name: str, metrics_url: str, *, rows_per_s: float, slices: int = 6, rows: int = 2000,
              every_steps: int = 5, slo_p99_ms: float = 50) -> object:
    data, holdout = write_regression_slices(tmp_path / "data", slices=slices, rows_per_slice=rows)
    return spec_from_dict({
        "name": name,
        "model": {"estimator": "sklearn.linear_model.SGDRegressor", "params": {"random_state": 0}},
        "data": {"path": str(data), "target": "y", "id_column": "row_id", "batch_rows": 100},
        "validation": {"holdout": str(holdout), "metric": "r2"},
        "serving": {"url": metrics_url, "slo_p99_ms": slo_p99_ms, "stale_after_s": 3, "in_flight": "serving_requests_in_flight"},
        "budget": {"max_rows_per_s": rows_per_s, "cooldown_s": 1.0, "holddown_s": 0.5, "poll_interval_s": 0.25},
        "checkpoint": {"storage": str(tmp_path / "ckpt"), "every_steps": every_steps},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "it"},
    })


class JobStopped(Exception):
    """Raised from a job's status callback to end a job that its test left running."""


class JobThread(threading.Thread):
    """Runs ``run_job`` in the background and keeps every status snapshot it reported."""

    def __init__(self, spec, artifacts_dir: str | None = None):
        super().__init__(daemon=True)
        self.spec, self.snaps, self.summary, self.error = spec, [], None, None
        self.artifacts_dir = artifacts_dir
        self._stopping = threading.Event()

    def run(self):
        try:
            self.summary = run_job(self.spec, on_status=self._status, artifacts_dir=self.artifacts_dir)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _status(self, snap: dict) -> None:
        if self._stopping.is_set():  # run_job releases the lease and unregisters on the way out
            raise JobStopped(f"{self.spec.name}: stopped by the test's teardown")
        self.snaps.append(dict(snap, seen=time.time()))

    def stop_job(self, timeout_s: float = 60.0) -> None:
        """End a job its test left running (it failed before ``finish``), so that its lease does not
        starve the next test on this worker's pool (tests/conftest.py calls it at every teardown)."""
        self._stopping.set()
        self.join(timeout_s)

    def wait_for(self, check, timeout_s: float = 60.0) -> dict:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.error:
                raise self.error
            hit = next((s for s in reversed(self.snaps) if check(s)), None)
            if hit:
                return hit
            time.sleep(0.05)
        raise AssertionError(f"condition not reached in {timeout_s}s; last snapshot: {self.snaps[-1:]}")

    def held_still(self, since: dict, hold_s: float) -> dict:
        """Assert that no row was consumed and no worker ran from the snapshot ``since`` until a newer one
        at least ``hold_s`` later (required, so a driver that stopped reporting cannot pass): every
        snapshot in between is paused, with no active worker and the same rows consumed."""
        last = self.wait_for(lambda s: s["seen"] >= since["seen"] + hold_s, timeout_s=hold_s + 30)
        between = [s for s in self.snaps if since["seen"] <= s["seen"] <= last["seen"]]
        assert len(between) >= 2, between
        moved = [(round(s["seen"] - since["seen"], 2), s["rows_consumed"], s["active"], s["level"]) for s in between
                 if s["rows_consumed"] != since["rows_consumed"] or s["active"] or s["level"] != "PAUSE"]
        assert not moved, f"trained while paused (t after pause, rows, active, level): {moved[:5]}"
        return last

    def finish(self, timeout_s: float = 180.0) -> dict:
        self.join(timeout_s)
        if self.error:
            raise self.error
        assert self.summary is not None, f"job did not finish in {timeout_s:.0f}s\n{self.where()}"
        return self.summary

    def where(self) -> str:
        """Where a job that is late stands: its last snapshot and what the job's thread is waiting on."""
        frame = sys._current_frames().get(self.ident)
        stack = "".join(traceback.format_stack(frame)[-12:]) if frame else "(thread ended)"
        last = self.snaps[-1] if self.snaps else None
        age = f"{time.time() - last['seen']:.1f}s ago" if last else "never"
        return f"last snapshot ({age}): {last}\njob thread:\n{stack}"


def assert_exactly_once(summary: dict) -> None:
    assert summary["status"] == "completed"
    assert summary["rows_consumed"] == summary["rows_total"]
    assert summary["rows_duplicated"] == 0
    assert summary["row_ids_verified"] is True  # the ids read add up to exactly the ids in the data


def _env_without_mlflow_telemetry(env) -> dict:
    return {k: v for k, v in env.items() if not k.startswith("_MLFLOW_TELEMETRY")}


def test_pauses_on_latency_rise_resumes_after_and_consumes_every_row_once(ray_session, tmp_path, capsys):
    env_before = dict(os.environ)
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=60):
        job = JobThread(make_spec(tmp_path, "it-pause-resume", server.metrics_url, rows_per_s=800))
        job.start()
        job.wait_for(lambda s: s["rows_consumed"] > 0 and s["active"] > 0)
        raised_at = time.time()
        server.set_delay(0.15)
        paused = job.wait_for(lambda s: s["seen"] > raised_at and s["level"] == "PAUSE" and s["active"] == 0)
        rows_at_pause = paused["rows_consumed"]
        job.held_still(paused, 2.0)  # the latency is still high: nothing trains
        lowered_at = time.time()
        server.set_delay(0.002)
        job.wait_for(lambda s: s["seen"] > lowered_at and s["level"] != "PAUSE" and s["rows_consumed"] > rows_at_pause)
        summary = job.finish()
    # MLflow's URI and HTTP limits held for the job only: the caller's environment is as it was (but for
    # the session id MLflow's own telemetry client keeps there, which MLflow sets and unsets itself)
    assert _env_without_mlflow_telemetry(os.environ) == _env_without_mlflow_telemetry(env_before)

    decisions = logged_decisions(summary, tmp_path)
    first_pause = next(d for d in decisions if d["t"] >= raised_at and d["level"] == "PAUSE")
    assert first_pause["reason"] == "SLO_VIOLATED"
    assert summary["pauses"] >= 1 and summary["resumes"] >= 1
    assert summary["reaction"]["count"] >= 1
    # each pause's workers ended their last step (the worker says so before it serialises) by its release
    stops, reactions = summary["stopped"]["all_s"], summary["reaction"]["all_s"]
    assert len(stops) == len(reactions) and all(0 <= s <= r for s, r in zip(stops, reactions)), (stops, reactions)
    reads = summary["read"]["all_s"]  # and before the decision, the telemetry's read, one per pause
    assert len(reads) == len(reactions) and all(r >= 0 for r in reads), reads
    assert_exactly_once(summary)
    assert summary["registered_version"] >= 1
    # the driver's own work ran at the workers' priority: before connecting (its own thread) and after;
    # the office (MLflow, checklist, gate, post-mortem) in a process of its own, isolated like a worker
    assert {k: v["sched"] for k, v in summary["driver_isolation"].items()} == {
        "before_lease": "idle", "training_and_after": "idle", "office": "idle"}
    office = summary["driver_isolation"]["office"]  # and the thread its methods run on, measured there
    assert office["sched_now"] == "idle" and office["nice_now"] >= 10, office
    c = summary["compute"]
    assert c["office_cpu_s"] > 0 and c["cpu_s"] == pytest.approx(c["worker_cpu_s"] + c["driver_cpu_s"] + c["office_cpu_s"], abs=0.01)
    detect_s = first_pause["t"] - raised_at
    with capsys.disabled():
        print(f"\n[figures] latency raised -> the reading that showed it: {detect_s:.3f} s; its read -> PAUSE decided: "
              f"{reads[0]:.3f} s; PAUSE -> lease released: "
              f"median {summary['reaction']['median_s']:.3f} s, max {summary['reaction']['max_s']:.3f} s "
              f"(workers' last step ended: median {summary['stopped']['median_s']:.3f} s); "
              f"raised -> released: {detect_s + reads[0] + summary['reaction']['all_s'][0]:.3f} s")


def logged_decisions(summary: dict, tmp_path) -> list[dict]:
    """The governor's decision log, read back from the job's MLflow run (where users find it)."""
    import json

    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=summary["mlflow_run_id"], artifact_path="governor/decisions.json",
                                                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", dst_path=str(tmp_path / "dl"))
    return json.loads(open(local).read())


def test_sigkill_of_a_worker_mid_run_loses_and_repeats_no_row(ray_session, tmp_path):
    from ray.util.state import list_actors

    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=40):
        job = JobThread(make_spec(tmp_path, "it-sigkill", server.metrics_url, rows_per_s=1000, every_steps=8))
        job.start()
        job.wait_for(lambda s: s["rows_consumed"] > 1500)
        alive = list_actors(address=ray_session.dashboard_url,
                            filters=[("class_name", "=", "TrainerWorker"), ("state", "=", "ALIVE")])
        assert alive, "no live trainer worker to kill"
        os.kill(alive[0].pid, signal.SIGKILL)
        summary = job.finish()
    assert summary["worker_crashes"] >= 1
    assert_exactly_once(summary)


def test_rounds_by_time_end_on_the_clock_and_lose_no_row(ray_session, tmp_path):
    """``checkpoint.round_s``: every_steps alone (10,000 rows) would make the whole data one round; the
    worker stops each round at 0.5 s instead, and the rows it did not reach go back to pending."""
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        spec = make_spec(tmp_path, "it-round-clock", server.metrics_url, rows_per_s=1000, slices=2, rows=1500,
                         every_steps=100)
        spec = spec.model_copy(update={"checkpoint": spec.checkpoint.model_copy(update={"round_s": 0.5})})
        job = JobThread(spec, artifacts_dir=str(tmp_path / "artifacts"))
        job.start()
        summary = job.finish()
    assert summary["checkpoints"] >= 3, summary["checkpoints"]  # ~3 s of training at 1,000 rows/s: several rounds
    assert_exactly_once(summary)
    # where the job's time went, every phase the post-mortem's included, in the artifacts' summary too
    written = json.loads((tmp_path / "artifacts" / "summary.json").read_text())
    assert written["wall_by_phase_s"] == summary["wall_by_phase_s"]
    assert {"training rounds", "post-mortem and artifacts (in the office)"} <= set(written["wall_by_phase_s"])
    print(f"\n[figures] round-clock job, seconds per phase: {summary['wall_by_phase_s']}")


def test_headroom_pause_and_resume_by_hand(ray_session, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    headroom = str(Path(sys.executable).with_name("headroom"))
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        job = JobThread(make_spec(tmp_path, "it-manual", server.metrics_url, rows_per_s=500))
        job.start()
        job.wait_for(lambda s: s["rows_consumed"] > 0 and s["active"] > 0)
        out = subprocess.run([headroom, "pause", "it-manual", "--address", ray_session.address],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        paused_at = time.time()
        paused = job.wait_for(lambda s: s["seen"] > paused_at and s["reason"] == "MANUAL_PAUSE" and s["active"] == 0)
        job.held_still(paused, 1.5)  # nothing trains while paused by hand
        out = subprocess.run([headroom, "resume", "it-manual", "--address", ray_session.address],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        summary = job.finish()
        unknown = subprocess.run([headroom, "pause", "no-such-job", "--address", ray_session.address],
                                 capture_output=True, text=True, timeout=60)
    assert_exactly_once(summary)
    assert unknown.returncode == 1 and "no job named 'no-such-job'" in unknown.stderr


def test_an_office_killed_mid_job_is_replaced_and_the_run_completes(ray_session, tmp_path):
    """SIGKILL the job's office (the actor that holds its MLflow run) while the job trains: a new office
    takes the same run over, the job completes exactly once, and the run gets its post-mortem."""
    import ray
    from mlflow import MlflowClient

    from runtime.driver.office import OFFICE_PREFIX

    def offices() -> list[str]:
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"{OFFICE_PREFIX}it-office-lost-")]

    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        job = JobThread(make_spec(tmp_path, "it-office-lost", server.metrics_url, rows_per_s=1500))
        job.start()
        job.wait_for(lambda s: s["rows_consumed"] > 0 and s["active"] > 0)
        (office,) = offices()
        os.kill(ray.get(ray.get_actor(office, namespace="headroom").pid.remote()), signal.SIGKILL)
        killed_at = time.time()
        job.wait_for(lambda s: s["seen"] > killed_at + 2.0)  # rounds go on, and their metrics go to a new office
        summary = job.finish()
    assert_exactly_once(summary)
    assert summary["office_replacements"] == 1
    assert summary["registered_version"] >= 1 and summary["checklist"]["passed"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "rows_consumed" in run.data.metrics  # logged by one office or the other, on the one run
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "postmortem")}
    assert "postmortem/postmortem.md" in artifacts
    assert not offices()  # the job's end closes its office


def _interrupted_child(spec_dict: dict, address: str) -> None:
    """Child process: the job, paused by hand the moment its last row is in (its office then holds
    validation); the parent interrupts it there."""
    import ray as child_ray

    from runtime.control.governor import get_or_create_governor
    from runtime.spec.job import JobSpec

    faulthandler.register(signal.SIGUSR1)  # the parent asks for this process's stacks if it does not exit
    # As a driver in a terminal has it: a test run started in the background (CI's, a shell's `&`) hands
    # its children SIGINT ignored, and Python then never raises KeyboardInterrupt (CI: the driver still
    # waiting on its held office 150 s after the SIGINT, its stack showed)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = JobSpec.model_validate(spec_dict)
    paused = []

    def on_status(snap: dict) -> None:
        if snap["rows_consumed"] >= snap["rows_total"] and not paused:
            child_ray.get(get_or_create_governor().set_manual_pause.remote(spec.name, True))
            paused.append(True)

    run_job(spec, address=address, on_status=on_status, isolate_driver=False)


def test_ctrl_c_while_the_office_holds_validation_ends_the_run_killed_with_nothing_registered(ray_session, tmp_path):
    """Ctrl-C reaches the driver while its office waits, held by a PAUSE, to validate: the driver does
    not wait behind it. The run is marked KILLED, the office is gone, and no model is registered."""
    import multiprocessing

    import ray
    from mlflow import MlflowClient

    from runtime.control.governor import get_or_create_governor
    from runtime.driver.office import OFFICE_PREFIX

    name = "it-office-ctrl-c"
    gov = get_or_create_governor()

    def phase() -> str | None:
        status = ray.get(gov.status.remote(), timeout=10)
        return next((j.get("phase") for j in status["jobs"] if j["job"] == name), None)

    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=30):
        spec = make_spec(tmp_path, name, server.metrics_url, rows_per_s=3000, slices=2)
        child = multiprocessing.get_context("spawn").Process(
            target=_interrupted_child, args=(spec.model_dump(), ray_session.address), daemon=True)
        child.start()
        deadline = time.time() + 180
        while phase() != "finishing":
            assert child.is_alive() and time.time() < deadline, "the job never reached its finishing phase"
            time.sleep(0.2)
        time.sleep(2.0)  # the office is now held before validation
        interrupted_at = time.time()
        os.kill(child.pid, signal.SIGINT)
        child.join(150)  # it exits in ~4 s here; CI's loaded host once took over 60 (its stacks below if ever again)
        exited_s = time.time() - interrupted_at
        if child.exitcode is None:  # still there: its stacks (on this test's captured stderr) say where
            os.kill(child.pid, signal.SIGUSR1)
            time.sleep(2.0)
    ray.get(gov.set_manual_pause.remote(name, False))
    assert child.exitcode is not None and child.exitcode != 0, "the interrupted job did not exit"
    client = MlflowClient(spec.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("it").experiment_id],
                                filter_string=f"attributes.run_name LIKE '{name}-%'")
    assert run.info.status == "KILLED"
    assert not client.search_model_versions(f"name='{name}'")
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(f"{OFFICE_PREFIX}{name}-")]
    print(f"\n[figures] Ctrl-C -> driver exited in {exited_s:.1f} s (the office was held before validation)")
