"""The planner's jobs file (YAML): validated with pydantic, turned into planner dataclasses.

Errors name the file, the field and the fix, as one :class:`SpecError`. See ``examples/portfolio.yaml``.

>>> spec = load_plan_spec("examples/portfolio.yaml")   # doctest: +SKIP
>>> spec.tz_name, [j.name for j in spec.jobs], spec.constraints.pool_workers   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.errors import DataError, SpecError
from runtime.windows.history import History
from runtime.windows.profile import (Forecast, ProfileConfig, WeeklyProfile, fit_weekly_profile, forecast_load,
                      horizon_end_epoch_s, zone)
from runtime.windows.placement import Blackout, JobRequest, Plan, PlanConstraints, PriceSchedule, estimate_duration_s, plan_windows

EXAMPLE = "examples/portfolio.yaml"
_FIXES = {
    "data_refresh": "write a quoted local time of day, e.g. data_refresh: '12:30'",
    "timezone": "use an IANA zone name, e.g. America/New_York",
    "hourly": "give 24 prices, one per local hour 00..23",
    "weekend_hourly": "give 24 prices, one per local hour 00..23",
    "start": "write an ISO-8601 timestamp, e.g. 1995-07-26T08:00:00-04:00",
    "end": "write an ISO-8601 timestamp after start",
    "deadline": "write an ISO-8601 timestamp, e.g. 1995-07-27T00:00:00-04:00",
    "not_before": "write an ISO-8601 timestamp",
    "jobs": "list at least one job with a unique name",
    "workers": "give the number of training workers the job needs, a whole number >= 1",
    "pool_workers": "give the training pool's size in workers, a whole number >= 1",
    "duration_minutes": "give the training time in minutes (> 0), without validation",
    "validation_minutes": "give the validation time in minutes (>= 0)",
    "cadence_days": "give a whole number of days >= 1, or leave it out for a one-off job",
    "max_load_rps": "give the serving load (requests per second) above which no window may start, > 0",
    "slot_minutes": "use 15 (or 5, 10, 30, 60)",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BlackoutModel(_Strict):
    name: str = "blackout"
    start: datetime
    end: datetime


class PricesModel(_Strict):
    hourly: list[float] = Field(min_length=24, max_length=24)
    weekend_hourly: Optional[list[float]] = Field(default=None, min_length=24, max_length=24)
    weight: float = Field(default=1.0, ge=0.0)
    currency: str = "USD"

    @field_validator("hourly", "weekend_hourly")
    @classmethod
    def _non_negative(cls, v: Optional[list[float]]) -> Optional[list[float]]:
        if v is not None and any(p < 0 for p in v):
            raise ValueError("prices must be >= 0")
        return v


class JobModel(_Strict):
    name: str = Field(min_length=1)
    duration_minutes: Optional[float] = Field(default=None, gt=0)
    past_durations_minutes: Optional[list[float]] = Field(default=None, min_length=1)
    mlflow_experiment: Optional[str] = None  # estimate from past FINISHED runs named '<name>-...'
    mlflow_tracking_uri: Optional[str] = None
    mlflow_filter: Optional[str] = None
    validation_minutes: float = Field(default=0.0, ge=0)
    workers: int = Field(default=1, ge=1)
    cadence_days: Optional[int] = Field(default=None, ge=1)
    data_refresh: Optional[time] = None
    not_before: Optional[datetime] = None
    deadline: Optional[datetime] = None

    @field_validator("data_refresh", mode="before")
    @classmethod
    def _time_of_day(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            # YAML 1.1 reads an unquoted 12:30 as the base-60 number 750: refuse rather than guess.
            raise ValueError(f"got the number {v}: YAML reads an unquoted time such as 12:30 as a number")
        return v

    @model_validator(mode="after")
    def _has_duration(self) -> "JobModel":
        if self.duration_minutes is None and self.past_durations_minutes is None and self.mlflow_experiment is None:
            raise ValueError("give duration_minutes, past_durations_minutes or mlflow_experiment")
        return self


class PlanFileModel(_Strict):
    timezone: str = "UTC"
    slot_minutes: int = Field(default=15, ge=1, le=60)
    quantile: float = Field(default=0.9, gt=0, le=1)
    pool_workers: int = Field(ge=1)
    max_load_rps: Optional[float] = Field(default=None, gt=0)
    blackouts: list[BlackoutModel] = Field(default_factory=list)
    prices: Optional[PricesModel] = None
    jobs: list[JobModel] = Field(min_length=1)

    @field_validator("slot_minutes")
    @classmethod
    def _divides_day(cls, v: int) -> int:
        if 1440 % v:
            raise ValueError("must divide a day (e.g. 5, 10, 15, 30, 60)")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> "PlanFileModel":
        names = [j.name for j in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names must be unique, got {names}")
        return self


@dataclass(frozen=True)
class PlanSpec:
    """Everything the planner needs besides history and the horizon."""

    source: str
    tz_name: str
    profile_config: ProfileConfig
    constraints: PlanConstraints
    jobs: tuple[JobRequest, ...]
    currency: str = "USD"


DurationsLookup = Callable[[JobModel], Sequence[float]]


def _epoch_in(moment: datetime | None, tz_name: str) -> float | None:
    """Aware datetimes keep their offset; naive ones are read on the plan's local clock."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=zone(tz_name))).timestamp()


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _spec_error(path: str, exc: ValidationError) -> SpecError:
    first = exc.errors()[0]
    loc = tuple(first.get("loc", ()))
    field = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    fix = _FIXES.get(field, f"see {EXAMPLE} for a valid file")
    if first.get("type") == "extra_forbidden":
        fix = f"remove or rename the unknown field '{field}' (see {EXAMPLE})"
    return SpecError(f"{_loc(loc)}: {first.get('msg', 'invalid')}{more}", where=path, fix=fix)


