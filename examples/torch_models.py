"""Example model factories for ``model.framework: torch``.

A job spec names a factory, not a class, so that any architecture can be built from plain YAML params::

    model:
      framework: torch
      estimator: examples.torch_models:make_mlp
      params: {in_features: 8, hidden: 64, loss: mse, lr: 0.001}

>>> make_mlp(in_features=3, hidden=4)(__import__("torch").zeros(2, 3)).shape
torch.Size([2, 1])
"""

from __future__ import annotations

from torch import nn


def make_mlp(in_features: int = 8, hidden: int = 64, out_features: int = 1) -> nn.Module:
    """One hidden ReLU layer; ``out_features`` is 1 for regression/binary, the class count for cross-entropy."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))


def make_deep_mlp(in_features: int = 8, hidden: int = 256, layers: int = 3, out_features: int = 1) -> nn.Module:
    """``layers`` hidden ReLU layers of ``hidden`` units: heavy enough to keep an accelerator busy."""
    blocks: list[nn.Module] = []
    width = in_features
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, out_features))
