"""Moving model aliases safely: promote, roll back, abort a rollout -- each recorded in MLflow.

Aliases of a registered model (see :mod:`runtime.tracking.tracker`):

- ``champion`` -- what serves; never left unset once a model has one;
- ``challenger`` -- a candidate that beat the champion on the holdout, waiting for its rollout;
- ``previous-champion`` -- the version a promotion replaced: where ``rollback`` goes back to.

Every move sets the new alias before it drops an old one (MLflow moves an alias atomically), so a
crash between two calls leaves an extra alias behind, never a missing ``champion``. Each move tags the
versions it touched (``headroom.release.*``) and can be recorded as its own MLflow run.

>>> client = MlflowClient("sqlite:///mlflow.db")  # doctest: +SKIP
>>> promote(client, "demo-regressor")  # doctest: +SKIP
... # challenger -> champion, champion -> previous-champion
>>> rollback(client, "demo-regressor")  # doctest: +SKIP
... # previous-champion -> champion
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from runtime.errors import ReleaseError, TrackingError
from runtime.tracking.tracker import CHALLENGER, CHAMPION

PREVIOUS_CHAMPION = "previous-champion"
TAG = "headroom.release"


@dataclass(frozen=True)
class AliasMove:
    """One recorded release event: which version was champion before and after, and why."""

    name: str
    action: str  # promote | rollback | abort
    champion_before: int
    champion_after: int
    previous_champion: int | None  # the version aliased previous-champion after the move
    version: int  # the version the move is about (promoted, rolled back, or aborted)
    reason: str
    at: float

    def as_record(self) -> dict:
        return asdict(self)


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    """The version behind ``name@alias``, or None when the alias is not set (or the model does not exist)."""
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def current_champion(client: MlflowClient, name: str) -> int:
    _require_model(client, name)
    version = alias_version(client, name, CHAMPION)
    if version is None:
        raise ReleaseError(f"model {name!r} has no champion", where="registry",
                           fix="register a first version (a governed job does), or set the alias in MLflow")
    return version


def promote(client: MlflowClient, name: str, version: int | None = None, *, reason: str = "promoted by hand") -> AliasMove:
    """Make ``version`` (default: the challenger) champion; the old champion becomes previous-champion."""
    before = current_champion(client, name)
    if version is None:
        version = alias_version(client, name, CHALLENGER)
        if version is None:
            raise ReleaseError(f"model {name!r} has no challenger to promote", where="registry",
                               fix="pass --version N, or train a candidate that beats the champion")
    _require_version(client, name, version)
    if version == before:
        raise ReleaseError(f"version {version} of {name!r} is already champion", where="registry",
                           fix="pass another --version")
    _call(client.set_registered_model_alias, name, PREVIOUS_CHAMPION, before)  # first: the way back exists
    _call(client.set_registered_model_alias, name, CHAMPION, version)
    if alias_version(client, name, CHALLENGER) == version:
        _call(client.delete_registered_model_alias, name, CHALLENGER)
    move = AliasMove(name, "promote", before, version, before, version, reason, time.time())
    _tag(client, move)
    return move


def rollback(client: MlflowClient, name: str, *, reason: str = "rolled back by hand") -> AliasMove:
    """Point champion back at previous-champion (the version the last promotion replaced)."""
    before = current_champion(client, name)
    previous = alias_version(client, name, PREVIOUS_CHAMPION)
    if previous is None or previous == before:
        raise ReleaseError(f"model {name!r} has no previous-champion to roll back to", where="registry",
                           fix="roll back only after a promotion; or `headroom promote NAME --version N`")
    _call(client.set_registered_model_alias, name, CHAMPION, previous)
    _call(client.delete_registered_model_alias, name, PREVIOUS_CHAMPION)  # it is champion again
    move = AliasMove(name, "rollback", before, previous, None, before, reason, time.time())
    _tag(client, move)
    return move


def abort_rollout(client: MlflowClient, name: str, *, champion: int, challenger: int, reason: str) -> AliasMove:
    """A rollout breached its budget: champion is (again) the version it started from; the challenger loses
    its alias, so nothing retries it by accident. Its version keeps the reason as a tag."""
    before = current_champion(client, name)
    if before != champion:  # someone promoted mid-rollout: put back the version the rollout protected
        _call(client.set_registered_model_alias, name, CHAMPION, champion)
    if alias_version(client, name, CHALLENGER) == challenger:
        _call(client.delete_registered_model_alias, name, CHALLENGER)
    move = AliasMove(name, "abort", before, champion, alias_version(client, name, PREVIOUS_CHAMPION), challenger,
                     reason, time.time())
    _tag(client, move)
    return move


def record_move_run(uri: str, experiment: str, move: AliasMove) -> str:
    """Record a hand-made move as its own MLflow run (tags + ``release/event.json``); returns the run id."""
    from runtime.tracking.tracker import Tracker, mlflow_scope

    with mlflow_scope(uri):
        tracker = Tracker(uri, experiment, f"{move.action}-{move.name}")
        tracker.set_tags({f"{TAG}.action": move.action, f"{TAG}.model": move.name, f"{TAG}.version": move.version,
                          f"{TAG}.champion_before": move.champion_before, f"{TAG}.champion_after": move.champion_after,
                          f"{TAG}.reason": move.reason})
        _call(tracker.client.log_text, tracker.run_id, json.dumps(move.as_record(), indent=2), "release/event.json")
        tracker.end()
        return tracker.run_id


def _tag(client: MlflowClient, move: AliasMove) -> None:
    _call(client.set_model_version_tag, move.name, str(move.version), f"{TAG}.{move.action}",
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(move.at))} {move.reason}"[:5000])


def _require_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ReleaseError(f"no registered model named {name!r}", where="registry",
                           fix="check the name and --tracking-uri (the store the job registered into)") from None


def _require_version(client: MlflowClient, name: str, version: int) -> None:
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise ReleaseError(f"model {name!r} has no version {version}", where="registry",
                           fix="list versions in the MLflow UI and pass one that exists") from None


def _call(fn, *args):
    try:
        return fn(*args)
    except MlflowException as exc:
        raise TrackingError(f"MLflow refused {fn.__name__} ({exc.message})", where="registry",
                            fix="check the tracking store is reachable and writable") from None
