"""A trained torch model through a real MLflow store: log, register, alias, load by alias. No Ray."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runtime.errors import TrackingError
from runtime.training.trainers.torch_trainer import TorchTrainer, load_torch_model, log_torch_model

pytestmark = pytest.mark.integration


@pytest.fixture()
def tracking(tmp_path):
    import mlflow

    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield mlflow
    mlflow.set_tracking_uri(previous)


def _train(spec, batches: int = 40) -> TorchTrainer:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    trainer = TorchTrainer(spec, None)
    for _ in range(batches):
        x = rng.normal(size=(32, 8)).astype(np.float32)
        y = x[:, 0] > 0 if spec.classes else x @ np.linspace(-1, 1, 8) + 0.5
        trainer.fit_batch(x, np.asarray(y, dtype=np.float32 if not spec.classes else np.int64))
    return trainer


def _register_champion(mlflow, trainer: TorchTrainer, name: str) -> str:
    from mlflow import MlflowClient

    with mlflow.start_run():
        info = log_torch_model(trainer.model)
    version = mlflow.register_model(info.model_uri, name).version
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return f"models:/{name}@champion"


def test_logged_registered_champion_predicts_exactly_like_the_trained_model(tracking):
    spec = SimpleNamespace(estimator="examples.torch_models:make_mlp", params={"in_features": 8, "hidden": 32}, classes=None)
    trainer = _train(spec)
    champion = load_torch_model(_register_champion(tracking, trainer, "torch-regressor"))
    x = np.random.default_rng(5).normal(size=(100, 8)).astype(np.float32)  # a batch size the export never saw
    np.testing.assert_array_equal(champion.predict(x), trainer.predict(x))
    assert champion.predict(x).shape == (100,) and champion.n_features_in_ == 8

    # Warm start from the champion: same weights, fresh optimizer, training goes on.
    warm = TorchTrainer.from_model(spec, champion)
    np.testing.assert_array_equal(warm.predict(x), trainer.predict(x))
    assert isinstance(warm.fit_batch(x[:32], np.zeros(32, dtype=np.float32)), float)


def test_classifier_keeps_its_labels_and_probabilities(tracking):
    spec = SimpleNamespace(estimator="examples.torch_models:make_mlp", params={"in_features": 8, "loss": "bce"},
                           classes=[0, 1])
    trainer = _train(spec)
    champion = load_torch_model(_register_champion(tracking, trainer, "torch-classifier"))
    x = np.random.default_rng(6).normal(size=(50, 8)).astype(np.float32)
    np.testing.assert_array_equal(champion.predict(x), trainer.predict(x))
    np.testing.assert_array_equal(champion.predict_proba(x), trainer.model.predict_proba(x))
    assert list(champion.classes_) == [0, 1]


def test_logging_outside_a_run_is_a_tracking_error(tracking):
    spec = SimpleNamespace(estimator="examples.torch_models:make_mlp", params={"in_features": 8}, classes=None)
    with pytest.raises(TrackingError, match="no active MLflow run"):
        log_torch_model(_train(spec, batches=1).model)
