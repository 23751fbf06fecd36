"""Trainers: one class per framework, each turning batches into model updates and state into bytes."""

from __future__ import annotations

from .sklearn import SklearnTrainer, score

__all__ = ["SklearnTrainer", "make_trainer", "score"]


def make_trainer(model_spec, state: bytes | None = None):
    """A trainer for ``model_spec``, fresh or restored from ``state`` bytes."""
    if model_spec.framework == "sklearn":
        return SklearnTrainer(model_spec, state)
    raise ValueError(f"unknown framework {model_spec.framework!r}")  # the spec already refuses it
