"""Several jobs, one serving cluster: pool the law's budget, then divide it by priority.

Headroom belongs to the serving cluster, not to any one job: two jobs beside the same endpoint must
not each believe they may use all of it. So the governor runs the control law once per telemetry
source, on the *pooled* budget of the jobs that watch it (:func:`pooled_config`), and :func:`divide`
hands the result out:

- workers: higher ``priority`` first; jobs of equal priority take one worker each in turn (the
  earlier-registered job first), so they share fairly;
- rows/s: in the same order, to the jobs that got workers, in proportion to their workers and never
  above a job's own ``max_rows_per_s``; every job with a worker gets at least its floor rate.

A job left without a worker is paused with :attr:`Reason.PRIORITY`; its lease drains through the
same checkpoint-and-release path as any pause, so a higher-priority arrival takes workers from a
lower one without killing anything. When headroom shrinks, the pooled workers shrink and the
lowest-priority job is the first to lose its workers.

Pure: no Ray, no clocks.

>>> claims = [Claim("etl", priority=0, max_workers=2, max_rows_per_s=100),
...           Claim("fraud", priority=5, max_workers=1, max_rows_per_s=100)]
>>> divide(2, 150.0, claims)["fraud"]
Share(workers=1, rows_per_s=100.0)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from runtime.control.law import Directive, LawConfig, LawState, Level, Reason


@dataclass(frozen=True)
class Claim:
    job: str
    priority: int
    max_workers: int
    max_rows_per_s: float
    floor_rows_per_s: float = 0.0


@dataclass(frozen=True)
class Share:
    workers: int
    rows_per_s: float


def pooled_config(laws: list[LawConfig], pool_slots: int | None = None) -> LawConfig:
    """One law for the jobs beside one serving cluster: the most cautious of their serving limits,
    the sum of their budgets (workers capped by the pool's slots when known)."""
    if not laws:
        raise ValueError("pooled_config needs at least one job's law")
    workers = sum(law.max_workers for law in laws)
    if pool_slots is not None:
        workers = min(workers, pool_slots)
    queue_limits = [law.queue_limit for law in laws if law.queue_limit is not None]
    impacts = [law for law in laws if law.impact_max_ratio is not None]
    impact = {} if not impacts else dict(
        impact_max_ratio=min(law.impact_max_ratio for law in impacts),
        impact_quantile=max(law.impact_quantile for law in impacts),
        impact_min_requests=max(law.impact_min_requests for law in impacts),
        impact_every_s=min(law.impact_every_s for law in impacts),
        impact_pause_s=max(law.impact_pause_s for law in impacts),
        impact_settle_s=max(law.impact_settle_s for law in impacts),
        impact_window_s=max(law.impact_window_s for law in impacts),
        impact_load_band=min(law.impact_load_band for law in impacts),
        impact_confidence=min(law.impact_confidence for law in impacts),  # the least sure shrinks soonest
        impact_noise=min(law.impact_noise for law in impacts))
    return replace(laws[0], **impact,
                   slo_p99_ms=min(law.slo_p99_ms for law in laws),
                   max_utilization=min(law.max_utilization for law in laws),
                   queue_limit=min(queue_limits) if queue_limits else None,
                   pause_first=any(law.pause_first for law in laws),
                   stale_after_s=min(law.stale_after_s for law in laws),
                   calm_read_s=min(law.calm_read_s for law in laws),
                   cooldown_s=max(law.cooldown_s for law in laws),
                   holddown_s=max(law.holddown_s for law in laws),
                   max_workers=max(1, workers),
                   max_rows_per_s=sum(law.max_rows_per_s for law in laws),
                   min_rows_per_s=min(law.floor_rows_per_s for law in laws))


def divide(workers: int, rows_per_s: float, claims: list[Claim]) -> dict[str, Share]:
    """Split ``workers`` and ``rows_per_s`` among ``claims`` (given in registration order)."""
    tiers = sorted({c.priority for c in claims}, reverse=True)
    got = {c.job: 0 for c in claims}
    left = max(0, workers)
    for tier in tiers:
        members = [c for c in claims if c.priority == tier]
        while left > 0:
            hungry = [c for c in members if got[c.job] < c.max_workers]
            if not hungry:
                break
            for c in hungry[:left]:
                got[c.job] += 1
            left -= min(left, len(hungry))
    rows = {c.job: 0.0 for c in claims}
    rows_left = max(0.0, rows_per_s)
    for tier in tiers:
        members = [c for c in claims if c.priority == tier and got[c.job] > 0]
        rows_left = _fill(members, got, rows, rows_left)
    return {c.job: Share(got[c.job], max(rows[c.job], c.floor_rows_per_s) if got[c.job] else 0.0) for c in claims}


def _fill(members: list[Claim], weights: dict[str, int], rows: dict[str, float], amount: float) -> float:
    """Water-filling: ``amount`` in proportion to ``weights``, capped per job; returns what is left."""
    open_ = list(members)
    while open_ and amount > 1e-9:
        total = sum(weights[c.job] for c in open_)
        offer = {c.job: amount * weights[c.job] / total for c in open_}
        capped = [c for c in open_ if rows[c.job] + offer[c.job] >= c.max_rows_per_s]
        if not capped:
            for c in open_:
                rows[c.job] += offer[c.job]
            return 0.0
        for c in capped:
            amount -= c.max_rows_per_s - rows[c.job]
            rows[c.job] = float(c.max_rows_per_s)
            open_.remove(c)
    return amount


def job_directive(pooled: Directive, share: Share, law: LawConfig, previous: Level) -> Directive:
    """The directive one job gets from the pooled decision and its share of it."""
    if pooled.level is Level.PAUSE:
        return Directive(Level.PAUSE, 0, 0.0, pooled.reason, pooled.slack)
    if share.workers == 0:
        return Directive(Level.PAUSE, 0, 0.0, Reason.PRIORITY, pooled.slack)
    level = Level.RUN if share.rows_per_s >= law.max_rows_per_s else Level.THROTTLE
    reason = Reason.RESUME if previous is Level.PAUSE else pooled.reason
    return Directive(level, share.workers, share.rows_per_s, reason, pooled.slack)


def clamp_state(state: LawState, cfg: LawConfig) -> LawState:
    """The pooled budget shrinks when a job leaves or a node goes: never remember more than it allows."""
    return replace(state, workers=min(state.workers, cfg.max_workers), rows_per_s=min(state.rows_per_s, cfg.max_rows_per_s))
