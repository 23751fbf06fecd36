"""The job spec: YAML in, a validated :class:`JobSpec` out, or one :class:`SpecError` line.

>>> spec = load_spec("jobs/demo.yaml", check_paths=False)  # from the repository root; data made by make demo
>>> spec.budget.max_workers
1

Errors name the file, the field and the fix, e.g.::

    jobs/x.yaml: budget.max_workers: Input should be greater than or equal to 1 (got 0)
      -- fix: set budget.max_workers to a whole number >= 1
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from runtime.errors import SpecError
from runtime.spec.factories import estimator_class, resolve_factory
from runtime.spec.governance import ChecklistSpec, Contact, CostSpec
from runtime.spec.release import ReleaseSpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Section):
    framework: Literal["sklearn", "torch"] = "sklearn"
    estimator: str = Field(description="sklearn: import path of an estimator class with partial_fit, e.g. "
                                       "sklearn.linear_model.SGDRegressor; torch: a model factory, e.g. examples.torch_models:make_mlp")
    params: dict[str, Any] = Field(default_factory=dict)
    classes: list[Any] | None = Field(default=None, description="all class labels (classifiers: partial_fit needs them up front)")
    warm_start: Literal["auto", "checkpoint", "champion", "none"] = "auto"

    @field_validator("estimator")
    @classmethod
    def _estimator_resolves(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("framework", "sklearn") == "sklearn":
            estimator_class(value)  # raises ValueError with the fix
        else:
            resolve_factory(value)
        return value


class DataSpec(_Section):
    path: str = Field(description="directory (or pyarrow.fs URI) of Parquet/CSV slices, read in name order")
    format: Literal["parquet", "csv"] = "parquet"
    target: str
    features: list[str] | None = None  # default: every column but target and id_column
    id_column: str | None = None  # a unique row id, used to prove exactly-once
    batch_rows: int = Field(default=256, ge=1, le=1_000_000)


class ValidationSpec(_Section):
    holdout: str = Field(description="a Parquet/CSV file with the same columns as the training slices")
    metric: Literal["r2", "neg_mse", "neg_mae", "accuracy", "f1", "neg_log_loss"] = "r2"
    min_improvement: float = 0.0  # candidate must beat the champion by at least this much
    min_score: float | None = None  # and score at least this on the holdout (the metric's own units)
    min_relative_improvement: float | None = Field(default=None, ge=0, description="and beat the champion by this fraction of its score")


class ProbeSpec(_Section):
    url: str = Field(description="a route of the serving application, through its proxy or load balancer")
    interval_s: float = Field(default=0.2, gt=0, le=10, description="one probe request this often (serving pays for each)")
    timeout_s: float = Field(default=1.0, gt=0)
    window_s: float = Field(default=1.0, gt=0, le=60, description="the slowest probe of this window joins the p99")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class ImpactSpec(_Section):
    """Guard the job's own effect on serving, not only the SLO (:mod:`runtime.control.law`)."""

    max_ratio: float = Field(gt=1, description="training may raise serving's latency quantile to this multiple of "
                                               "it without the job, e.g. 1.1")
    quantile: float = Field(default=0.9, gt=0, lt=1, description="the quantile compared, of the requests pooled on "
                                                                 "each side (a p99 of a few hundred is mostly noise)")
    min_requests: int = Field(default=200, ge=20, description="requests on each side before an impact is judged")
    every_s: float = Field(default=45.0, gt=0, description="serving without the job is measured, in a short pause "
                                                           "(MEASURING), at least this often and whenever the load moves")
    pause_s: float = Field(default=8.0, gt=0, description="that pause at most: settle_s, then min_requests or the rest")
    settle_s: float = Field(default=3.0, ge=0, description="requests that finish this soon after a pause, a resume or "
                                                           "a new rate are not counted: the pause's own work (checkpoint, "
                                                           "workers stopping) and Ray's ~1-s metrics lag")
    window_s: float = Field(default=20.0, gt=0, description="the requests at the current rate of the last window_s are pooled")
    load_band: float = Field(default=0.25, gt=0, le=1, description="requests without the job count at a load within "
                                                                   "this fraction of the load now")
    confidence: float = Field(default=0.8, ge=0.5, lt=1, description="shrink only for an impact above max_ratio with "
                                                                    "this one-sided confidence (each side's quantile of "
                                                                    "a few hundred requests is uncertain); above the "
                                                                    "ratio, not surely: hold the rate")
    noise: float = Field(default=0.12, ge=0, le=1, description="how far apart (SD of the log) two windows of one "
                                                               "load and one job read on this host, beyond each "
                                                               "side's sampling error: it widens the bound "
                                                               "(python -m benchmarks.standing_cost measures it)")

    @model_validator(mode="after")
    def _pause_measures(self) -> "ImpactSpec":
        if self.pause_s <= self.settle_s:
            raise ValueError(f"impact.pause_s ({self.pause_s:g}) must be longer than impact.settle_s "
                             f"({self.settle_s:g}): the pause must measure something after it settles")
        return self


