"""The job's office: everything a job does besides training, in an actor on the training pool.

The driver (:mod:`runtime.driver.job`) keeps the job's truth: rounds, merges, checkpoints. The rest of
the job's work runs in a :class:`JobOffice`, a Ray actor on a training-pool node (the driver's own
node when that node is in the pool). The office isolates its process like a worker before it
imports anything heavy: ``budget.worker_sched``, ``budget.worker_nice``, ``budget.pin_cpus`` and
thread limits. It does:

- the MLflow run: its start, params and tags, the round metrics (the driver does not wait for them), its end;
- the champion: loaded once, for a warm start and for the checklist;
- the pre-work checklist (:class:`runtime.governance.job.JobGovernance`), before the job asks for a lease;
- the gate (holdout scoring, ``mlflow.models.evaluate``) and registration;
- lineage, the post-mortem, its plots and the job's artifacts. The files come back as bytes, and the
  driver writes them into its artifacts folder.

Once the job has a lease, each step after training waits while the governor says PAUSE (:class:`Hold`).
Under ``ray job submit`` the driver runs on the head node, often beside serving's proxy. The
MLflow, evaluation and plotting work then runs on the nodes kept for training, not on the head.
The office's CPU is the job's too: the summary and the post-mortem print driver, office and worker
CPU-s side by side.

If the office's node is lost, :class:`Office` starts another on a remaining pool node, and that one
takes over the same MLflow run. Metrics still buffered in the lost office are lost with it, and a
warning says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# Nothing heavier than Ray at module level: a new office process imports this module to build its
# actor before ``__init__`` has lowered its priority (the rest is imported where it is used).

log = logging.getLogger("headroom.office")
OFFICE_PREFIX = "headroom-office-"  # + the job's name + a suffix of its own
GOVERNOR_DOWN = (RayActorError, ActorUnavailableError, GetTimeoutError)


class PhaseCPU:
    """A process's CPU-seconds per phase of the job, and the wall-clock seconds each took; a phase that
    comes back adds to its totals."""

    def __init__(self, started: float | None = None) -> None:
        self.started = self._last = time.process_time() if started is None else started
        self._last_wall = time.monotonic()
        self.marks: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        now, now_wall = time.process_time(), time.monotonic()
        self.marks[phase] = round(self.marks.get(phase, 0.0) + now - self._last, 3)
        self.wall[phase] = round(self.wall.get(phase, 0.0) + now_wall - self._last_wall, 3)
        self._last, self._last_wall = now, now_wall

    def skip(self) -> None:
        """Leave the CPU and the time since the last mark out of every phase (counted elsewhere)."""
        self._last, self._last_wall = time.process_time(), time.monotonic()


class Hold:
    """Wait while the governor says PAUSE: the job's work after training (validation, registration,
    the post-mortem) obeys the directive like the workers' steps. Governor unreachable: wait too."""

    def __init__(self, gov, job: str, poll_s: float = 0.25):
        self.gov, self.job, self.poll_s = gov, job, poll_s
        self.held_s = 0.0
        self.held: list[dict] = []  # one entry per phase that had to wait

    def __call__(self, phase: str) -> float:
        started = last_log = time.time()
        why = None
        while True:
            try:
                snap = ray.get(self.gov.directive.remote(self.job), timeout=10)
            except GOVERNOR_DOWN as exc:
                snap, why = {"level": "PAUSE", "reason": f"governor unreachable ({type(exc).__name__})"}, None
            if snap is None or snap["level"] != "PAUSE":
                break
            why = snap["reason"]
            if time.time() - last_log >= 10:
                log.info("holding %s: the governor says PAUSE (%s) for %.0f s", phase, why, time.time() - started)
                last_log = time.time()
            time.sleep(self.poll_s)
        waited = time.time() - started
        if why is not None:
            self.held_s += waited
            self.held.append({"phase": phase, "waited_s": round(waited, 3), "reason": why})
        return waited

    def record(self) -> dict:
        return {"seconds": round(self.held_s, 3), "phases": list(self.held)}


