"""The one record that crosses from telemetry to the control law."""

from __future__ import annotations

from dataclasses import dataclass


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
