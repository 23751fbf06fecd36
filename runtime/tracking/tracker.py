"""MLflow, behind a few verbs: one run per job, step metrics, artifacts, registration with aliases.

Registration follows the rule "no silent promotion": the first version of a model becomes
``champion``; later versions become ``challenger`` only when they beat the champion on the holdout,
and only the release gates (or ``headroom promote``) move ``champion``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from runtime.errors import TrackingError
from runtime.tracking.buffer import MetricBuffer

CHAMPION, CHALLENGER = "champion", "challenger"
# Explicit requirements: letting MLflow infer them costs ~10 s per logged model.
PIP_REQUIREMENTS = ["scikit-learn", "skops", "numpy"]
# MLflow's HTTP defaults retry a dead server for minutes inside one call; the metric buffer retries on
# its own schedule instead, so each call gives up sooner (operators' own settings win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
log = logging.getLogger("headroom.tracking")
_scope_lock = threading.Lock()
_import_lock = threading.Lock()
_scope_depth = 0
_scope_saved: dict[str, str | None] = {}  # the environment before the first scope
_scope_saved_uri: str | None = None  # MLflow's global URI before it


@contextmanager
def mlflow_scope(uri: str) -> Iterator[None]:
    """MLflow's tracking URI and :data:`HTTP_DEFAULTS` for the span of the block, then the caller's own back.

    MLflow 3.17 takes neither as an argument: ``rest_utils.http_request`` reads its retries, back-off
    and timeout from the environment on every call, and ``mlflow.set_tracking_uri`` writes
    ``MLFLOW_TRACKING_URI`` into it. So they are set here for the span of one job and the calling
    process's environment is restored when the last job in it ends (jobs may run side by side in
    threads of one process: the first one in saves, the last one out restores).

    >>> import os
    >>> before = dict(os.environ)
    >>> with mlflow_scope("sqlite:///mlflow.db"):
    ...     os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    '2'
    >>> dict(os.environ) == before
    True
    """
    global _scope_depth, _scope_saved_uri
    keys = [*HTTP_DEFAULTS, "MLFLOW_TRACKING_URI"]
    with _scope_lock:
        if _scope_depth == 0:
            from mlflow.tracking._tracking_service import utils as tracking_utils  # its global URI, restored too

            _scope_saved.clear()
            _scope_saved.update({k: os.environ.get(k) for k in keys})
            _scope_saved_uri = tracking_utils._tracking_uri
            for key, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
        _scope_depth += 1
        mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        with _scope_lock:
            _scope_depth -= 1
            if _scope_depth == 0:
                mlflow.set_tracking_uri(_scope_saved_uri)
                for key in keys:
                    if _scope_saved[key] is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = _scope_saved[key]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    """One MLflow run.

    >>> t = Tracker("sqlite:///mlflow.db", "headroom", "my-job")  # doctest: +SKIP
    >>> t.log_metrics({"rows_per_s": 120.0}, step=3)  # doctest: +SKIP
    """

    def __init__(self, uri: str, experiment: str, run_name: str, *, flush_timeout_s: float = 60.0):
        self.uri = uri
        self.client = MlflowClient(uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        except MlflowException as exc:
            raise TrackingError(f"cannot start an MLflow run ({exc.message})", where=uri,
                                fix="check tracking.uri (e.g. sqlite:///mlflow.db or http://127.0.0.1:5000)") from None
        self.flush_timeout_s = flush_timeout_s
        self.metrics = MetricBuffer(self.client.log_batch, self.run_id)  # never blocks training on MLflow

    @classmethod
    def resume(cls, uri: str, run_id: str, *, flush_timeout_s: float = 60.0) -> "Tracker":
        """The tracker of an existing run (a replacement for a lost process takes the run over)."""
        self = cls.__new__(cls)
        self.uri, self.client, self.run_id, self.flush_timeout_s = uri, MlflowClient(uri), run_id, flush_timeout_s
        try:
            self.client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(f"cannot take over MLflow run {run_id} ({exc.message})", where=uri,
                                fix="check tracking.uri is reachable; the job resumes from its checkpoint") from None
        self.metrics = MetricBuffer(self.client.log_batch, self.run_id)
        return self

    def log_params(self, params: dict) -> None:
        flat = {k: str(v)[:500] for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i:i + 100]])

    def log_metrics(self, metrics: dict[str, float | None], step: int, timestamp_ms: int | None = None) -> None:
        import time

        ts = timestamp_ms or int(time.time() * 1000)
        clean = [mlflow.entities.Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
        if clean:
            self.metrics.add(clean)

    def flush(self) -> None:
        """Wait for every buffered metric to reach MLflow, or raise one :class:`TrackingError`."""
        if not self.metrics.flush(self.flush_timeout_s):
            raise TrackingError(f"tracking server unreachable for {self.flush_timeout_s:g} s; {self.metrics.pending} "
                                f"metrics not sent ({self.metrics.last_error})", where=self.uri,
                                fix="bring the MLflow server back and rerun: the job resumes from its checkpoint")

    def log_file(self, path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def set_tags(self, tags: dict) -> None:
        if tags:  # one write for all of them, not one per tag
            self.client.log_batch(self.run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, status: str = "FINISHED") -> None:
        """Close the run; best effort, so that a dead server never hides the error that ended a job."""
        try:
            if self.metrics.flush(self.flush_timeout_s if status == "FINISHED" else 1.0):
                self.client.set_terminated(self.run_id, status)
        except (MlflowException, OSError) as exc:
            log.warning("cannot mark MLflow run %s %s (%s)", self.run_id, status, exc)
        finally:
            self.metrics.close()


def mark_run(uri: str, run_id: str, status: str) -> None:
    """End ``run_id`` with ``status`` (``KILLED``: the job was interrupted), within the job's MLflow settings."""
    with mlflow_scope(uri):
        MlflowClient(uri).set_terminated(run_id, status)