class GPUSpec(_Section):
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, description="the serving GPUs (default: all)")


CALM_READ_S = 3.0  # serving.calm_read_s's default


class ServingSpec(_Section):
    telemetry: Literal["prometheus", "ray_serve", "promql", "host", "gpu"] = Field(
        default="prometheus", description="ray_serve: Ray Serve's own ingress (proxy) latency and queue, from every node's "
                                          "metrics endpoint; prometheus: a histogram on an exposition endpoint; "
                                          "promql: a query against Prometheus; host: this host's CPU; gpu: this node's "
                                          "GPU utilization (NVML)")
    url: str | None = Field(default=None, description="/metrics endpoint (prometheus; ray_serve: only this one, "
                                                      "else every Ray node's) or the Prometheus server (promql)")
    histogram: str = "serving_latency_seconds"
    unit: Literal["s", "ms"] = Field(default="s", description="the histogram's unit (prometheus) or the query's (promql)")
    labels: dict[str, str] = Field(default_factory=dict, description="exact-match label filter for the histogram's series, "
                                                                     "e.g. {application: my-app, route: /predict}")
    application: str | None = Field(default=None, description="ray_serve: the Serve application whose ingress to guard")
    in_flight: str | None = Field(default=None, description="a gauge of requests accepted and not yet answered "
                                                            "(ray_serve: the proxies' own, by default)")
    queue_limit: float | None = Field(default=None, gt=0, description="requests in flight at which the queue leaves "
                                                                      "no headroom (a leading signal; needs in_flight)")
    window_s: float = Field(default=2.0, ge=0, le=60, description="traffic behind each scraped p99 (prometheus, ray_serve)")
    query: str | None = None
    slo_p99_ms: float = Field(gt=0)
    capacity_rps: float | None = Field(default=None, gt=0)
    max_utilization: float = Field(default=0.85, gt=0, le=1)
    timeout_s: float = Field(default=1.0, gt=0)
    stale_after_s: float = Field(default=5.0, gt=0)
    calm_read_s: float | None = Field(default=None, ge=0, le=60, description="while nothing moves and every bound is "
                                      "far (latency and queue slack the law would grow on), read the serving side only "
                                      "this often: each read of a Ray node's metrics costs its agent ~40 ms of CPU (0: every "
                                      "refresh; default 3 s, less with a stale_after_s under 4 s)")
    probe: ProbeSpec | None = Field(default=None, description="an active probe on the users' path: fresher than any "
                                                              "histogram (ray_serve's refreshes every ~1 s)")
    impact: ImpactSpec | None = Field(default=None, description="hold training's own effect on serving's latency "
                                                                "within a ratio of it without the job, measured in short pauses")
    gpu: GPUSpec | None = Field(default=None, description="the serving GPUs' utilization (NVML, this node) joins the "
                                                          "load slack; latency stays the primary signal")
    utilization_query: str | None = Field(default=None, description="promql: load as a 0..1 fraction, e.g. "
                                                                    "max(DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"}) / 100")

    @model_validator(mode="after")
    def _source_complete(self) -> "ServingSpec":
        if self.telemetry in ("prometheus", "promql") and not self.url:
            raise ValueError(f"url is required when telemetry is {self.telemetry!r}")
        if self.telemetry == "promql" and not self.query:
            raise ValueError("query is required when telemetry is 'promql'")
        if self.telemetry == "ray_serve" and self.window_s < 1.5:
            raise ValueError("window_s must be at least 1.5 s with ray_serve (Ray refreshes Serve's metrics every ~1 s)")
        if self.queue_limit is not None and self.telemetry == "prometheus" and not self.in_flight:
            raise ValueError("queue_limit needs in_flight: the name of a gauge of requests in flight")
        if self.calm_read_s and self.calm_read_s + 1.0 >= self.stale_after_s:
            raise ValueError(f"calm_read_s {self.calm_read_s:g} must stay at least 1 s below stale_after_s "
                             f"{self.stale_after_s:g}: a reading kept that long would read as stale telemetry "
                             "(lower calm_read_s, 0 reads every refresh, or raise stale_after_s)")
        if self.impact is not None and self.telemetry not in ("prometheus", "ray_serve"):
            raise ValueError(f"impact needs a latency histogram; telemetry {self.telemetry!r} reads none "
                             "(use ray_serve or prometheus)")
        return self

    def calm_read(self) -> float:
        """``calm_read_s``, or its default: 3 s, kept a second below ``stale_after_s`` (0 under 1 s)."""
        if self.calm_read_s is not None:
            return self.calm_read_s
        return max(0.0, min(CALM_READ_S, self.stale_after_s - 1.0))

    def source_config(self) -> dict:
        """What the governor builds this job's telemetry source from (plain values: it crosses into the actor)."""
        return {"kind": self.telemetry, "url": self.url, "histogram": self.histogram, "unit": self.unit,
                "labels": dict(self.labels), "in_flight": self.in_flight, "application": self.application,
                "window_s": self.window_s, "query": self.query, "timeout_s": self.timeout_s,
                "stale_after_s": self.stale_after_s, "capacity_rps": self.capacity_rps,
                "probe": self.probe.model_dump() if self.probe else None,
                "gpu": self.gpu.model_dump() if self.gpu else None, "utilization_query": self.utilization_query}