def write_artifacts(spec, decisions: list, progress: list, summary: dict, tracker, artifacts_dir: str | Path, *,
                    timeline: Path | None = None) -> None:
    """The summary, the decision log, the progress series and the timeline plot, into ``artifacts_dir``
    and onto the run. ``timeline``: the same plot, already drawn for the post-mortem (~0.45 CPU-s a plot)."""
    from runtime.plots import plot_timeline  # matplotlib: only an office that gets this far imports it
    from runtime.training.checkpoint import atomic_write_text

    out = Path(artifacts_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary.json": summary, "decisions.json": decisions, "progress.json": progress}
    for name, obj in files.items():
        atomic_write_text(out / name, json.dumps(obj, indent=1, default=str))
    if timeline is not None and timeline.exists():
        shutil.copyfile(timeline, out / "timeline.png")
    else:
        plot_timeline(decisions, progress, out / "timeline.png", slo_p99_ms=spec.serving.slo_p99_ms,
                      title=f"{spec.name}: governed retraining")
    for name in (*files, "timeline.png"):
        tracker.log_file(out / name, "governor" if name != "summary.json" else None)


def _thread_priority() -> dict:
    """The scheduling class and nice level of the calling thread as they are now (Linux keeps both per
    thread: what ``isolate`` set in ``__init__`` holds for the methods only if they run on its thread)."""
    if not hasattr(os, "sched_getscheduler"):
        return {}
    idle = getattr(os, "SCHED_IDLE", None)
    return {"sched_now": "idle" if os.sched_getscheduler(0) == idle else "normal",
            "nice_now": os.getpriority(os.PRIO_PROCESS, 0)}


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by its path relative to it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _TruthView:
    """What :class:`~runtime.governance.job.JobGovernance` reads of the driver's truth (no model state)."""

    def __init__(self, origin: str, ledger: list, counters: dict):
        from runtime.training.ingest import RangeSet

        self.origin, self.counters, self.state = origin, dict(counters), None
        self.ledger = RangeSet.from_list(ledger)


@ray.remote(num_cpus=0, max_restarts=0)
class JobOffice:
    """One job's MLflow run, checklist, gate, registration and post-mortem (see the module's text)."""

    def __init__(self, spec_dict: dict, gov):
        from runtime.training.isolation import isolate

        b = spec_dict.get("budget", {})
        self.isolation = isolate(0, int(b.get("worker_nice", 0)), float(b.get("cpus_per_worker", 1.0)),
                                 b.get("pin_cpus"), b.get("worker_sched", "normal"))
        from threadpoolctl import threadpool_limits

        from runtime.spec.job import JobSpec
        from runtime.tracking.tracker import mlflow_scope
        from runtime.training.ingest import Dataset

        threadpool_limits(max(1, int(float(b.get("cpus_per_worker", 1.0)))))
        self.spec = JobSpec.model_validate(spec_dict)
        mlflow_scope(self.spec.tracking.uri).__enter__()  # this process is the office's alone: for its life
        self.dataset = Dataset(self.spec.data.path, self.spec.data.format)
        self.hold = Hold(gov, self.spec.name)
        self.tracker = self.governance = None
        self._champion_loaded: tuple | None = None
        self.cpu = PhaseCPU(started=0.0)  # from the process's start: its start-up and imports are the job's too
        self.cpu.mark("start-up")

    # --- the run and the champion ---------------------------------------------------------------

    def champion_state(self) -> tuple[bytes, int] | None:
        """The champion's state bytes and version (a warm start), or ``None`` when there is none.
        A champion that cannot be loaded raises, as the job's own error."""
        from runtime.tracking.tracker import load_champion
        from runtime.training.trainers import state_from_model

        champ = load_champion(self.spec.tracking.uri, self.spec.name, self.spec.model.framework)
        self._champion_loaded = (champ, None)  # the checklist's schema and harness items use it too
        self.cpu.mark("champion")
        return None if champ is None else (state_from_model(self.spec.model, champ[0]), champ[1])

    def open(self, run_name: str, origin: str, ledger: list, counters: dict, checkpoint_dir: str,
             run_id: str | None = None, champion_version: int | None = None) -> dict:
        """Start the job's MLflow run (params and tags), or take over ``run_id`` (a replaced office; its
        ``champion_version`` is the rollback target the first office found, before any registration)."""
        from runtime.governance.job import JobGovernance
        from runtime.tracking.tracker import Tracker

        spec = self.spec
        if run_id is None:
            self.tracker = Tracker(spec.tracking.uri, spec.tracking.experiment, run_name)
            self.tracker.log_params(spec.model_dump())
            self.tracker.set_tags({"headroom.job": spec.name, "headroom.warm_start": origin})
        else:
            self.tracker = Tracker.resume(spec.tracking.uri, run_id)
        self.governance = JobGovernance(spec, self.dataset, _TruthView(origin, ledger, counters), self.tracker,
                                        checkpoint_dir=checkpoint_dir)
        if run_id is not None:
            self.governance.champion_version = champion_version
        if self._champion_loaded is not None:
            self.governance._champion_loaded = self._champion_loaded
        self.cpu.mark("MLflow run")
        return {"run_id": self.tracker.run_id, "isolation": dict(self.isolation, **_thread_priority()),
                "champion_version": self.governance.champion_version}

    # --- before the lease -----------------------------------------------------------------------

    def checklist(self) -> dict:
        """Run the checklist and record it on the run; its outcome (``passed``, ``items``, ...)."""
        outcome = self.governance.run_checklist()
        self.cpu.mark("checklist")
        return outcome.to_dict()

    def stop_before_training(self, started_s: float, driver_cpu: dict) -> dict:
        """The checklist failed: the summary and post-mortem of a job that took no lease; the run ends FAILED."""
        self._driver_cpu = driver_cpu
        return self.governance.stop_before_training(self.governance.outcome, started_s, cpu=self._cpu_figures)

    # --- during training ------------------------------------------------------------------------

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.tracker.log_metrics(metrics, step=step)
        self.cpu.mark("round metrics")

    # --- after training -------------------------------------------------------------------------

    def validate_and_register(self, state: bytes | None) -> dict:
        result = self.governance.validate_and_register(state, hold=self.hold)
        self.cpu.mark("validation and registration")
        return result

    def finish(self, summary: dict, decisions: list, progress: list, ledger: list, counters: dict,
               driver_cpu: dict, worker_cpu_s: float) -> tuple[dict, dict[str, bytes]]:
        """Lineage and the post-mortem into ``summary``, then the job's artifacts onto the run; returns
        the summary and every file written (post-mortem included), for the driver's artifacts folder."""
        self.hold("the post-mortem")
        self._update_truth(ledger, counters, driver_cpu)
        summary["held"] = self.hold.record()
        with tempfile.TemporaryDirectory(prefix="headroom-office-") as tmp:
            self.governance.finish(summary, decisions, progress, worker_cpu_s=worker_cpu_s, cpu=self._cpu_figures,
                                   artifacts_dir=tmp)
            self.cpu.mark("post-mortem")
            # the report took its figures as it began; the summary gets them as they stand after it
            summary.update(office_cpu_by_phase_s=dict(self.cpu.marks),
                           compute=self.compute(worker_cpu_s, self._driver_cpu["total_s"]))
            self.hold("the job's artifacts")
            write_artifacts(self.spec, decisions, progress, summary, self.tracker, tmp, timeline=self.governance.timeline)
            return summary, _files(Path(tmp))

    def window_ended(self, summary: dict, decisions: list, progress: list) -> dict[str, bytes]:
        """The window ended with rows left: the artifacts onto the run, tagged ``window_ended``."""
        with tempfile.TemporaryDirectory(prefix="headroom-office-") as tmp:
            write_artifacts(self.spec, decisions, progress, summary, self.tracker, tmp)
            self.tracker.set_tags({"headroom.status": "window_ended"})
            self.cpu.mark("post-mortem and artifacts")
            return _files(Path(tmp))

    def finish_failed(self, summary: dict, error: str, decisions: list, progress: list, ledger: list, counters: dict,
                      driver_cpu: dict, worker_cpu_s: float) -> None:
        self._update_truth(ledger, counters, driver_cpu)
        summary["held"] = self.hold.record()
        self.governance.finish_failed(summary, error, decisions, progress, worker_cpu_s=worker_cpu_s,
                                      cpu=self._cpu_figures)

    def compute(self, worker_cpu_s: float, driver_cpu_s: float) -> dict:
        """The job's compute as it ends: workers, driver and this office's whole process."""
        from runtime.governance.job import compute_summary

        c = self.spec.cost
        return compute_summary(worker_cpu_s, driver_cpu_s, time.process_time(), c.price_per_cpu_hour, c.currency)

    def end(self, status: str) -> None:
        if self.tracker is not None:
            self.tracker.end(status)

    def pid(self) -> int:
        return os.getpid()

    # --- helpers --------------------------------------------------------------------------------

    def _update_truth(self, ledger: list, counters: dict, driver_cpu: dict) -> None:
        self.governance.truth = _TruthView(self.governance.truth.origin, ledger, counters)
        self._driver_cpu = driver_cpu

    def _cpu_figures(self) -> dict:
        """Driver and office CPU as they stand now (the office's: its whole process, start-up included)."""
        return {"driver_cpu_s": self._driver_cpu["total_s"], "driver_cpu_by_phase_s": self._driver_cpu["by_phase_s"],
                "office_cpu_s": round(time.process_time(), 3), "office_cpu_by_phase_s": dict(self.cpu.marks)}


# What the office needs of the driver's environment (Ray workers on a running cluster do not inherit
# the shell that submitted the job): MLflow's settings and credentials, and the object stores' keys.
PASSED_ENV_PREFIXES = ("MLFLOW_", "AWS_", "AZURE_", "GOOGLE_APPLICATION_CREDENTIALS")


def office_env(spec) -> dict[str, str]:
    """The office's environment variables: the driver's MLflow and storage settings, and the workers'
    thread limits where they differ from the one thread Ray gives an actor that reserves no CPU (BLAS
    and OpenMP read them when they load, before any ``threadpool_limits``). Empty (and then no
    runtime environment of its own, so Ray may hand the office an idle worker process it already
    started) when there is nothing to pass.

    >>> from types import SimpleNamespace
    >>> office_env(SimpleNamespace(budget=SimpleNamespace(cpus_per_worker=2.0))).get("OMP_NUM_THREADS")
    '2'
    """
    threads = max(1, int(spec.budget.cpus_per_worker))
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}
    if threads > 1:
        env |= {k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return env


def pool_node() -> str | None:
    """The node for the office: the driver's own when it is in the training pool, else the alive pool
    node with the most slots; ``None`` when no node offers the pool (the job cannot train either)."""
    from runtime.control.lease import POOL_RESOURCE

    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(POOL_RESOURCE, 0) > 0]
    if any(n["NodeID"] == here for n in nodes):
        return here
    return max(nodes, key=lambda n: n["Resources"][POOL_RESOURCE])["NodeID"] if nodes else None


