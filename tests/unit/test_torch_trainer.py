"""The PyTorch trainer: learning, state round trips, averaging, safe loading. No Ray, no network."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runtime.errors import CheckpointError
from runtime.training.trainers import torch_trainer as tt
from runtime.training.trainers.torch_trainer import TorchModelWrapper, TorchTrainer, average_states, load_state

MLP = "examples.torch_models:make_mlp"


def spec(estimator: str = MLP, classes=None, **params) -> SimpleNamespace:
    """The lead's ModelSpec, duck-typed: only the fields the trainer reads."""
    return SimpleNamespace(estimator=estimator, params={"in_features": 4, "hidden": 16, **params}, classes=classes)


def linear_batches(n_batches: int, rows: int = 32, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    w = np.array([1.5, -2.0, 0.5, 1.0])
    out = []
    for _ in range(n_batches):
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        out.append((x, (x @ w + 0.3).astype(np.float32)))
    return out


def params_of(trainer: TorchTrainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.module.parameters()])


@pytest.fixture(autouse=True)
def _keep_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_fresh_mlp_learns_a_linear_target():
    torch.manual_seed(0)
    trainer = TorchTrainer(spec(lr=1e-2), None)
    losses = [trainer.fit_batch(x, y) for x, y in linear_batches(150)]
    assert all(isinstance(v, float) for v in losses)  # pre-update loss on every batch, the first included
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
    x, y = linear_batches(1, rows=256, seed=1)[0]
    assert trainer.predict(x).shape == (256,)
    assert np.mean((trainer.predict(x) - y) ** 2) < 0.1 * np.var(y)


def test_fit_batch_returns_the_loss_before_the_update():
    torch.manual_seed(0)
    trainer = TorchTrainer(spec(), None)
    x, y = linear_batches(1)[0]
    before = float(np.mean((trainer.predict(x) - y) ** 2))
    assert trainer.fit_batch(x, y) == pytest.approx(before, rel=1e-5)
    assert float(np.mean((trainer.predict(x) - y) ** 2)) < before


def test_state_round_trip_predicts_identically():
    torch.manual_seed(0)
    trainer = TorchTrainer(spec(), None)
    for x, y in linear_batches(5):
        trainer.fit_batch(x, y)
    restored = TorchTrainer(spec(), trainer.state_bytes())
    x, _ = linear_batches(1, seed=2)[0]
    np.testing.assert_array_equal(restored.predict(x), trainer.predict(x))
    assert restored.n_features_in == 4
    wrapper = TorchModelWrapper.from_state(spec(), trainer.state_bytes())
    np.testing.assert_array_equal(wrapper.predict(x), trainer.predict(x))


def test_optimizer_state_survives_so_interrupted_training_matches_uninterrupted():
    batches = linear_batches(10)
    torch.manual_seed(0)
    straight = TorchTrainer(spec(), None)
    for x, y in batches:
        straight.fit_batch(x, y)

    torch.manual_seed(0)
    first = TorchTrainer(spec(), None)
    for x, y in batches[:5]:
        first.fit_batch(x, y)
    blob = first.state_bytes()
    resumed = TorchTrainer(spec(), blob)
    for x, y in batches[5:]:
        resumed.fit_batch(x, y)
    assert torch.allclose(params_of(resumed), params_of(straight), rtol=0, atol=1e-6)

    # Without Adam's moments the run diverges: the check above really exercises the optimizer state.
    state = load_state(blob)
    state["optimizer"] = None
    buf = io.BytesIO()
    torch.save(state, buf)
    amnesiac = TorchTrainer(spec(), buf.getvalue())
    for x, y in batches[5:]:
        amnesiac.fit_batch(x, y)
    assert not torch.allclose(params_of(amnesiac), params_of(straight), rtol=0, atol=1e-6)


