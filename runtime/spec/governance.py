"""Spec sections for governance: the pre-work checklist, the price of compute, and who is on call.

They live apart from :mod:`runtime.spec.job` so that module stays about running a job; :class:`JobSpec`
includes them with defaults, so specs written before governance existed keep working unchanged.

>>> ChecklistSpec().items
('data_fresh', 'schema', 'drift', 'harness')
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CheckItem = Literal["data_fresh", "schema", "drift", "harness"]
ALL_ITEMS: tuple[CheckItem, ...] = ("data_fresh", "schema", "drift", "harness")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChecklistSpec(_Section):
    """What must hold before a job may take a lease (see :mod:`runtime.governance.checklist`)."""

    items: tuple[CheckItem, ...] = Field(default=ALL_ITEMS, description="the checks to run, any of " + ", ".join(ALL_ITEMS))
    max_data_age_s: float | None = Field(default=None, gt=0, description="the newest slice must be younger than this (unset: not bounded)")
    reference: str | None = Field(default=None, description="Parquet/CSV file of reference data for drift and schema (default: the holdout)")
    psi_max: float = Field(default=0.25, gt=0, description="largest population stability index allowed per feature and slice")
    ks_stat_max: float | None = Field(default=0.2, gt=0, le=1, description="largest two-sample KS statistic allowed")
    ks_pvalue_min: float | None = Field(default=None, gt=0, lt=1, description="smallest KS p-value allowed (unset: not checked)")
    bins: int = Field(default=10, ge=2, le=100, description="quantile bins of the reference for the PSI")
    drift_sample_rows: int | None = Field(
        default=10_000, ge=1_000,
        description="rows of each new slice (and of the reference) that the drift item compares, evenly spaced "
                    "through it (unset: every row). The checklist runs before the lease, so its cost must not "
                    "grow with the data: at 10,000 rows a side the KS statistic's standard error is ~0.014, "
                    "against a bound of 0.2")

    @model_validator(mode="after")
    def _unique_items(self) -> "ChecklistSpec":
        if len(set(self.items)) != len(self.items):
            raise ValueError("items must not repeat")
        return self


class CostSpec(_Section):
    price_per_cpu_hour: float = Field(default=0.0, ge=0, description="price of one CPU-hour, for the post-mortem's cost line")
    currency: str = Field(default="USD", max_length=8)


class Contact(_Section):
    name: str = Field(min_length=1)
    role: str = Field(min_length=1, description="e.g. owner, on-call, model reviewer")
    channel: str = Field(min_length=1, description="where to reach them: a chat channel, pager or e-mail")