# The one sub-package of scikit-learn that imports PyTorch (its array-API shim for torch tensors).
_SKLEARN_TORCH_SHIM = "sklearn.externals.array_api_compat.torch"


def import_skops_io():
    """``skops.io``, imported without importing PyTorch.

    skops lists the types it trusts with scikit-learn's ``all_estimators()``, whose package walk
    imports every sub-package, ``sklearn.externals.array_api_compat.torch`` included, and that one
    imports torch: 1.25 of the ~3 CPU-s the import costs here, in a process that trains no torch model.
    No estimator lives there (``all_estimators`` skips ``externals``) and the walk passes over a package
    that cannot be imported, so for the span of this import that one is marked absent; the trusted
    lists come out the same (``tests/unit/test_skops_import.py``), and the shim imports normally after.
    """
    with _import_lock:
        guard = not ({"skops.io", "torch", _SKLEARN_TORCH_SHIM} & sys.modules.keys())
        if guard:
            sys.modules[_SKLEARN_TORCH_SHIM] = None  # "import" of it raises ImportError, which the walk skips
        try:
            import skops.io
        finally:
            if guard:
                del sys.modules[_SKLEARN_TORCH_SHIM]
    return skops.io


def _log_model(model, framework: str):
    if framework == "torch":
        from runtime.training.trainers.torch_trainer import log_torch_model

        return log_torch_model(model)
    sio = import_skops_io()

    trusted = [t for t in sio.get_untrusted_types(data=sio.dumps(model)) if t.startswith("sklearn.")]
    return mlflow.sklearn.log_model(model, name="model", pip_requirements=PIP_REQUIREMENTS,
                                    serialization_format="skops", skops_trusted_types=trusted or None)


def load_champion(uri: str, name: str, framework: str = "sklearn"):
    """``(model, version)`` of the model under alias ``champion``, or ``None`` if there is none."""
    client = MlflowClient(uri)
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    with mlflow_scope(uri):
        if framework == "torch":
            from runtime.training.trainers.torch_trainer import load_torch_model

            return load_torch_model(f"models:/{name}@{CHAMPION}"), int(mv.version)
        import_skops_io()  # MLflow's skops flavour imports it: first here, without torch
        return mlflow.sklearn.load_model(f"models:/{name}@{CHAMPION}"), int(mv.version)


def register_model(tracker: Tracker, model, name: str, framework: str = "sklearn", *, beats_champion: bool,
                   has_champion: bool) -> dict:
    """Log ``model`` to the run, register a version, and set the alias the rule allows.

    Buffered metrics go first: if the server cannot take them, nothing is registered."""
    tracker.flush()
    try:
        with mlflow_scope(tracker.uri):
            with mlflow.start_run(run_id=tracker.run_id):
                info = _log_model(model, framework)
            mv = mlflow.register_model(info.model_uri, name)
        alias = None
        if not has_champion:
            alias = CHAMPION
        elif beats_champion:
            alias = CHALLENGER
        if alias:
            tracker.client.set_registered_model_alias(name, alias, mv.version)
    except MlflowException as exc:
        raise TrackingError(f"cannot register model {name!r} ({exc.message})", where="tracking",
                            fix="check the tracking store is reachable and supports the model registry (sqlite:// or a server)") from None
    return {"version": int(mv.version), "alias": alias}
