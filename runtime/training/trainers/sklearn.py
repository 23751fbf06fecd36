"""Incremental scikit-learn training through ``partial_fit``; state through :mod:`.state`."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm
from sklearn.base import is_classifier

from runtime.spec.factories import estimator_class
from .state import dumps, loads


class SklearnTrainer:
    """Wraps any estimator with ``partial_fit``.

    >>> from runtime.spec.job import ModelSpec
    >>> t = SklearnTrainer(ModelSpec(estimator="sklearn.linear_model.SGDRegressor"))
    >>> t.fit_batch(np.ones((4, 2)), np.ones(4)) is None  # no score before the first update
    True
    """

    framework = "sklearn"

    def __init__(self, model_spec, state: bytes | None = None):
        self.spec = model_spec
        self.model = loads(state) if state is not None else estimator_class(model_spec.estimator)(**model_spec.params)
        self.fitted = state is not None
        self._classes = np.asarray(model_spec.classes) if model_spec.classes is not None else None

    def fit_batch(self, x: np.ndarray, y: np.ndarray) -> float | None:
        """Test-then-train: score the batch with the current model, then update on it."""
        before = self._batch_loss(x, y) if self.fitted else None
        if self._classes is not None and is_classifier(self.model):
            self.model.partial_fit(x, y, classes=self._classes)
        else:
            self.model.partial_fit(x, y)
        self.fitted = True
        return before

    def _batch_loss(self, x, y) -> float:
        pred = self.model.predict(x)
        if is_classifier(self.model):
            return float(np.mean(pred != y))  # error rate
        return float(np.mean((pred - y) ** 2))  # MSE

    def park(self) -> None:
        """Paused: nothing to give back on the CPU (the torch trainer frees its GPU cache here)."""

    def state_bytes(self) -> bytes:
        return dumps(self.model)


# Metrics on predictions (greater is better); neg_log_loss needs probabilities, see score()
PREDICTION_SCORERS = {
    "r2": skm.r2_score,
    "neg_mse": lambda y, p: -skm.mean_squared_error(y, p),
    "neg_mae": lambda y, p: -skm.mean_absolute_error(y, p),
    "accuracy": skm.accuracy_score,
    "f1": lambda y, p: skm.f1_score(y, p, average="macro"),
}


def score(metric: str, model, x: np.ndarray, y: np.ndarray) -> float:
    """Holdout score, greater is better for every metric name."""
    if metric == "neg_log_loss":
        return -float(skm.log_loss(y, model.predict_proba(x), labels=getattr(model, "classes_", None)))
    return float(PREDICTION_SCORERS[metric](y, model.predict(x)))


def average_models(models: list, weights: list[float]):
    """Weighted parameter averaging (local SGD) of same-shaped models; the first one is the template.

    Works for linear models (``coef_``/``intercept_``) and MLPs (``coefs_``/``intercepts_``); other
    estimators cannot be averaged and must run with one worker.
    """
    if len(models) == 1:
        return models[0]
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out = models[0]
    if hasattr(out, "coefs_"):
        out.coefs_ = [sum(wi * m.coefs_[k] for wi, m in zip(w, models)) for k in range(len(out.coefs_))]
        out.intercepts_ = [sum(wi * m.intercepts_[k] for wi, m in zip(w, models)) for k in range(len(out.intercepts_))]
    elif hasattr(out, "coef_"):
        out.coef_ = sum(wi * m.coef_ for wi, m in zip(w, models))
        out.intercept_ = sum(wi * m.intercept_ for wi, m in zip(w, models))
    else:
        raise ValueError(f"{type(out).__name__} has no coefficients to average; run it with budget.max_workers: 1")
    return out


def can_average(estimator_path: str) -> bool:
    cls = estimator_class(estimator_path)
    from sklearn.linear_model._stochastic_gradient import BaseSGD
    from sklearn.neural_network._multilayer_perceptron import BaseMultilayerPerceptron

    return issubclass(cls, (BaseSGD, BaseMultilayerPerceptron)) or hasattr(cls, "coef_")