def past_run_durations_s(job: JobModel) -> list[float]:
    """Durations (s) of the job's past runs, from its FINISHED MLflow runs (named '<job>-<timestamp>'):
    one per completed job, the runs that ended with their window added to the run that finished it."""
    from mlflow import MlflowClient  # a dependency of the package: always there

    filter_string = job.mlflow_filter or f"attributes.run_name LIKE '{job.name}-%' AND attributes.status = 'FINISHED'"
    try:
        client = MlflowClient(job.mlflow_tracking_uri) if job.mlflow_tracking_uri else MlflowClient()
        experiment = client.get_experiment_by_name(job.mlflow_experiment)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], filter_string=filter_string, max_results=500,
                                  order_by=["attributes.start_time DESC"])
    except Exception as exc:  # MLflow raises many types; translate at the boundary
        raise DataError(f"MLflow search failed: {exc}", where=job.mlflow_tracking_uri or "MLflow",
                        fix="check mlflow_tracking_uri, mlflow_experiment and mlflow_filter") from exc
    timed = [(r.info.start_time, r.info.end_time, r.data.tags.get("headroom.status")) for r in runs
             if r.info.end_time and r.info.start_time]
    return durations_across_windows(sorted(timed))


def durations_across_windows(runs: Sequence[tuple[float, float, str | None]]) -> list[float]:
    """``(start_ms, end_ms, status)`` in time order -> seconds per completed job: a run whose status is
    ``window_ended`` carries its time into the job's next run; trailing ones (unfinished) are left out.

    >>> durations_across_windows([(0, 60_000, "window_ended"), (100_000, 130_000, None), (200_000, 210_000, None)])
    [90.0, 10.0]
    """
    out, carried = [], 0.0
    for start, end, status in runs:
        took = (end - start) / 1000.0
        if status == "window_ended":
            carried += took
            continue
        out.append(carried + took)
        carried = 0.0
    return out


def _duration_s(job: JobModel, lookup: DurationsLookup, where: str) -> float:
    if job.duration_minutes is not None:
        return job.duration_minutes * 60.0
    if job.past_durations_minutes is not None:
        return estimate_duration_s([m * 60.0 for m in job.past_durations_minutes])
    durations = list(lookup(job))
    if not durations:
        raise SpecError(f"job {job.name!r}: no finished MLflow runs in experiment {job.mlflow_experiment!r}",
                        where=where, fix="give duration_minutes until the job has run at least once")
    return estimate_duration_s(durations)