class Office:
    """The driver's handle on its :class:`JobOffice`: calls wait for the answer and raise the office's own
    error; if the office is lost with its node, another takes over the run and the call is made again."""

    def __init__(self, spec, gov):
        self.spec, self.gov = spec, gov
        self._spec_dict = spec.model_dump()
        self._opened: dict | None = None  # open()'s arguments, once the run exists: what a replacement takes over
        self.replaced = 0
        self._last_sent = None  # the last round metrics sent, not waited for
        self.actor = self._start()

    def _start(self):
        from runtime.control.governor import NAMESPACE

        node = pool_node()
        # named, so that an operator (or a test) can find it: ray list actors, or ray.get_actor(name, "headroom")
        options: dict = {"num_cpus": 0, "name": f"{OFFICE_PREFIX}{self.spec.name}-{uuid.uuid4().hex[:8]}",
                         "namespace": NAMESPACE}
        env = office_env(self.spec)
        if env:
            options["runtime_env"] = {"env_vars": env}
        if node is not None:  # soft: a pool that lost that node meanwhile still gets an office
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        actor = JobOffice.options(**options).remote(self._spec_dict, self.gov)
        if self._opened is not None:  # a replacement: it takes the run over before anything else
            try:
                ray.get(actor.open.remote(**self._opened))
            except BaseException:
                ray.kill(actor, no_restart=True)
                raise
        return actor

    def call(self, method: str, *args, **kwargs):
        for attempt in (0, 1):
            try:
                return ray.get(getattr(self.actor, method).remote(*args, **kwargs))
            except RayTaskError as exc:  # the office's own error, as if raised here: one line for the CLI
                raise (exc.cause if isinstance(exc.cause, BaseException) else exc) from None
            except RayActorError as exc:
                if attempt or self._opened is None:
                    raise
                self._replace(exc)

    def _replace(self, lost: Exception) -> None:
        log.warning("the job's office was lost (%s); a new one takes over MLflow run %s (metrics it had not "
                    "sent yet are lost)", type(lost).__name__, self._opened["run_id"])
        old, self._last_sent = self.actor, None
        try:  # unreachable is not always dead: never two offices on one run
            ray.kill(old, no_restart=True)
        except Exception:  # noqa: BLE001 -- already gone
            pass
        try:
            self.actor = self._start()
        except RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, BaseException) else exc) from None
        self.replaced += 1

    def open(self, **kwargs) -> dict:
        opened = self.call("open", **kwargs)
        self._opened = dict(kwargs, run_id=opened["run_id"], champion_version=opened["champion_version"])
        return opened

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Sent, not waited for: the office logs them through its buffer. The previous send is looked
        at (never waited on): an office found lost there is replaced before this one goes out."""
        last = self._last_sent
        if last is not None and ray.wait([last], timeout=0)[0]:
            try:
                ray.get(last)
            except RayActorError as exc:
                if self._opened is not None:
                    try:
                        self._replace(exc)
                    except Exception as again:  # noqa: BLE001 -- training goes on; the next send tries again
                        log.warning("no new office yet (%s); round metrics wait for one", again)
                        self._last_sent = last
                        return
            except RayTaskError as exc:
                log.warning("the office could not log round metrics (%s)", exc.cause)
        self._last_sent = self.actor.log_metrics.remote(metrics, step)

    def abort(self) -> None:
        """The driver was interrupted: the office is stopped at once, whatever it is doing (validation,
        registration, the post-mortem, or waiting for headroom), and the run is marked KILLED from here."""
        self.close()
        if self._opened is None:
            return
        try:
            from runtime.tracking.tracker import mark_run  # MLflow, in the driver: on this one path only

            mark_run(self.spec.tracking.uri, self._opened["run_id"], "KILLED")
        except Exception as exc:  # noqa: BLE001 -- on the way out
            log.warning("could not mark MLflow run %s KILLED (%s)", self._opened["run_id"], exc)

    def close(self) -> None:
        ray.kill(self.actor, no_restart=True)
