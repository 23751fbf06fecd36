"""Trainers: one class per framework, each turning batches into model updates and state into bytes."""

from __future__ import annotations

from .sklearn import SklearnTrainer, score

__all__ = ["SklearnTrainer", "make_trainer", "score"]


def make_trainer(model_spec, state: bytes | None = None, *, threads: int = 1, device: str = "cpu"):
    """A trainer for ``model_spec``, fresh or restored from ``state`` bytes (torch is imported only here);
    ``device`` is where a torch model trains ("cuda" when the worker holds a GPU)."""
    if model_spec.framework == "sklearn":
        return SklearnTrainer(model_spec, state)
    if model_spec.framework == "torch":
        from .torch_trainer import TorchTrainer

        return TorchTrainer(model_spec, state, threads=threads, device=device)
    raise ValueError(f"unknown framework {model_spec.framework!r}")  # the spec already refuses it


def average_states(model_spec, states: list[bytes], weights: list[float]) -> bytes:
    """Weighted parameter averaging (local SGD) of several workers' states."""
    if len(states) == 1:
        return states[0]
    if model_spec.framework == "torch":
        from .torch_trainer import average_states as average_torch

        return average_torch(states, weights)
    from .sklearn import average_models
    from .state import dumps, loads

    return dumps(average_models([loads(s) for s in states], weights))


def model_from_state(model_spec, state: bytes):
    """An object with ``predict`` (and ``predict_proba`` where it applies) for validation."""
    if model_spec.framework == "torch":
        from .torch_trainer import TorchModelWrapper

        return TorchModelWrapper.from_state(model_spec, state)
    from .state import loads

    return loads(state)


def state_from_model(model_spec, model) -> bytes:
    """Checkpoint bytes of a model loaded from MLflow (warm start from the champion)."""
    if model_spec.framework == "torch":
        from .torch_trainer import TorchTrainer

        return TorchTrainer.from_model(model_spec, model, threads=None).state_bytes()
    from .state import dumps

    return dumps(model)
