"""From the router's raw records to the numbers the release gates judge (pure: no I/O).

The router (``examples/router.py``) leaves one record per request::

    {"seq": 12, "t": 1700000000.0, "request_id": "...", "served_by": "champion", "mirrored": True,
     "latency_ms": {"champion": 3.1, "challenger": 2.9}, "ok": {"champion": True, "challenger": True},
     "predictions": {"champion": [..], "challenger": [..]}}

plus feedback records ``{"seq", "request_id", "labels"}``. :func:`observe` turns the records of one
phase into a :class:`runtime.release.gates.Observation`; :func:`phase_summary` into the report's row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runtime.release.gates import Observation, Phase, agreement, feedback_metric, latency_stats, prediction_drift

CHAMPION, CHALLENGER = "champion", "challenger"


def role_stats(records: Iterable[dict], role: str, *, served_only: bool = True):
    """Latency and errors of ``role``: over the requests it served, or (``served_only=False``) every call it got."""
    latencies, errors = [], 0
    for r in records:
        if role not in r["latency_ms"] or (served_only and r["served_by"] != role):
            continue
        if r["ok"][role]:
            latencies.append(r["latency_ms"][role])
        else:
            errors += 1
    return latency_stats(latencies, errors)


def predictions(records: Iterable[dict], role: str, *, served_only: bool = True) -> list[float]:
    out: list[float] = []
    for r in records:
        preds = r["predictions"].get(role)
        if preds is not None and (not served_only or r["served_by"] == role):
            out.extend(preds)
    return out


def mirrored_pairs(records: Iterable[dict]) -> list[tuple[float, float]]:
    """(champion, challenger) prediction pairs of every mirrored request both models answered."""
    pairs: list[tuple[float, float]] = []
    for r in records:
        a, b = r["predictions"].get(CHAMPION), r["predictions"].get(CHALLENGER)
        if r["mirrored"] and a is not None and b is not None:
            pairs.extend(zip(a, b))
    return pairs


def labels_by_request(feedback: Iterable[dict]) -> dict[str, list[float]]:
    return {f["request_id"]: f["labels"] for f in feedback}


def _labelled(records: Iterable[dict], labels: dict[str, list[float]], role: str, mirrored_only: bool):
    ys, ps = [], []
    for r in records:
        preds, y = r["predictions"].get(role), labels.get(r["request_id"])
        if preds is None or y is None or len(y) != len(preds) or (mirrored_only and not r["mirrored"]):
            continue
        ys.extend(y)
        ps.extend(preds)
    return ys, ps


def observe(phase: Phase, records: Sequence[dict], labels: dict[str, list[float]], *, metric: str,
            tolerance: float, baseline_predictions: Sequence[float] = ()) -> Observation:
    """The :class:`Observation` of one phase.

    Shadow: the challenger's numbers are its mirrored calls, agreement and the feedback metric come from
    the same mirrored rows for both models (a fair comparison), drift is challenger vs champion there.
    Stages: each model's numbers are the requests it served; drift compares the challenger's predictions
    with ``baseline_predictions`` (the champion's in the shadow phase).
    """
    shadow = phase is Phase.SHADOW
    challenger_preds = predictions(records, CHALLENGER, served_only=not shadow)
    reference = predictions(records, CHAMPION) if shadow else baseline_predictions
    pairs = mirrored_pairs(records) if shadow else []
    y_champ, p_champ = _labelled(records, labels, CHAMPION, mirrored_only=shadow)
    y_chal, p_chal = _labelled(records, labels, CHALLENGER, mirrored_only=shadow)
    return Observation(
        champion=role_stats(records, CHAMPION),
        challenger=role_stats(records, CHALLENGER, served_only=not shadow),
        drift=prediction_drift(challenger_preds, reference),
        agreement=agreement(pairs, tolerance), pairs=len(pairs),
        metric_champion=feedback_metric(metric, y_champ, p_champ),
        metric_challenger=feedback_metric(metric, y_chal, p_chal),
        labelled=min(len(y_champ), len(y_chal)),
    )


def phase_summary(name: str, percent: float, obs: Observation) -> dict:
    """One row of the report's phase table."""
    return {"phase": name, "percent": percent,
            "champion_requests": obs.champion.requests, "champion_p50_ms": obs.champion.p50_ms,
            "champion_p99_ms": obs.champion.p99_ms, "challenger_requests": obs.challenger.requests,
            "challenger_p50_ms": obs.challenger.p50_ms, "challenger_p99_ms": obs.challenger.p99_ms,
            "challenger_error_rate": obs.challenger.error_rate, "drift": obs.drift, "agreement": obs.agreement,
            "pairs": obs.pairs, "metric_champion": obs.metric_champion, "metric_challenger": obs.metric_challenger,
            "labelled": obs.labelled}