class BudgetSpec(_Section):
    max_workers: int = Field(default=1, ge=1, le=64)
    max_rows_per_s: float = Field(default=1000.0, gt=0)
    poll_interval_s: float = Field(default=0.25, gt=0, le=60)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0, description="GPUs per worker slot (fractions allowed, as Ray "
                                                                  "allows); a worker trains on the GPU Ray assigned it")
    accelerator_policy: Literal["pause_first", "throttle"] | None = Field(
        default=None, description="pause_first: never THROTTLE, pause instead (the default when a worker holds a GPU: "
                                  "a duty-cycled GPU job still hurts inference's tail); throttle: as on a CPU")
    worker_sched: Literal["idle", "normal"] = Field(default="idle", description="idle: the job's workers and driver run "
                                                    "in Linux's SCHED_IDLE class, only on CPU nothing else wants (second line of defence)")
    worker_nice: int = Field(default=10, ge=0, le=19, description="workers and the driver lower their CPU priority by this much (second line of defence)")
    pin_cpus: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, description="host CPU ids kept for training: each worker pins itself "
                                                                 "to its share of them where the host allows (second line of defence)")
    governor_silence_s: float = Field(default=3.0, gt=0, description="a worker that cannot hear the governor this long pauses itself")
    park_s: float = Field(default=30.0, ge=0, description="a paused worker keeps its slot and warm process this long")
    worker_hung_s: float = Field(default=120.0, ge=0, description="a running worker the governor has not heard from "
                                 "(no heartbeat) this long loses its slot, which ends it, and a fresh one takes its place (0: never)")
    cooldown_s: float = Field(default=3.0, ge=0)
    holddown_s: float = Field(default=2.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _hung_default_above_silence(cls, data):
        # unset, the bound is 120 s or twice a longer silence bound (a spec written before it existed stays valid)
        if isinstance(data, dict) and "worker_hung_s" not in data:
            silence = data.get("governor_silence_s")
            if isinstance(silence, (int, float)) and not isinstance(silence, bool) and 2 * silence > 120:
                data = dict(data, worker_hung_s=2 * silence)
        return data

    @model_validator(mode="after")
    def _hung_above_silence(self):
        if 0 < self.worker_hung_s < 2 * self.governor_silence_s:
            raise ValueError(f"worker_hung_s ({self.worker_hung_s:g}) must be 0 (never) or at least twice "
                             f"governor_silence_s ({self.governor_silence_s:g}): a healthy worker's heartbeat may "
                             f"take up to the silence bound; raise worker_hung_s or lower governor_silence_s")
        return self

    @property
    def pause_first(self) -> bool:
        return self.accelerator_policy == "pause_first" or (self.accelerator_policy is None and self.gpus_per_worker > 0)


class CheckpointSpec(_Section):
    storage: str = ".headroom/checkpoints"  # local path or pyarrow.fs URI
    every_steps: int = Field(default=20, ge=1, description="steps per worker per round (a merge and a checkpoint); "
                                                           "with round_s, the least a round's shard holds")
    round_s: float = Field(default=0.0, ge=0, description="rounds by time: a worker stops its round after this many "
                                                          "seconds (0: rounds of every_steps). Each round costs a "
                                                          "state transfer, a merge and a write beside serving")
    keep: int = Field(default=3, ge=1)


class TrackingSpec(_Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "headroom"


class JobSpec(_Section):
    name: str
    priority: int = Field(default=0, ge=0, le=1000, description="jobs beside the same serving cluster share its headroom: "
                                                                 "higher priority gets workers first, equal priorities share")
    model: ModelSpec
    data: DataSpec
    validation: ValidationSpec
    serving: ServingSpec
    budget: BudgetSpec = BudgetSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    tracking: TrackingSpec = TrackingSpec()
    checklist: ChecklistSpec = ChecklistSpec()
    cost: CostSpec = CostSpec()
    owner: str | None = None
    contacts: list[Contact] = Field(default_factory=list)
    release: ReleaseSpec = ReleaseSpec()

    @model_validator(mode="after")
    def _gpu_needs_torch(self) -> "JobSpec":
        if self.budget.gpus_per_worker > 0 and self.model.framework != "torch":
            raise ValueError("budget.gpus_per_worker needs model.framework: torch (scikit-learn trains on the CPU)")
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):  # fullmatch: "$" alone would accept a trailing newline
            raise ValueError("must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return value


_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove it or check its spelling",
    "literal_error": "use one of the listed values",
    "value_error": "see the spec reference in README.md",
    "greater_than_equal": "raise the value",
    "greater_than": "raise the value",
    "less_than_equal": "lower the value",
}


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after")) or "(top level)"


def spec_from_dict(raw: Any, *, source: str = "<spec>") -> JobSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"expected a mapping of sections, got {type(raw).__name__}", where=source,
                        fix="write YAML with top-level keys name, model, data, validation, serving")
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _field_path(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r:.60})"
        fix = _FIXES.get(err["type"], "see the spec reference in README.md")
        more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
        raise SpecError(f"{field}: {message}{got}{more}", where=source, fix=fix) from None
    if spec.model.framework == "sklearn" and spec.model.classes is None and _is_classifier(spec.model.estimator):
        raise SpecError("model.classes: a classifier needs every class label up front for partial_fit",
                        where=source, fix="add model.classes, e.g. [0, 1]")
    return spec


