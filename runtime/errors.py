"""One exception tree for everything Headroom raises on purpose.

Every error a user can cause carries three things: what went wrong, where (file, field, URL) and how
to fix it. The CLI prints ``str(error)`` as one line and exits non-zero; nothing else leaks a
traceback from deep inside a library.
"""

from __future__ import annotations


class HeadroomError(Exception):
    """Base class: ``what`` (required), ``where`` and ``fix`` (optional) make up the message."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return " -- ".join(parts)

    def __reduce__(self):  # keep the keyword arguments across Ray's pickling
        return (_rebuild, (type(self), self.what, self.where, self.fix))


def _rebuild(cls, what, where, fix):
    return cls(what, where=where, fix=fix)


class SpecError(HeadroomError):
    """A job spec (YAML) is missing, malformed or inconsistent."""


class DataError(HeadroomError):
    """Input data (slices, holdout, history) is missing or unreadable."""


class TelemetryError(HeadroomError):
    """A telemetry source answered nothing usable (never raised out of a source's ``sample``)."""


class CheckpointError(HeadroomError):
    """A checkpoint could not be written, or no valid one could be read."""


class TrackingError(HeadroomError):
    """MLflow refused an operation (registration, alias, artifact)."""


class GovernorError(HeadroomError):
    """The governor is unreachable or refused a request."""


class ReleaseError(HeadroomError):
    """A release step (promote, rollback, rollout) cannot proceed: no challenger, nothing to roll back to."""
