"""The validation gate: candidate and champion evaluated on the same holdout by MLflow, judged by MLflow.

Both models are evaluated with ``mlflow.models.evaluate`` (its default evaluator logs the standard
regressor/classifier metric set) plus the spec's own metric (``validation.metric``, greater is better,
defined exactly as :func:`runtime.training.trainers.sklearn.score`) as an extra metric, ``holdout_<metric>``.
The candidate is evaluated inside the job's run, the champion in a child run beside it. The
decision is ``mlflow.validate_evaluation_results`` with one ``MetricThreshold`` built from the spec:

- ``validation.min_score`` -> ``threshold`` (absolute),
- ``validation.min_improvement`` -> ``min_absolute_change`` over the champion,
- ``validation.min_relative_improvement`` -> ``min_relative_change`` over the champion;
- with none of the last two, the candidate must still score at least the champion's score.

Without a champion only the absolute bound applies (the first version becomes champion if it passes).

>>> thresholds_for(spec.validation, has_champion=True)  # doctest: +SKIP
{'holdout_r2': MetricThreshold(...)}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import MetricThreshold, make_metric
from mlflow.models.evaluation.validation import ModelValidationFailedException

# Imported now, on the thread that imports this module, not at the first evaluate(): that first import
# registers MLflow's evaluators through its post-import hooks under a global lock, and a thread of the
# caller importing at the same moment (an HTTP client, a load generator) could deadlock with it.
import mlflow.models.evaluation.evaluator_registry  # noqa: E402,F401

from runtime.tracking.tracker import mlflow_scope
from runtime.training.trainers.sklearn import PREDICTION_SCORERS, score

log = logging.getLogger("headroom.gate")
_EVALUATOR_CONFIG = {"log_model_explainability": False, "log_explainer": False}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    metric: str  # the gated metric's MLflow name, holdout_<validation.metric>
    candidate: float
    champion: float | None
    candidate_metrics: dict  # everything MLflow's evaluator computed for the candidate
    champion_metrics: dict
    reasons: str  # MLflow's failure message, "" when passed
    thresholds: dict  # the MetricThreshold's fields, for the summary and the post-mortem


def metric_name(validation) -> str:
    return f"holdout_{validation.metric}"


def thresholds_for(validation, *, has_champion: bool) -> dict[str, MetricThreshold]:
    """The spec's bounds as MLflow thresholds on ``holdout_<metric>`` (empty: nothing to check)."""
    absolute = None
    relative = None
    if has_champion:
        absolute = validation.min_improvement if validation.min_improvement > 0 else None
        relative = validation.min_relative_improvement or None
        if absolute is None and relative is None:
            relative = 0.0  # "at least as good as the champion": a relative change of at least zero
    if validation.min_score is None and absolute is None and relative is None:
        return {}
    return {metric_name(validation): MetricThreshold(threshold=validation.min_score, min_absolute_change=absolute,
                                                     min_relative_change=None if relative is None else float(relative),
                                                     greater_is_better=True)}


def evaluate_model(model, x: np.ndarray, y: np.ndarray, validation, *, classifier: bool, feature_names: list[str]):
    """``mlflow.models.evaluate`` of ``model``'s holdout predictions, logged to the active run."""
    data = pd.DataFrame(x, columns=feature_names)
    data["target"] = y
    data["prediction"] = np.asarray(model.predict(x)).ravel()
    spec_metric = make_metric(eval_fn=lambda predictions, targets, metrics: _spec_score(validation.metric, model, x, targets, predictions),
                              greater_is_better=True, name=metric_name(validation))
    return mlflow.models.evaluate(data=data, targets="target", predictions="prediction",
                                  model_type="classifier" if classifier else "regressor",
                                  extra_metrics=[spec_metric], evaluator_config=_EVALUATOR_CONFIG)


def _spec_score(metric: str, model, x, targets, predictions) -> float:
    """The spec's metric on the targets and predictions MLflow passes (all rows, or one when it tries the
    metric on the first row); only log loss needs the model again, for probabilities. A score that one
    row cannot define (r2) is NaN on MLflow's first-row try, not a warning from scikit-learn."""
    if metric == "r2" and len(targets) < 2:
        return float("nan")
    if metric == "neg_log_loss":
        return score(metric, model, x[:len(targets)], np.asarray(targets))
    return float(PREDICTION_SCORERS[metric](np.asarray(targets), np.asarray(predictions)))


def run_gate(candidate, champion, champion_version: int | None, x, y, *, validation, classifier: bool,
             feature_names: list[str], tracking_uri: str, run_id: str) -> GateResult:
    """Evaluate both models on ``(x, y)`` and apply the spec's thresholds with MLflow's validator."""
    with mlflow_scope(tracking_uri), mlflow.start_run(run_id=run_id) as parent:
        cand = evaluate_model(candidate, x, y, validation, classifier=classifier, feature_names=feature_names)
        champ = None
        if champion is not None:
            with mlflow.start_run(run_name=f"holdout-champion-v{champion_version}", nested=True,
                                  experiment_id=parent.info.experiment_id):
                mlflow.set_tag("headroom.evaluated", f"champion v{champion_version}")
                champ = evaluate_model(champion, x, y, validation, classifier=classifier, feature_names=feature_names)
    thresholds = thresholds_for(validation, has_champion=champion is not None)
    reasons = ""
    if thresholds:
        try:
            mlflow.validate_evaluation_results(thresholds, cand, champ)
        except ModelValidationFailedException as exc:
            reasons = exc.message
    name = metric_name(validation)
    t = thresholds.get(name)
    return GateResult(passed=not reasons, metric=name, candidate=float(cand.metrics[name]),
                      champion=float(champ.metrics[name]) if champ else None,
                      candidate_metrics=_plain(cand.metrics), champion_metrics=_plain(champ.metrics) if champ else {},
                      reasons=reasons,
                      thresholds={"threshold": t.threshold, "min_absolute_change": t.min_absolute_change,
                                  "min_relative_change": t.min_relative_change} if t else {})


def _plain(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.number))}