def load_plan_spec(path: str | Path, *, tz_override: str | None = None,
                   durations_lookup: DurationsLookup = past_run_durations_s) -> PlanSpec:
    """Read and validate a jobs file; ``tz_override`` (the CLI's ``--tz``) beats the file's ``timezone``."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpecError("jobs file not found", where=where, fix=f"pass an existing YAML file like {EXAMPLE}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", where=f"{where}{line}",
                        fix="check indentation and quoting on that line") from None
    if not isinstance(raw, dict):
        raise SpecError("expected a mapping with 'pool_workers' and 'jobs' at the top level", where=where,
                        fix=f"see {EXAMPLE}")
    try:
        model = PlanFileModel.model_validate(raw)
    except ValidationError as exc:
        raise _spec_error(where, exc) from None
    tz_name = tz_override or model.timezone
    try:
        zone(tz_name)
    except SpecError as exc:
        raise SpecError(exc.what, where=f"{where}: timezone" if not tz_override else "--tz", fix=exc.fix) from None
    jobs = []
    for i, job in enumerate(model.jobs):
        refresh = job.data_refresh
        jobs.append(JobRequest(
            name=job.name,
            duration_s=_duration_s(job, durations_lookup, f"{where}: jobs[{i}]"),
            validation_s=job.validation_minutes * 60.0,
            workers=job.workers,
            cadence_days=job.cadence_days,
            data_refresh_s_of_day=None if refresh is None else refresh.hour * 3600.0 + refresh.minute * 60 + refresh.second,
            not_before_epoch_s=_epoch_in(job.not_before, tz_name),
            deadline_epoch_s=_epoch_in(job.deadline, tz_name),
        ))
    blackouts = tuple(Blackout(b.name, _epoch_in(b.start, tz_name), _epoch_in(b.end, tz_name)) for b in model.blackouts)
    for i, b in enumerate(blackouts):
        if b.end_epoch_s <= b.start_epoch_s:
            raise SpecError(f"blackouts[{i}] ({b.name!r}): end is not after start", where=where,
                            fix="swap start and end, or give the blackout a positive length")
    prices = None if model.prices is None else PriceSchedule(
        tuple(model.prices.hourly), None if model.prices.weekend_hourly is None else tuple(model.prices.weekend_hourly))
    constraints = PlanConstraints(pool_workers=model.pool_workers, max_load_rps=model.max_load_rps, blackouts=blackouts,
                                  prices=prices, price_weight=model.prices.weight if model.prices else 1.0)
    config = ProfileConfig(slot_s=model.slot_minutes * 60.0, quantile=model.quantile)
    return PlanSpec(where, tz_name, config, constraints, tuple(jobs), model.prices.currency if model.prices else "USD")


@dataclass(frozen=True)
class PlanResult:
    profile: WeeklyProfile
    forecast: Forecast
    plan: Plan


def make_plan(history: History, spec: PlanSpec, start_epoch_s: float, horizon_days: float) -> PlanResult:
    """Fit the profile on ``history``, forecast ``horizon_days`` local days from ``start``, place ``spec``'s jobs.

    Only history before ``start`` is used, so a plan never peeks at the future it plans.

    >>> spec = load_plan_spec("examples/portfolio.yaml")                          # doctest: +SKIP
    >>> result = make_plan(read_history_csv("data/nasa-http-1995-07.csv"), spec,
    ...                    start_epoch_s=806_385_600.0, horizon_days=7)              # doctest: +SKIP
    """
    past = history.between(-float("inf"), start_epoch_s)
    if len(past.epoch_s) == 0:
        raise DataError("no history before the plan's start", where=history.source,
                        fix="pass --start after the history's first row, or more history")
    profile = fit_weekly_profile(past, spec.tz_name, spec.profile_config)
    horizon_s = horizon_end_epoch_s(start_epoch_s, horizon_days, spec.tz_name) - start_epoch_s
    forecast = forecast_load(profile, start_epoch_s, horizon_s)
    return PlanResult(profile, forecast, plan_windows(forecast, spec.jobs, spec.constraints))