def _is_classifier(path: str) -> bool:
    from sklearn.base import is_classifier

    try:
        return bool(is_classifier(estimator_class(path)()))
    except Exception:  # an estimator that cannot be built without arguments: let the trainer decide
        return False


def load_spec(path: str | Path, *, check_paths: bool = True, base_dir: str | Path | None = None) -> JobSpec:
    """Read and validate a YAML job spec. Relative paths resolve against the current directory
    (the uploaded working directory under ``ray job submit``), or against ``base_dir`` when given."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpecError("spec file not found", where=where, fix="pass the path of a YAML job spec")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        raise SpecError(f"not valid YAML ({getattr(exc, 'problem', exc)})", where=at, fix="check indentation and quoting") from None
    if base_dir is not None:
        if not Path(base_dir).is_dir():
            raise SpecError(f"--base-dir {str(base_dir)!r} is not a directory", where=where,
                            fix="pass the directory the spec's relative paths start from (e.g. --base-dir $PWD)")
        raw = absolute_paths(raw, Path(base_dir)) if isinstance(raw, dict) else raw
    spec = spec_from_dict(raw, source=where)
    if check_paths:
        check_data_paths(spec, source=where)
    return spec


def absolute_paths(raw: dict, base: Path) -> dict:
    """``raw`` (a spec as a dict) with its local relative paths made absolute against ``base``: data,
    holdout, checkpoint storage and a relative sqlite MLflow store. URIs are left alone."""
    import copy

    out = copy.deepcopy(raw)

    def fix(section: str, key: str) -> None:
        part = out.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
            part[key] = str((base / value).resolve())

    fix("data", "path")
    fix("validation", "holdout")
    fix("checkpoint", "storage")
    tracking = out.get("tracking")
    uri = tracking.get("uri") if isinstance(tracking, dict) else None
    if isinstance(uri, str) and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        tracking["uri"] = "sqlite:///" + str((base / uri[len("sqlite:///"):]).resolve())
    return out


def check_data_paths(spec: JobSpec, *, source: str) -> None:
    """Local data paths must exist before a job asks for a lease (URIs are checked when read)."""
    if "://" not in spec.data.path and not Path(spec.data.path).is_dir():
        raise SpecError(f"data.path: directory {spec.data.path!r} not found", where=source,
                        fix="point data.path at a directory of Parquet/CSV slices")
    if "://" not in spec.validation.holdout and not Path(spec.validation.holdout).is_file():
        raise SpecError(f"validation.holdout: file {spec.validation.holdout!r} not found", where=source,
                        fix="point validation.holdout at a Parquet/CSV file")
