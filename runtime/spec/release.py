"""The job spec's ``release`` section: shadow test, stages and risk budget for ``headroom rollout``.

Kept apart from :mod:`runtime.spec.job` (which embeds it as ``JobSpec.release``) so that the release
plan can be read and tested alone: ``ReleaseSpec.model_validate({...})``. Every field has a default,
so specs written before the section existed keep working. The rules are in :mod:`runtime.release.gates`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _ReleaseSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShadowSpec(_ReleaseSection):
    fraction: float = Field(default=0.2, ge=0, le=1, description="share of live requests mirrored to the challenger")
    duration_s: float = Field(default=60.0, ge=0, description="shadow phase length (0: no shadow phase)")
    min_agreement: float | None = Field(default=None, ge=0, le=1, description="reject below this prediction agreement")
    agreement_tolerance: float = Field(default=0.1, ge=0, description="|champion - challenger| within this agrees (0: exact)")
    max_metric_drop: float = Field(default=0.01, ge=0, description="labelled feedback: challenger may trail by this much")


class StageSpec(_ReleaseSection):
    percent: float = Field(gt=0, le=100, description="share of live traffic the challenger serves")
    hold_s: float = Field(ge=0, description="how long the stage holds before it may advance")


class RiskBudgetSpec(_ReleaseSection):
    max_p99_increase_ratio: float = Field(default=0.5, ge=0, description="challenger p99 may exceed the baseline by this ratio...")
    max_p99_increase_ms: float = Field(default=5.0, ge=0, description="...or by this many ms, whichever allows more")
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_prediction_drift: float = Field(default=0.3, gt=0, le=1, description="Kolmogorov-Smirnov statistic vs the champion")
    min_requests: int = Field(default=20, ge=1, description="challenger requests before a phase is judged")
    max_wait_s: float = Field(default=120.0, ge=0, description="extra time a phase may wait for min_requests")


class ReleaseSpec(_ReleaseSection):
    shadow: ShadowSpec = ShadowSpec()
    stages: tuple[StageSpec, ...] = (StageSpec(percent=5, hold_s=60), StageSpec(percent=25, hold_s=120),
                                     StageSpec(percent=100, hold_s=120))
    risk_budget: RiskBudgetSpec = RiskBudgetSpec()
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)

    @field_validator("stages")
    @classmethod
    def _stages_climb_to_100(cls, stages: tuple[StageSpec, ...]) -> tuple[StageSpec, ...]:
        percents = [s.percent for s in stages]
        if not percents or percents[-1] != 100 or any(b <= a for a, b in zip(percents, percents[1:])):
            raise ValueError(f"stage percents must rise strictly and end at 100 (got {percents})")
        return stages
