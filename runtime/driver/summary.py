"""Pure helpers of the job driver: the law's configuration from a spec, and the run summary."""

from __future__ import annotations

import dataclasses
import time


from runtime.control.law import LawConfig
from runtime.control.reaction import reaction_stats


def law_config(spec) -> dict:
    """The control law's settings for ``spec``, as a plain dict (it crosses into the governor actor)."""
    cfg = LawConfig(slo_p99_ms=spec.serving.slo_p99_ms, max_workers=spec.budget.max_workers,
                    max_rows_per_s=spec.budget.max_rows_per_s, max_utilization=spec.serving.max_utilization,
                    queue_limit=spec.serving.queue_limit, pause_first=spec.budget.pause_first,
                    stale_after_s=spec.serving.stale_after_s, holddown_s=spec.budget.holddown_s,
                    cooldown_s=spec.budget.cooldown_s, calm_read_s=spec.serving.calm_read())
    impact = spec.serving.impact
    if impact is not None:
        cfg = dataclasses.replace(cfg, impact_max_ratio=impact.max_ratio, impact_quantile=impact.quantile,
                                  impact_min_requests=impact.min_requests, impact_every_s=impact.every_s,
                                  impact_pause_s=impact.pause_s, impact_settle_s=impact.settle_s,
                                  impact_window_s=impact.window_s, impact_load_band=impact.load_band,
                                  impact_confidence=impact.confidence, impact_noise=impact.noise)
    return dataclasses.asdict(cfg)


def expected_id_digest(dataset, id_column: str | None) -> tuple[int, int] | None:
    """Sum and sum of squares of every row id in the data: what exactly-once consumption must reproduce."""
    if not id_column:
        return None
    total, total_sq = 0, 0
    for sl in dataset.slices:
        ids = dataset.read(sl.base, sl.base + sl.rows).column(id_column).to_numpy().astype(object)
        total += int(ids.sum())
        total_sq += int((ids ** 2).sum())
    return total, total_sq


def build_summary(spec, truth, loop, record: dict, validation: dict, dataset, started_s: float, run_id: str) -> dict:
    consumed = len(truth.ledger)
    expected = expected_id_digest(dataset, spec.data.id_column)
    ids_ok = None
    if expected is not None and consumed == dataset.total_rows:
        ids_ok = (truth.counters["id_sum"], truth.counters["id_sq"]) == expected
    return {
        "job": spec.name,
        "status": "completed" if consumed == dataset.total_rows else "incomplete",
        "mlflow_run_id": run_id,
        "warm_start": truth.origin,
        "rows_total": dataset.total_rows,
        "rows_consumed": consumed,
        "rows_consumed_this_run": consumed - loop.rows_at_start,
        "rows_duplicated": truth.counters["rows_duplicated"],
        "row_ids_verified": ids_ok,
        "steps": truth.counters["steps"],
        "pauses": record.get("pauses", 0),
        "resumes": record.get("resumes", 0),
        "checkpoints": loop.checkpoints,
        "worker_crashes": loop.crashes,
        "workers_hung": record.get("workers_hung", 0),  # slots the governor took from workers gone silent (worker_hung_s)
        "reaction": reaction_stats(record.get("reactions_s", [])),
        # the part of it until every worker's last step ended: training took no CPU after that
        "stopped": reaction_stats(record.get("stops_s", [])),
        # before it: the reading that showed the loss taken -> the PAUSE decided (the telemetry's read)
        "read": reaction_stats(record.get("reads_s", [])),
        "validation": validation,
        "registered_version": validation.get("version"),
        "registered_alias": validation.get("alias"),
        "duration_s": round(time.time() - started_s, 2),
        "held": {"seconds": 0.0, "phases": []},  # the office's own record replaces it with the post-mortem
    }
