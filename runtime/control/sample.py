"""The one record that crosses from telemetry to the control law."""

from __future__ import annotations

import math
from dataclasses import dataclass

Buckets = list[tuple[float, float]]  # (upper bound ``le``, cumulative count), sorted, ending at +Inf


@dataclass(frozen=True)
class Sample:
    """What the serving side looked like at ``time_s``.

    ``p99_ms`` and ``utilization`` are ``None`` when the source could not tell. ``in_flight`` is the
    number of requests accepted and not yet answered (the queue in front of the replicas, at the
    ingress), when the source reads it. ``error`` is set when the source failed (down, timeout,
    garbage, requests that stopped finishing); ``staleness_s`` is how old the newest real observation
    behind this sample is. The control law treats an error, a stale sample, or a sample with neither
    latency nor utilization as "no headroom" -- except an *idle* one: a successful read that saw no
    request at all is the most headroom there is.

    >>> Sample(time_s=10.0, p99_ms=12.5, rps=80.0, utilization=0.4).ok
    True
    >>> Sample(time_s=10.0, rps=0.0).idle
    True
    """

    time_s: float
    p99_ms: float | None = None
    rps: float | None = None
    utilization: float | None = None  # 0..1: load as a fraction of the serving side's capacity
    staleness_s: float = 0.0
    error: str | None = None
    in_flight: float | None = None
    counts: tuple | None = None  # the requests that finished since the previous reading, as cumulative
    # ((upper bound ms, count), ...) ending at +Inf (histogram sources; None on a reading that repeats the last)

    @property
    def idle(self) -> bool:
        """Read without error, and no request in the window: nothing to protect."""
        return self.error is None and self.rps == 0 and self.p99_ms is None and not self.in_flight

    @property
    def ok(self) -> bool:
        return self.error is None and (self.p99_ms is not None or self.utilization is not None or self.idle)

    def as_dict(self) -> dict:
        return {
            "time_s": self.time_s,
            "p99_ms": self.p99_ms,
            "rps": self.rps,
            "utilization": self.utilization,
            "staleness_s": self.staleness_s,
            "error": self.error,
            "in_flight": self.in_flight,
        }

    @classmethod
    def failed(cls, time_s: float, error: str, staleness_s: float = float("inf")) -> "Sample":
        return cls(time_s=time_s, staleness_s=staleness_s, error=error)


def sum_buckets(parts: list[Buckets | None]) -> Buckets | None:
    """Per-``le`` sum of histograms with one layout; ``None`` for no parts."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    total: dict[float, float] = {}
    for part in parts:
        for le, count in part:
            total[le] = total.get(le, 0.0) + count
    return sorted(total.items())


def quantile_from_buckets(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated as PromQL ``histogram_quantile`` does.

    Linear inside the bucket the rank falls in (the first bucket starts at 0); a rank in the +Inf
    bucket gives the highest finite bound. ``None`` when the histogram holds no observations.

    >>> quantile_from_buckets([(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)], 0.5)
    0.1
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        raise ValueError("a histogram needs at least one finite bucket and a +Inf bucket")
    bounds = [le for le, _ in ordered]
    counts: list[float] = []
    for _, count in ordered:  # scrapes are not atomic, so buckets can be out of order: clamp like PromQL
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, in_bucket = 0.0, counts[b]
    if b > 0:
        start, in_bucket, rank = bounds[b - 1], counts[b] - counts[b - 1], rank - counts[b - 1]
    if in_bucket <= 0:  # only for q == 0 with empty leading buckets
        return start
    return start + (bounds[b] - start) * (rank / in_bucket)
