"""One governed retraining job, start to finish: the driver behind ``jobs.retrain`` and ``headroom run``.

The driver owns the job's truth — the model state, the ledger of consumed rows, the counters — and
writes it to the checkpoint store after every round. A round hands each ready slot of the lease a
shard of unconsumed rows; workers return what they consumed and their updated models, which are
averaged (weighted by rows) and merged into the ledger. The governor decides how many slots exist and
how fast each worker reads; the driver only follows the lease.

>>> summary = run_job(load_spec("jobs/demo.yaml"))  # doctest: +SKIP
>>> summary["rows_duplicated"]  # doctest: +SKIP
0
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from runtime.training.checkpoint import Checkpoint, CheckpointStore, atomic_write_bytes
from runtime.errors import DataError, SpecError
from runtime.driver.office import GOVERNOR_DOWN, Office, PhaseCPU
from runtime.control.governor import get_or_create_governor
from runtime.training.ingest import Dataset, RangeSet
from runtime.control.lease import POOL_RESOURCE
from runtime.loopback import is_loopback, remember_private_cluster, start_private_cluster
from runtime.spec.job import JobSpec
from runtime.driver.summary import build_summary, law_config
from runtime.training.trainers import average_states
from runtime.training.trainers.sklearn import can_average
from runtime.training.worker import TrainerWorker

log = logging.getLogger("headroom.job")
# The governor restarting (or briefly unreachable) is survivable (GOVERNOR_DOWN): the driver keeps its
# truth, the workers pause themselves, and calls are retried on the next loop turn.
StatusFn = Callable[[dict], None]
T = TypeVar("T")


def connect(address: str | None = None, *, pool_slots: int = 1) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS``, else start a private local one (loopback only,
    token auth: :func:`runtime.loopback.start_private_cluster`)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        context = start_private_cluster(num_cpus=max(2, os.cpu_count() or 2), resources={POOL_RESOURCE: pool_slots})
        remember_private_cluster(context.address_info["gcs_address"])  # for this user's headroom status / pause
        node_ip = ray.util.get_node_ip_address()
        if not is_loopback(node_ip):  # the operator chose otherwise (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1)
            log.warning("the local Ray cluster listens on %s, not only on loopback (see runtime/loopback.py)", node_ip)


def preflight(spec: JobSpec) -> None:
    if spec.model.framework == "sklearn" and spec.budget.max_workers > 1 and not can_average(spec.model.estimator):
        raise SpecError(f"budget.max_workers: {spec.model.estimator} cannot be averaged across workers",
                        where=spec.name, fix="set budget.max_workers: 1, or use an SGD/MLP estimator")


class _Truth:
    """What the checkpoint holds: model state, ledger, counters, RNG."""

    def __init__(self, state, ledger: RangeSet, counters: dict, rng: np.random.Generator, origin: str):
        self.state, self.ledger, self.counters, self.rng, self.origin = state, ledger, counters, rng, origin
        self.state_id: str | None = None  # set when ``state`` is exactly what one worker returned (it goes on from it)

    def to_checkpoint(self, slices: list, framework: str) -> Checkpoint:
        return Checkpoint(step=self.counters["steps"], ledger=self.ledger.to_list(), counters=dict(self.counters),
                          rng=self.rng.bit_generator.state, payload=self.state or b"",
                          meta={"origin": self.origin, "slices": slices, "framework": framework})


def _warm_start(spec: JobSpec, store: CheckpointStore, dataset: Dataset,
                champion: Callable[[], tuple[bytes, int] | None]) -> _Truth:
    """The newest checkpoint, else the champion (``champion()``: its state bytes and version, from the
    office), else a fresh model, as ``spec.model.warm_start`` allows."""
    slices = [[os.path.basename(s.path), s.rows] for s in dataset.slices]
    ckpt = store.latest() if spec.model.warm_start in ("auto", "checkpoint") else None
    if ckpt is not None:
        old = ckpt.meta.get("slices", [])
        if slices[:len(old)] != old:
            raise DataError("the data slices changed under the job's checkpoint (a slice was edited, removed or "
                            "inserted before the newest one)", where=spec.data.path,
                            fix="add new data only as new slices that sort after the old ones, or clear the job's checkpoints")
        rng = np.random.default_rng()
        rng.bit_generator.state = ckpt.rng
        return _Truth(ckpt.payload or None, RangeSet.from_list(ckpt.ledger), dict(ckpt.counters), rng,
                      f"checkpoint:step-{ckpt.step}")
    counters = {"steps": 0, "rounds": 0, "rows_duplicated": 0, "id_sum": 0, "id_sq": 0}
    rng = np.random.default_rng(0)
    if spec.model.warm_start in ("auto", "champion"):
        champ = champion()
        if champ is not None:
            return _Truth(champ[0], RangeSet(), counters, rng, f"champion:v{champ[1]}")
    return _Truth(None, RangeSet(), counters, rng, "fresh")


ROUND_SHARD_MARGIN = 1.5  # with round_s, a shard holds this many round_s at the last rate: the round's clock ends it


def round_rows(every_steps: int, batch_rows: int, round_s: float, worker_rows_per_s: float) -> int:
    """A worker's shard in the next round: ``every_steps`` batches; with ``round_s``, at least
    ``ROUND_SHARD_MARGIN`` x ``round_s`` of training at a worker's rate in the last round that trained,
    and the worker stops at ``round_s`` (its rows not trained go back to pending). Each round ends in
    a state transfer, a merge and a checkpoint beside serving: in the quick benchmark, rounds of
    25,600 rows (a second apart at full speed) left the governed job 0.69x the rows of rounds ten
    times longer.

    >>> round_rows(100, 256, 0.0, 30_000.0)  # steps only
    25600
    >>> round_rows(100, 256, 10.0, 30_000.0), round_rows(100, 256, 10.0, 1_000.0)  # 15 s at the rate, or the steps
    (450000, 25600)
    """
    return max(every_steps * batch_rows, int(ROUND_SHARD_MARGIN * round_s * worker_rows_per_s))


def _shards(pending: list, slots: list[int], rows_per_shard: int) -> dict[int, list]:
    """Disjoint shards of the pending ranges, up to ``rows_per_shard`` rows each, one per slot."""
    out, queue = {}, list(pending)
    for slot in slots:
        shard, want = [], rows_per_shard
        while queue and want > 0:
            s, e = queue[0]
            take = min(want, e - s)
            shard.append((s, s + take))
            want -= take
            queue[0] = (s + take, e)
            if queue[0][0] >= e:
                queue.pop(0)
        if shard:
            out[slot] = shard
    return out


def run_job(spec: JobSpec, *, address: str | None = None, on_status: StatusFn | None = None,
            artifacts_dir: str | None = None, isolate_driver: bool = True, window: tuple[float, float] | None = None) -> dict:
    """Run ``spec`` under the governor to completion; returns the summary.

    With ``window`` (``(start_s, end_s)``, epoch seconds: its planned window, as the window scheduler
    passes it), the job yields at the window's end: the governor pauses it (``WINDOW_END``), its last
    round is checkpointed, the lease goes back and the summary says ``window_ended``; the next run of
    the same spec resumes from that checkpoint. Validation, registration and the post-mortem run only
    once every row is consumed.

    The driver keeps the job's truth (rounds, merges, checkpoints) and nothing else. Everything else
    the job does runs in its office (:mod:`runtime.driver.office`), an actor on the training pool
    isolated like a worker: the MLflow run, the champion, the checklist (before the job asks for a
    lease: a failed item stops it there), the gate, registration, the post-mortem and the artifacts.
    After training each of those waits while the directive is PAUSE. With ``isolate_driver``
    the driver's own work runs with the workers' scheduling class and nice level (``budget.worker_sched``,
    ``budget.worker_nice``) and thread limits: opening the data and the checkpoint store on a thread
    of its own, then, once connected, the thread that calls this (and every thread it starts), which
    it cannot undo: pass ``False`` from a process that must keep its priority. The summary's
    ``driver_isolation`` says what was applied (the office's too), and its ``compute`` the CPU-s of
    driver, office and workers. The summary, the post-mortem, the governor's decision log, the
    progress series and a timeline plot are written to ``artifacts_dir`` (a temporary folder if not
    given) and logged to the job's MLflow run. The calling process's environment and MLflow settings
    are left as they were: MLflow runs in the office.
    """
    preflight(spec)
    with tempfile.TemporaryDirectory(prefix="headroom-artifacts-") as tmp:
        return _run_job(spec, address, on_status, artifacts_dir or tmp, isolate_driver, window)


def _run_job(spec: JobSpec, address: str | None, on_status: StatusFn | None, artifacts_dir: str,
             isolate_driver: bool, window: tuple[float, float] | None) -> dict:
    started = time.time()
    cpu = PhaseCPU()
    isolation: dict[str, dict] = {}

    def before_lease():
        if isolate_driver:
            isolation["before_lease"] = isolate_this_thread(spec)
        dataset = Dataset(spec.data.path, spec.data.format)
        store = CheckpointStore(spec.checkpoint.storage, spec.name, keep=spec.checkpoint.keep)
        if store.swept:
            log.warning("removed %d temporary checkpoint file(s) left by a writer killed mid-save: %s",
                        len(store.swept), ", ".join(os.path.basename(p) for p in store.swept))
        return dataset, store

    # The data and the checkpoint store are opened with the workers' priority on a thread of its own:
    # this thread keeps its own until it has connected, since a private cluster it starts must not
    # inherit the isolation.
    dataset, store = on_isolated_thread(before_lease) if isolate_driver else before_lease()
    connect(address, pool_slots=spec.budget.max_workers)
    if isolate_driver:
        isolation["training_and_after"] = isolate_this_thread(spec)
    cpu.mark("data and connect")
    gov = get_or_create_governor(spec.budget.poll_interval_s)
    cpu.mark("governor")
    office = Office(spec, gov)  # MLflow, the checklist, the gate and the post-mortem: on the training pool
    try:
        return _with_office(spec, gov, office, dataset, store, cpu, isolation, started, on_status, artifacts_dir, window)
    finally:
        office.close()


def _with_office(spec, gov, office: "Office", dataset, store, cpu: PhaseCPU, isolation: dict, started: float,
                 on_status, artifacts_dir: str, window) -> dict:
    truth = _warm_start(spec, store, dataset, lambda: office.call("champion_state"))
    opened = office.open(run_name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", origin=truth.origin,
                         ledger=truth.ledger.to_list(), counters=truth.counters, checkpoint_dir=store.dir)
    isolation["office"] = opened["isolation"]
    run_id = opened["run_id"]
    checklist = office.call("checklist")  # its outcome, kept here too: a replaced office has none
    cpu.mark("MLflow run and checklist (in the office)")
    if not checklist["passed"]:  # stop before any lease is asked for
        summary = office.call("stop_before_training", started, _driver_cpu(cpu))
        return dict(summary, driver_isolation=isolation)
    register = _registrar(gov, spec)
    register("training")
    loop = _RoundLoop(spec, gov, register, truth, store, dataset, office, on_status)
    loop.until_s = window[1] if window else None
    driver = {"driver_isolation": isolation}  # what the summary says of the driver
    try:
        loop.run()
        loop.stop_actors()
        cpu.mark("training rounds")
        if loop.window_ended_s is not None:
            return _yield_at_window_end(spec, gov, truth, loop, dataset, started, office, run_id, window, artifacts_dir,
                                        dict(driver, driver_cpu_by_phase_s=cpu.marks))
        _set_phase(gov, spec, "finishing")  # the slots go back; the office's work still waits for headroom
        result = office.call("validate_and_register", truth.state)
        cpu.mark("validation and registration (in the office)")
        summary = build_summary(spec, truth, loop, loop.record(), result, dataset, started, run_id)
        summary.update(driver, checklist=checklist, office_replacements=office.replaced)
        if window is not None:
            summary["window"] = _window_record(window, started, time.time())
        cpu.mark("summary")
        summary["wall_by_phase_s"] = dict(cpu.wall)  # where the job's time went, as the driver saw it
        summary, files = office.call("finish", summary, loop.decisions, loop.progress, truth.ledger.to_list(),
                                     truth.counters, _driver_cpu(cpu), loop.worker_cpu_s)
        summary["office_replacements"] = office.replaced  # one lost during the post-mortem counts too
        cpu.mark("post-mortem and artifacts (in the office)")  # the run's MLflow copy was logged before this one
        summary["wall_by_phase_s"] = dict(cpu.wall)
        files["summary.json"] = json.dumps(summary, indent=1, default=str).encode()
        _write_files(artifacts_dir, files)
    except BaseException as exc:
        try:
            loop.write_due()  # the last merged round is kept, whatever stopped the job
        except Exception as save_exc:  # noqa: BLE001 -- the job's own error is the one to raise
            log.warning("could not write the last round's checkpoint (%s)", save_exc)
        record = _release(gov, spec, loop)
        if not isinstance(exc, Exception):  # Ctrl-C: the user wants out now, whatever the office is doing
            office.abort()
            raise
        try:
            summary = build_summary(spec, truth, loop, record, {"skipped": "the job failed"}, dataset, started, run_id)
            summary.update(driver, checklist=checklist)
            office.call("finish_failed", summary, f"{type(exc).__name__}: {exc}", loop.decisions, loop.progress,
                        truth.ledger.to_list(), truth.counters, _driver_cpu(cpu), loop.worker_cpu_s)
            office.call("end", "FAILED")
        except Exception as office_exc:  # noqa: BLE001 -- the job's own error is the one to raise
            log.warning("no post-mortem for the failed job %s (%s)", spec.name, office_exc)
        raise
    _release(gov, spec, loop)
    office.call("end", "FINISHED")
    return summary


def _driver_cpu(cpu: PhaseCPU) -> dict:
    """The driver's CPU so far, for the office's post-mortem (from the job's start: the calling process
    may do other things, so its own start-up is not the job's)."""
    return {"total_s": round(time.process_time() - cpu.started, 3), "by_phase_s": dict(cpu.marks)}


def _write_files(folder: str, files: dict[str, bytes]) -> None:
    """The office's files (the post-mortem, the summary, the decision log, the timeline) into ``folder``."""
    for name, data in files.items():
        atomic_write_bytes(Path(folder) / name, data)


def _window_record(window: tuple[float, float], started_s: float, ended_s: float) -> dict:
    """The planned window against the time the run used (what the post-mortem compares)."""
    start, end = window
    return {"planned_start_s": start, "planned_end_s": end, "started_s": round(started_s, 3), "ended_s": round(ended_s, 3),
            "used_fraction": round(max(0.0, ended_s - max(start, started_s)) / max(1e-9, end - start), 4)}


def _yield_at_window_end(spec, gov, truth, loop, dataset, started, office, run_id, window, artifacts_dir,
                         driver: dict) -> dict:
    """The window ended with rows left: every returned row is in the checkpoint; hand the lease back,
    record the run and stop. The next run of the spec resumes from the checkpoint."""
    record = _release(gov, spec, loop)
    summary = build_summary(spec, truth, loop, record, {"skipped": "the window ended before every row was consumed"},
                            dataset, started, run_id)
    summary["status"] = "window_ended"
    summary["window"] = _window_record(window, started, loop.window_ended_s)
    summary.update(driver)
    log.info("window ended: %d of %d rows consumed, checkpointed; the job resumes in its next window",
             summary["rows_consumed"], summary["rows_total"])
    _write_files(artifacts_dir, office.call("window_ended", summary, loop.decisions, loop.progress))
    office.call("end", "FINISHED")
    return summary


def on_isolated_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a new thread, waited for: its result, or its exception raised here. ``fn`` isolates
    its own thread (:func:`isolate_this_thread`), which leaves the calling thread's priority as it was."""
    out: dict = {}

    def body() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller, which raises it
            out["error"] = exc

    thread = threading.Thread(target=body, name="headroom-before-lease", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def isolate_this_thread(spec: JobSpec) -> dict:
    """The driver's share of the workers' isolation: scheduling class, nice level, BLAS/OpenMP threads."""
    from threadpoolctl import threadpool_limits

    from runtime.training.isolation import isolate

    b = spec.budget
    done = isolate(0, b.worker_nice, b.cpus_per_worker, None, b.worker_sched)
    threadpool_limits(max(1, int(b.cpus_per_worker)))
    log.info("driver isolated: %s", done)
    return done


def _set_phase(gov, spec: JobSpec, phase: str) -> None:
    try:
        ray.get(gov.set_phase.remote(spec.name, phase), timeout=30)
    except GOVERNOR_DOWN:
        log.warning("governor unavailable when entering %s; it learns the phase when the job re-registers", phase)


def _release(gov, spec: JobSpec, loop: "_RoundLoop") -> dict:
    """Give the lease back and keep the governor's full record of the job."""
    try:
        record = ray.get(gov.unregister.remote(spec.name), timeout=30) or {}
    except GOVERNOR_DOWN:
        record = {}
    loop.stop_actors()
    if record.get("decisions"):  # the governor's copy also holds the ticks after the last poll; after a
        # governor restart it starts with the restart, and the driver's copy holds the ones before
        first_t = record["decisions"][0]["t"]
        loop.decisions = [d for d in loop.decisions if d["t"] < first_t] + record["decisions"]
    return record


def _registrar(gov, spec: JobSpec):
    serving = spec.serving.source_config()
    bundle = {"CPU": spec.budget.cpus_per_worker, POOL_RESOURCE: 1}
    if spec.budget.gpus_per_worker > 0:
        bundle["GPU"] = spec.budget.gpus_per_worker
    drain_s = spec.budget.governor_silence_s + 5.0

    def register(phase: str = "training"):
        ray.get(gov.register.remote(spec.name, law_config(spec), serving, bundle, drain_s, spec.budget.poll_interval_s,
                                    spec.budget.park_s, spec.priority, phase, spec.budget.worker_hung_s))

    return register


class _RoundLoop:
    """Rounds until every row is consumed; keeps the time series the summary and plots need."""

    def __init__(self, spec, gov, register, truth: _Truth, store, dataset, tracker, on_status):
        """``tracker``: where the round metrics go (the job's :class:`~runtime.driver.office.Office`:
        sent, not waited for)."""
        self.spec, self.gov, self.register, self.truth = spec, gov, register, truth
        self.store, self.dataset, self.tracker, self.on_status = store, dataset, tracker, on_status
        self.actors: dict[int, object] = {}
        self._actor_pg: dict[int, str] = {}  # slot -> the placement group its actor was started in (hex id)
        self._running: list[int] = []
        self._round_rows: dict[int, int] = {}  # slot -> rows of the round not yet in the ledger (reported or returned)
        self._round_seeds: dict[int, int] = {}  # slot -> the seed of its shard in the round now in flight
        self._loss: float | None = None  # mean test-then-train loss of the last merged round
        self.decisions: list[dict] = []
        self.progress: list[dict] = []
        self.checkpoints = 0
        self.crashes = 0
        self._process_cpu_s: dict[int, float] = {}  # worker pid -> its process's CPU so far (start-up included)
        self.rows_at_start = len(truth.ledger)
        self._since = 0
        self._last_snap: dict | None = None
        self._last_poll = 0.0
        self._last_lease_check = 0.0
        self._slices = [[os.path.basename(s.path), s.rows] for s in dataset.slices]
        self._spec_dict = spec.model_dump()
        self.until_s: float | None = None  # the planned window's end (None: no window)
        self.window_ended_s: float | None = None  # when the governor was told the window ended
        self._due: Checkpoint | None = None  # the last merge's checkpoint, until it is written
        self._worker_rows_per_s = 0.0  # rows/s of a worker in the last round that trained (checkpoint.round_s)

    def run(self) -> None:
        total = self.dataset.total_rows
        while True:
            pending = self.truth.ledger.complement(total)
            if not pending or self.window_ended_s is not None:  # done, or the window ended (the round is merged)
                if not pending:  # every row is in: the window's end no longer applies (the finishing work
                    self.until_s = None  # waits on headroom only; a WINDOW_END pause now would hold it for good)
                self._checkpoint()
                return
            self._reconcile()
            if not self._running:
                self._checkpoint()
                self._poll(force=False)
                time.sleep(0.05)
                continue
            shards = _shards(pending, self._running, self._rows_per_shard(pending))
            state_ref = ray.put(self.truth.state)
            self._round_rows = {}
            seed = int(self.truth.rng.integers(2**31))
            state_id = self.truth.state_id
            self._round_seeds = {s: seed + s for s in shards}
            max_s = self.spec.checkpoint.round_s or None
            refs = {self.actors[s].train.remote(state_ref, shard, seed + s, state_id, max_s): s for s, shard in shards.items()}
            self._checkpoint()  # the last round's, written while this one trains: the workers never wait for it
            self._merge(self._collect(refs))

    def _reconcile(self) -> None:
        """Follow the lease: start workers in new slots, hand back drained ones, drop the rest."""
        try:
            view = self._lease_view(raise_down=True)
            if view is None:  # the governor restarted and forgot us: register again
                self.register()
                view = {"ready": {}, "draining": [], "parked": []}
        except GOVERNOR_DOWN as exc:
            log.warning("governor unavailable (%s); training stays paused until it is back", type(exc).__name__)
            self._running = []
            time.sleep(0.5)
            return
        for slot in view["draining"]:
            if slot in self.actors:  # idle between rounds: nothing to stop, just hand the slot back
                self._yielded(slot)
        # A draining slot whose worker is still here was parked or kept by that hand-back (_yielded drops
        # the others): its warm process stays, though the view was read before the slot was parked.
        keep = set(view["ready"]) | set(view["parked"]) | (set(view["draining"]) & set(self.actors))
        moved = self._moved(view)
        for slot in [s for s in self.actors if s not in keep or s in moved]:
            self._drop(slot)
        for slot, pg in view["ready"].items():
            if slot not in self.actors:
                strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
                self._actor_pg[slot] = pg.id.hex()
                self.actors[slot] = TrainerWorker.options(
                    scheduling_strategy=strategy, num_cpus=self.spec.budget.cpus_per_worker,
                    num_gpus=self.spec.budget.gpus_per_worker, resources={POOL_RESOURCE: 1}).remote(self.spec.name, slot, self._spec_dict, self.gov,
                                                         self.spec.budget.governor_silence_s)
        self._running = sorted(view["ready"])

    def _yielded(self, slot: int) -> None:
        """The worker in ``slot`` stopped on the governor's word: keep it if the slot is parked or kept."""
        try:
            outcome = ray.get(self.gov.released.remote(self.spec.name, slot), timeout=10)
        except GOVERNOR_DOWN:
            outcome = "unknown"
        if outcome not in ("parked", "kept", "running"):
            self._drop(slot)

    def _moved(self, view: dict) -> set[int]:
        """Slots whose group is not the one their actor was started in: the governor removed that one
        (a worker gone silent, ``Lease.hung``) and granted a fresh group under the same index."""
        return {slot for slot, pg in view["ready"].items()
                if slot in self._actor_pg and pg.id.hex() != self._actor_pg[slot]}

    def _drop(self, slot: int) -> None:
        self._actor_pg.pop(slot, None)
        actor = self.actors.pop(slot, None)
        if actor is not None:
            ray.kill(actor, no_restart=True)
        self.gov.released.remote(self.spec.name, slot)

    def _collect(self, refs: dict) -> list[dict]:
        results, withdrawn = [], set()
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
            for ref in done:
                slot = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except (RayActorError, RayTaskError) as exc:
                    if slot in withdrawn:
                        log.warning("slot %s left the lease before its worker returned; its shard goes back to pending", slot)
                    else:
                        self.crashes += 1
                        log.warning("worker in slot %s died (%s); its shard goes back to pending", slot, type(exc).__name__)
                    self._drop(slot)
                    continue
                results.append(result)
                self._round_rows[slot] = result["rows"]  # exact: a worker's last progress report may lag its return
                if result["stopped"]:  # yielded: hand the slot back now; the round's merge keeps its rows
                    self._yielded(slot)
            self._poll(force=False)
            withdrawn |= self._withdraw_orphans(set(refs.values()))
        return results

    def _lease_view(self, *, raise_down: bool = False) -> dict | None:
        """The governor's view of this job's lease; ``None`` if it does not know the job (or, unless
        ``raise_down``, cannot be reached)."""
        try:
            return ray.get(self.gov.lease.remote(self.spec.name), timeout=10)
        except GOVERNOR_DOWN:
            if raise_down:
                raise
            return None

    def _withdraw_orphans(self, waiting: set[int]) -> set[int]:
        """Stop the workers of slots the governor no longer leases: a group removed under a worker that
        could not start (its node was lost and the pool shrank) would leave its task pending forever.
        Their shards go back to pending: only returned rows ever reach the ledger. Checked once a second."""
        now = time.time()
        if not waiting or now - self._last_lease_check < 1.0:
            return set()
        self._last_lease_check = now
        view = self._lease_view()
        if view is None:
            return set()
        orphans = (waiting - set(view["ready"]) - set(view["draining"]) - set(view["parked"])) | (waiting & self._moved(view))
        for slot in orphans:
            if slot in self.actors:
                ray.kill(self.actors[slot], no_restart=True)
        return orphans

    def _rows_per_shard(self, pending: list) -> int:
        ckpt = self.spec.checkpoint
        rows = round_rows(ckpt.every_steps, self.spec.data.batch_rows, ckpt.round_s, self._worker_rows_per_s)
        if ckpt.round_s:  # the last rows split evenly: a round is one round_s for every worker, not one shard for the first
            rows = min(rows, max(1, math.ceil(sum(e - s for s, e in pending) / max(1, len(self._running)))))
        return rows

    def _merge(self, results: list[dict]) -> None:
        for r in results:
            if "pid" in r:
                self._process_cpu_s[r["pid"]] = max(self._process_cpu_s.get(r["pid"], 0.0), r["process_cpu_s"])
        useful = [r for r in results if r["rows"] > 0]
        if not useful:
            self._round_rows, self._round_seeds = {}, {}  # nothing of this round is in flight any more
            return
        # a worker's rate in this round (its rows over its time), for the next round's shards
        self._worker_rows_per_s = sum(r["rows"] for r in useful) / max(sum(r["seconds"] for r in useful), 1.0)
        t = self.truth
        for r in useful:
            for s, e in r["consumed"]:
                t.counters["rows_duplicated"] += t.ledger.add(s, e)
            t.counters["id_sum"] += r["id_sum"]
            t.counters["id_sq"] += r["id_sq"]
            t.counters["steps"] += r["steps"]
        t.state = average_states(self.spec.model, [r["state"] for r in useful], [r["rows"] for r in useful])
        t.state_id = useful[0].get("state_id") if len(useful) == 1 else None
        t.counters["rounds"] += 1
        # the checkpoint of this merge: the truth as it stands now (the next round only changes it at its merge)
        self._due = t.to_checkpoint(self._slices, self.spec.model.framework)
        losses = [r["loss"] for r in useful if r["loss"] is not None]
        self._loss = float(np.mean(losses)) if losses else None
        self._round_rows, self._round_seeds = {}, {}  # the round's rows are in the ledger now, not in flight

    def _checkpoint(self) -> None:
        """Write the last merge's checkpoint, if not yet written, and report the progress it made."""
        if self.write_due():
            self._poll(force=True)

    def write_due(self) -> bool:
        """Write the last merge's checkpoint if it is not written yet; True if it was written now."""
        if self._due is None:
            return False
        self.store.save(self._due)
        self._due = None
        self.checkpoints += 1
        return True

    def _end_window_if_due(self, now: float) -> None:
        """At the window's end, the governor pauses the job (WINDOW_END): its workers stop and return
        their rows, the round is merged and checkpointed, and :meth:`run` returns."""
        if self.until_s is None or self.window_ended_s is not None or now < self.until_s:
            return
        try:
            ray.get(self.gov.close_window.remote(self.spec.name), timeout=10)
        except GOVERNOR_DOWN:  # the workers pause themselves when they cannot hear the governor
            log.warning("governor unavailable at the window's end; stopping the workers directly")
            for actor in self.actors.values():
                ray.kill(actor, no_restart=True)
        self.window_ended_s = now
        log.info("the job's window ended at %s: yielding", time.strftime("%H:%M:%S", time.localtime(self.until_s)))

    def _poll(self, force: bool) -> None:
        now = time.time()
        self._end_window_if_due(now)
        if not force and now - self._last_poll < 1.0:
            return
        self._last_poll = now
        try:
            snap = ray.get(self.gov.snapshot.remote(self.spec.name, self._since), timeout=10)
        except GOVERNOR_DOWN:
            snap = None
        if snap is None:
            return
        new = snap.pop("decisions")
        self._since = snap.pop("next_since")
        self._last_snap = snap
        self.decisions.extend(new)
        # Rows reported by workers in the current round only: earlier rounds are in the ledger already.
        for slot, p in snap["progress"].items():  # only reports of the shard in flight in that slot now
            if self._round_seeds and p.get("round") == self._round_seeds.get(int(slot)):
                self._round_rows[int(slot)] = max(self._round_rows.get(int(slot), 0), p.get("rows", 0))
        in_flight = sum(self._round_rows.values())
        consumed = len(self.truth.ledger) + in_flight
        prev = self.progress[-1] if self.progress else None
        rate = (consumed - prev["rows_consumed"]) / max(1e-6, now - prev["t"]) if prev else 0.0
        point = {"t": now, "rows_consumed": consumed, "rows_per_s": max(0.0, rate), "loss": self._loss}
        self.progress.append(point)
        level_num = {"PAUSE": 0, "THROTTLE": 1, "RUN": 2}[snap["level"]]
        self.tracker.log_metrics({"rows_consumed": consumed, "rows_per_s": point["rows_per_s"], "loss": point["loss"],
                                  "directive_level": level_num, "serving_p99_ms": snap["p99_ms"],
                                  "workers_active": snap["active"], "slack": snap["slack"]}, step=len(self.progress))
        if self.on_status:
            self.on_status(dict(snap, rows_consumed=consumed, rows_total=self.dataset.total_rows, rows_per_s_observed=point["rows_per_s"]))

    @property
    def worker_cpu_s(self) -> float:
        """CPU of every worker process the job ran, start-up and imports included (as of its last round)."""
        return sum(self._process_cpu_s.values())

    def record(self) -> dict:
        """The governor's counters for the job now (pauses, resumes, reaction times), after a last poll."""
        self._poll(force=True)
        return dict(self._last_snap or {})

    def stop_actors(self) -> None:
        for slot in list(self.actors):
            self._drop(slot)

