"""Headroom: retrain models in the latency headroom of a live serving cluster.

>>> from runtime import load_spec, run_job  # doctest: +SKIP
>>> summary = run_job(load_spec("jobs/demo.yaml"))  # doctest: +SKIP
"""

from runtime.errors import CheckpointError, DataError, GovernorError, HeadroomError, SpecError, TelemetryError, TrackingError
from runtime.control.law import Directive, LawConfig, LawState, Level, Reason, decide
from runtime.control.sample import Sample

__all__ = [
    "CheckpointError", "DataError", "Directive", "GovernorError", "HeadroomError", "JobSpec", "LawConfig", "LawState",
    "Level", "Reason", "Sample", "SpecError", "TelemetryError", "TrackingError", "decide", "load_spec", "make_plan",
    "run_job", "spec_from_dict",
]


def __getattr__(name: str):
    # Ray, MLflow, pydantic and the planner's solver are imported only when asked for, so `import runtime`
    # stays light (the GPU benchmark runs the law and the torch trainer where none of them is installed).
    if name in ("JobSpec", "load_spec", "spec_from_dict"):
        from runtime.spec import job

        return getattr(job, name)
    if name == "run_job":
        from runtime.driver.job import run_job

        return run_job
    if name == "make_plan":
        from runtime.windows.plan import make_plan

        return make_plan
    raise AttributeError(name)