def test_spec_lr_wins_over_the_stored_one():
    trainer = TorchTrainer(spec(lr=1e-3), None)
    trainer.fit_batch(*linear_batches(1)[0])
    restored = TorchTrainer(spec(lr=5e-2), trainer.state_bytes())
    assert [g["lr"] for g in restored.optimizer.param_groups] == [5e-2]


def _trained_state(seed: int) -> bytes:
    torch.manual_seed(seed)
    trainer = TorchTrainer(spec(), None)
    for x, y in linear_batches(3, seed=seed):
        trainer.fit_batch(x, y)
    return trainer.state_bytes()


def test_average_of_identical_states_is_identity():
    blob = _trained_state(0)
    merged = load_state(average_states([blob, blob], [1.0, 1.0]))
    original = load_state(blob)
    for key, tensor in original["model"].items():
        assert torch.equal(merged["model"][key], tensor), key
    assert average_states([blob], [3.0]) == blob


def test_average_of_different_states_is_the_weighted_mean():
    a, b = _trained_state(0), _trained_state(1)
    sa, sb = load_state(a)["model"], load_state(b)["model"]
    mean = load_state(average_states([a, b], [1.0, 1.0]))["model"]
    weighted = load_state(average_states([a, b], [1.0, 3.0]))["model"]
    for key in sa:
        assert not torch.equal(sa[key], sb[key])
        torch.testing.assert_close(mean[key], (sa[key] + sb[key]) / 2, rtol=0, atol=1e-7)
        torch.testing.assert_close(weighted[key], 0.25 * sa[key] + 0.75 * sb[key], rtol=0, atol=1e-7)
    # The merged state is a working trainer state; its optimizer state is the first one's.
    merged_trainer = TorchTrainer(spec(), average_states([a, b], [1.0, 1.0]))
    assert merged_trainer.optimizer.state_dict()["state"][0]["step"] == load_state(a)["optimizer"]["state"][0]["step"]


def test_average_keeps_integer_buffers_from_the_first():
    def with_counter(blob: bytes, count: int) -> bytes:
        state = load_state(blob)
        state["model"]["counter"] = torch.tensor(count, dtype=torch.long)
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    merged = load_state(average_states([with_counter(_trained_state(0), 7), with_counter(_trained_state(1), 100)], [1, 1]))
    assert merged["model"]["counter"].item() == 7 and merged["model"]["counter"].dtype == torch.long


@pytest.mark.parametrize("states, weights", [([], []), ([b"x"], [1.0, 2.0]), ([b"a", b"b"], [0.0, 0.0]),
                                             ([b"a", b"b"], [-1.0, 2.0])])
def test_average_refuses_bad_weights(states, weights):
    with pytest.raises(ValueError, match="weight"):
        average_states(states, weights)


class Payload:  # any class outside torch's allow-list: weights_only must refuse to build it
    def __reduce__(self):
        return (print, ("this must never run",))


def test_state_with_an_arbitrary_pickled_object_is_refused(capsys):
    buf = io.BytesIO()
    torch.save({"format": tt.STATE_FORMAT, "estimator": MLP, "model": {}, "evil": Payload()}, buf)
    with pytest.raises(CheckpointError, match="refused"):
        TorchTrainer(spec(), buf.getvalue())
    with pytest.raises(CheckpointError):
        average_states([buf.getvalue(), buf.getvalue()], [1, 1])
    assert "must never run" not in capsys.readouterr().out


def test_torch_load_is_called_with_weights_only(monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    TorchTrainer(spec(), _trained_state(0))
    assert calls and all(c.get("weights_only") is True for c in calls)


@pytest.mark.parametrize("blob", [b"", b"not a torch file", None])
def test_garbage_or_foreign_state_is_a_checkpoint_error(blob):
    if blob is None:  # a valid torch file that is not ours
        buf = io.BytesIO()
        torch.save({"weight": torch.zeros(2)}, buf)
        blob = buf.getvalue()
    with pytest.raises(CheckpointError):
        TorchTrainer(spec(), blob)


def test_state_from_other_params_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="restore model.params"):
        TorchTrainer(SimpleNamespace(estimator=MLP, params={"in_features": 4, "hidden": 8}, classes=None), _trained_state(0))


