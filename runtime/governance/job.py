"""Governance around one job run: the checklist before the lease, and the gate, lineage and
post-mortem after training. This is the I/O side; the decisions live in :mod:`runtime.governance.checklist`,
:mod:`runtime.governance.gate`, :mod:`runtime.governance.lineage` and :mod:`runtime.governance.postmortem`.

The job's office (:class:`runtime.driver.office.JobOffice`, for the driver :func:`runtime.driver.job.run_job`)
calls, in order, each step after training held while the governor says PAUSE::

    gov = JobGovernance(spec, dataset, truth, tracker)
    outcome = gov.run_checklist()            # before asking for a lease
    if not outcome.passed:
        return gov.stop_before_training(outcome, started_s)   # summary + post-mortem, run FAILED
    ...train...                              # on an exception: gov.finish_failed(summary, exc, ...)
    result = gov.validate_and_register(truth.state, hold=hold)
    gov.finish(summary, decisions, progress, worker_cpu_s=..., cpu=...)   # lineage + post-mortem, into the summary

``fetch_postmortem(run_id, tracking_uri)`` reads a logged post-mortem back (``headroom report``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.governance import checklist as cl
from runtime.errors import HeadroomError, TrackingError
from runtime.training.ingest import read_table_file, to_xy
from runtime.governance.lineage import consumed_slices, log_lineage, rows_in, start_point, tag_model_version
from runtime.governance.postmortem import ARTIFACT_DIR, REPORT, compute_cost, write_postmortem
from runtime.control.reaction import reaction_stats
from runtime.release.registry import alias_version
from runtime.tracking.tracker import CHAMPION, load_champion, register_model

log = logging.getLogger("headroom.governance")
CpuFn = Callable[[], dict]


def compute_summary(worker_cpu_s: float, driver_cpu_s: float, office_cpu_s: float, price_per_cpu_hour: float,
                    currency: str) -> dict:
    """The job's compute: every process it ran (workers, driver, office), and what it cost.

    >>> compute_summary(8.0, 0.5, 3.5, 0.048, "USD")["cpu_s"]
    12.0
    """
    cpu_s = worker_cpu_s + driver_cpu_s + office_cpu_s
    return {"cpu_s": round(cpu_s, 3), "worker_cpu_s": round(worker_cpu_s, 3), "driver_cpu_s": round(driver_cpu_s, 3),
            "office_cpu_s": round(office_cpu_s, 3), "price_per_cpu_hour": price_per_cpu_hour,
            "cost": compute_cost(cpu_s, price_per_cpu_hour), "currency": currency}


def champion_version(uri: str, name: str) -> int | None:
    """The version under alias ``champion`` now, without loading the model."""
    from mlflow import MlflowClient

    return alias_version(MlflowClient(uri), name, CHAMPION)


class JobGovernance:
    def __init__(self, spec, dataset, truth, tracker, checkpoint_dir: str = ""):
        self.spec, self.dataset, self.truth, self.tracker = spec, dataset, truth, tracker
        self.checkpoint_dir = checkpoint_dir
        self.ledger_before = truth.ledger.ranges()
        self.outcome: cl.ChecklistOutcome | None = None
        self.champion_version = champion_version(spec.tracking.uri, spec.name)  # the rollback target
        self._champion_loaded: tuple | None = None
        self.timeline: Path | None = None  # the post-mortem's timeline plot, once written to an artifacts folder

    # --- before the lease ---------------------------------------------------------------------

    def run_checklist(self, now_s: float | None = None) -> cl.ChecklistOutcome:
        """Run the enabled items and record them in MLflow (tags, metrics, a param, ``checklist.json``)."""
        now_s = time.time() if now_s is None else now_s
        items = self.spec.checklist.items
        reference, ref_error = self._reference()
        schemas, drift = self._scan_new_slices(reference, "drift" in items) if {"schema", "drift"} & set(items) else ({}, [])
        results = []
        if "data_fresh" in items:
            results.append(cl.check_freshness(self._newest_mtime_s(), now_s, self.spec.checklist.max_data_age_s))
        if "schema" in items:
            results.append(self._schema(reference, ref_error, schemas))
        if "drift" in items:
            results.append(cl.CheckResult("drift", False, ref_error) if ref_error else cl.check_drift(drift, self.spec.checklist))
        if "harness" in items:
            results.append(self._harness(None if self.spec.checklist.reference else reference))
        self.outcome = cl.ChecklistOutcome(tuple(results), tuple(drift))
        self._record_checklist(self.outcome)
        return self.outcome

    def _new_slices(self) -> list:
        """Slices with rows this run has yet to consume."""
        return [s for s in self.dataset.slices if rows_in(self.ledger_before, s.base, s.base + s.rows) < s.rows]

    def _newest_mtime_s(self) -> float:
        infos = self.dataset.fs.get_file_info([s.path for s in self.dataset.slices])
        return max(i.mtime.timestamp() for i in infos if i.mtime is not None)

    def _reference(self):
        path = self.spec.checklist.reference or self.spec.validation.holdout
        try:
            return read_table_file(path), None
        except HeadroomError as exc:
            return None, f"reference {path} not readable ({exc.what})"

    def _columns(self, reference) -> tuple[list[str], dict[str, str]]:
        d = self.spec.data
        features = d.features or [c for c in reference.column_names if c not in (d.target, d.id_column)]
        expected = {c: cl.type_kind(reference.schema.field(c).type) for c in [*features, d.target]
                    if c in reference.column_names}
        return features, expected

    def _scan_new_slices(self, reference, drift: bool) -> tuple[dict[str, dict[str, str]], list[dict]]:
        """One read of every new slice: its schema (column -> type kind) and, with ``drift``, the PSI/KS
        drift rows of its numeric features against ``reference``."""
        schemas, rows = {}, []
        numeric, ref = [], {}
        if reference is not None and drift:
            features, expected = self._columns(reference)
            numeric = [f for f in features if expected.get(f) == "numeric"]
            keep = cl.evenly_spaced(reference.num_rows, self.spec.checklist.drift_sample_rows)  # the same bound
            ref = {f: reference.column(f).to_numpy(zero_copy_only=False).astype(np.float64)[keep] for f in numeric}
        for s in self._new_slices():
            table = self.dataset.read(s.base, s.base + s.rows)
            name = os.path.basename(s.path)
            schemas[name] = {f.name: cl.type_kind(f.type) for f in table.schema if f.name != self.spec.data.id_column}
            present = {f: ref[f] for f in numeric if schemas[name].get(f) == "numeric"}
            if present:
                table = table.take(cl.evenly_spaced(table.num_rows, self.spec.checklist.drift_sample_rows))
            sample = {f: table.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in present}
            rows += cl.drift_rows(present, name, sample, self.spec.checklist)
        return schemas, rows

    def _schema(self, reference, ref_error, schemas: dict[str, dict[str, str]]) -> cl.CheckResult:
        if ref_error:
            return cl.CheckResult("schema", False, ref_error)
        features, expected = self._columns(reference)
        missing_in_ref = [c for c in [*features, self.spec.data.target] if c not in expected]
        if missing_in_ref:
            return cl.CheckResult("schema", False, f"reference lacks {', '.join(missing_in_ref)}")
        champion_features = self._champion_features()
        return cl.check_schema(expected, schemas, exact=self.spec.data.features is None,
                               model_features=champion_features, n_features=len(features))

    def _champion_features(self) -> int | None:
        champ, _ = self._champion()
        return getattr(champ[0], "n_features_in_", None) if champ else None

    def _champion(self) -> tuple[tuple | None, str | None]:
        """``((model, version) or None, load error or None)``, loaded once for the schema and harness items."""
        if self._champion_loaded is None:
            try:
                self._champion_loaded = (load_champion(self.spec.tracking.uri, self.spec.name, self.spec.model.framework), None)
            except Exception as exc:  # any failure to load is exactly what the harness item reports
                self._champion_loaded = (None, f"{type(exc).__name__}: {exc}")
        return self._champion_loaded

    def _harness(self, holdout=None) -> cl.CheckResult:
        """Holdout readable (``holdout``: the table already read as the drift reference) and champion loadable."""
        d = self.spec.data
        rows, holdout_error = None, None
        try:
            table = holdout if holdout is not None else read_table_file(self.spec.validation.holdout)
            x, _, _ = to_xy(table, d.target, d.features, d.id_column)
            rows = len(x)
        except HeadroomError as exc:
            holdout_error = exc.what
        champ, champion_error = self._champion()
        return cl.check_harness(rows, holdout_error, champ[1] if champ else self.champion_version, champion_error)

    def _record_checklist(self, outcome: cl.ChecklistOutcome) -> None:
        t = self.tracker
        failed = ",".join(r.item for r in outcome.failed)
        t.log_params({"checklist.outcome": "passed" if outcome.passed else f"failed: {failed}"})
        t.set_tags({"headroom.checklist": "passed" if outcome.passed else "failed", "headroom.checklist.failed": failed or "none"}
                   | {f"headroom.checklist.{r.item}": f"{'pass' if r.passed else 'FAIL'}: {r.detail}" for r in outcome.results})
        t.log_metrics({f"checklist.{r.item}.{k}": v for r in outcome.results for k, v in r.numbers.items()
                       if v is not None and np.isfinite(v)}, step=0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "checklist.json"
            path.write_text(json.dumps(outcome.to_dict(), indent=1, default=str))
            t.log_file(path, ARTIFACT_DIR)

    def stop_before_training(self, outcome: cl.ChecklistOutcome, started_s: float, *, cpu: CpuFn | None = None) -> dict:
        """The job's end when the checklist failed: a summary, a post-mortem, a FAILED run; no lease was taken."""
        t = self.truth
        consumed = len(t.ledger)
        summary = {
            "job": self.spec.name, "status": "checklist_failed", "mlflow_run_id": self.tracker.run_id,
            "warm_start": t.origin, "rows_total": self.dataset.total_rows, "rows_consumed": consumed,
            "rows_consumed_this_run": 0, "rows_duplicated": 0, "row_ids_verified": None,
            "steps": t.counters.get("steps", 0), "pauses": 0, "resumes": 0, "checkpoints": 0, "worker_crashes": 0, "workers_hung": 0,
            "reaction": reaction_stats([]), "validation": {"skipped": "the pre-work checklist failed"},
            "registered_version": None, "registered_alias": None, "duration_s": round(time.time() - started_s, 2),
        }
        self.finish(summary, [], [], worker_cpu_s=0.0, cpu=cpu)
        self.tracker.set_tags({"headroom.status": "checklist_failed"})
        self.tracker.end("FAILED")
        return summary

    # --- after training -----------------------------------------------------------------------

    def finish_failed(self, summary: dict, error: BaseException | str, decisions: list[dict], progress: list[dict], *,
                      worker_cpu_s: float, cpu: CpuFn | None = None) -> None:
        """The post-mortem of a job that raised: best effort, never hiding the job's own error."""
        summary.update(status="failed", error=(error if isinstance(error, str) else f"{type(error).__name__}: {error}")[:500])
        try:
            self.finish(summary, decisions, progress, worker_cpu_s=worker_cpu_s, cpu=cpu)
        except Exception as exc:  # the original error is what the caller must see
            log.warning("no post-mortem for the failed job %s (%s)", self.spec.name, exc)

    def validate_and_register(self, state, hold=lambda phase: 0.0) -> dict:
        """The gate (MLflow evaluation of candidate and champion on one holdout), then registration:
        the first version becomes ``champion`` if it clears the absolute bound; later ones ``challenger``
        only if they clear every bound. ``hold(phase)`` is called before each step and returns when
        serving has headroom for it (the office's :class:`runtime.driver.office.Hold`)."""
        from runtime.governance.gate import run_gate
        from runtime.training.trainers import model_from_state

        spec = self.spec
        if state is None:
            return {"skipped": "no model state (nothing trained and no warm start)"}
        self.tracker.flush()  # the gate and the registration need the server: wait for it, or one TrackingError
        hold("validation")
        table = read_table_file(spec.validation.holdout)
        x, y, _ = to_xy(table, spec.data.target, spec.data.features, spec.data.id_column)
        names = spec.data.features or [c for c in table.column_names if c not in (spec.data.target, spec.data.id_column)]
        candidate = model_from_state(spec.model, state)
        champ = load_champion(spec.tracking.uri, spec.name, spec.model.framework)
        gate = run_gate(candidate, champ[0] if champ else None, champ[1] if champ else None, x, y,
                        validation=spec.validation, classifier=spec.model.classes is not None, feature_names=names,
                        tracking_uri=spec.tracking.uri, run_id=self.tracker.run_id)
        self.tracker.log_metrics({f"champion_holdout_{spec.validation.metric}": gate.champion}, step=0)
        self.tracker.set_tags({"headroom.gate": "passed" if gate.passed else "failed"})
        # register_model's rule: no champion -> champion; else challenger if it beats. A first version that
        # fails the absolute bound is registered as if a champion existed and it lost: no alias at all.
        hold("registration")
        reg = register_model(self.tracker, candidate, spec.name, spec.model.framework,
                             beats_champion=gate.passed and champ is not None,
                             has_champion=champ is not None or not gate.passed)
        return {"metric": spec.validation.metric, "candidate": gate.candidate, "champion": gate.champion,
                "champion_version": champ[1] if champ else None, "beats_champion": gate.passed and champ is not None,
                "passed": gate.passed, "reasons": gate.reasons, "thresholds": gate.thresholds, **reg}

    def finish(self, summary: dict, decisions: list[dict], progress: list[dict], *, worker_cpu_s: float,
               cpu: CpuFn | None = None, artifacts_dir: str | None = None) -> dict:
        """Add checklist, lineage and compute to ``summary``; write and log the post-mortem. ``cpu()``:
        the driver's and the office's CPU-s as they stand (``driver_cpu_s``, ``office_cpu_s`` and each
        one's ``..._by_phase_s``; :meth:`runtime.driver.office.JobOffice._cpu_figures`)."""
        spec = self.spec
        if self.outcome is not None:
            summary["checklist"] = self.outcome.to_dict()
        point = start_point(self.truth.origin, self.champion_version, spec.name, self.checkpoint_dir)
        slices = consumed_slices(self.dataset, self.ledger_before, self.truth.ledger.ranges())
        summary["lineage"] = dict(point, slices=log_lineage(self.tracker, spec, slices, point))
        if summary.get("registered_version") is not None:
            tag_model_version(spec.tracking.uri, spec.name, summary["registered_version"], point,
                              summary["lineage"]["slices"], self.tracker.run_id)
        figures = cpu() if cpu is not None else {}
        summary.update({k: v for k, v in figures.items() if k.endswith("_by_phase_s")})
        summary["compute"] = compute_summary(worker_cpu_s, figures.get("driver_cpu_s", 0.0), figures.get("office_cpu_s", 0.0),
                                             spec.cost.price_per_cpu_hour, spec.cost.currency)
        cpu_s = summary["compute"]["cpu_s"]
        self.tracker.log_metrics({"compute.cpu_s": cpu_s, "compute.cost": summary["compute"]["cost"]}, step=0)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(artifacts_dir or tmp) / ARTIFACT_DIR
            files = write_postmortem(out, summary, decisions, progress, slo_p99_ms=spec.serving.slo_p99_ms,
                                     psi_max=spec.checklist.psi_max, currency=spec.cost.currency)
            for f in files:
                self.tracker.log_file(f, ARTIFACT_DIR)
            # the governor's timeline (the job's own artifact too), kept when it lands in the caller's folder
            self.timeline = next((f for f in files if f.name == "timeline.png"), None) if artifacts_dir else None
        return summary


def fetch_postmortem(run_id: str, tracking_uri: str) -> str:
    """The post-mortem Markdown logged to ``run_id``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{REPORT}",
                                                        tracking_uri=tracking_uri, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            message = getattr(exc, "message", str(exc)).splitlines()[0][:200]
            raise TrackingError(f"no post-mortem for run {run_id!r} ({message})", where=tracking_uri,
                                fix="check the run id (the summary's mlflow_run_id) and --tracking-uri") from None
        return Path(local).read_text(encoding="utf-8")