@pytest.mark.parametrize("threads", [1, 2])
def test_set_num_threads_is_applied(threads):
    TorchTrainer(spec(), None, threads=threads)
    assert torch.get_num_threads() == threads


def test_dotted_factory_path_works_too():
    assert isinstance(TorchTrainer(spec("examples.torch_models.make_mlp"), None).module, torch.nn.Module)


@pytest.mark.parametrize("path", ["examples.torch_models:no_such_factory", "no_such_package.models:make", "make_mlp",
                                  "examples.torch_models.nope"])
def test_bad_factory_path_raises_value_error_naming_it(path):
    with pytest.raises(ValueError, match=path.replace(".", r"\.")):
        TorchTrainer(spec(path), None)


def test_factory_that_returns_no_module_is_refused():
    with pytest.raises(ValueError, match="not an nn.Module"):
        TorchTrainer(SimpleNamespace(estimator="builtins:dict", params={}, classes=None), None)


@pytest.mark.parametrize("params, field", [({"loss": "hinge"}, "loss"), ({"optimizer": "NoSuchOpt"}, "optimizer"),
                                           ({"optimizer": "Tensor"}, "optimizer")])
def test_bad_training_settings_name_the_field(params, field):
    with pytest.raises(ValueError, match=f"model.params.{field}"):
        TorchTrainer(spec(**params), None)


def test_wrong_input_width_names_the_shape():
    with pytest.raises(ValueError, match=r"\(3, 7\)"):
        TorchTrainer(spec(), None).fit_batch(np.zeros((3, 7)), np.zeros(3))


def test_cross_entropy_with_string_classes():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    trainer = TorchTrainer(spec(classes=["b", "a", "c"], loss="cross_entropy", out_features=3, lr=1e-2), None)
    for _ in range(150):
        x = rng.normal(size=(32, 4)).astype(np.float32)
        trainer.fit_batch(x, np.array(["a", "b", "c"])[np.argmax(x[:, :3], axis=1)])
    x = rng.normal(size=(200, 4)).astype(np.float32)
    assert np.mean(trainer.predict(x) == np.array(["a", "b", "c"])[np.argmax(x[:, :3], axis=1)]) > 0.85
    proba = trainer.model.predict_proba(x)
    assert proba.shape == (200, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert list(trainer.model.classes_) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="not in model.classes"):
        trainer.fit_batch(x[:2], np.array(["a", "z"]))


def test_bce_binary_classifier():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    trainer = TorchTrainer(spec(classes=[0, 1], loss="bce", lr=1e-2), None)
    for _ in range(150):
        x = rng.normal(size=(32, 4)).astype(np.float32)
        trainer.fit_batch(x, (x[:, 0] > 0).astype(int))
    x = rng.normal(size=(200, 4)).astype(np.float32)
    assert np.mean(trainer.predict(x) == (x[:, 0] > 0)) > 0.9
    assert trainer.model.predict_proba(x).shape == (200, 2)
    with pytest.raises(ValueError, match="exactly 2 classes"):
        TorchTrainer(spec(classes=[0, 1, 2], loss="bce"), None)


def test_predict_uses_eval_mode_and_training_uses_train_mode():
    dropout_spec = SimpleNamespace(estimator="tests.unit.test_torch_trainer:make_dropout_net", params={}, classes=None)
    trainer = TorchTrainer(dropout_spec, None)
    x = np.ones((8, 4), dtype=np.float32)
    np.testing.assert_array_equal(trainer.predict(x), trainer.predict(x))  # dropout off when predicting
    trainer.fit_batch(x, np.ones(8))
    assert trainer.module.training


def make_dropout_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 1))
