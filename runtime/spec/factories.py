"""What a spec names by import path: a scikit-learn estimator class, or a PyTorch model factory.

Plain ``importlib``, no pydantic and no torch: the trainers resolve the same names on machines that
have neither the spec's validation library nor (for scikit-learn) PyTorch.

>>> estimator_class("sklearn.linear_model.SGDRegressor").__name__
'SGDRegressor'
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

def estimator_class(path: str) -> type:
    """Import ``package.module.Class`` and check it can learn incrementally."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not an import path like sklearn.linear_model.SGDRegressor")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, TypeError, ValueError):
        raise ValueError(f"cannot import estimator {path!r}: check the spelling of the module and class") from None
    if not callable(getattr(cls, "partial_fit", None)):
        raise ValueError(f"{path!r} has no partial_fit, so it cannot be updated incrementally "
                         "(use e.g. SGDRegressor, SGDClassifier, MLPRegressor, MultinomialNB)")
    return cls

def resolve_factory(path: str) -> Callable[..., Any]:
    """Import a torch model factory ``package.module:make_model`` (or the dotted form); ``ValueError``
    names the path. Plain importlib: the spec checks it without importing torch."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"model.estimator: {path!r} is not an import path like examples.torch_models:make_mlp")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model.estimator: cannot import model factory {path!r} ({exc})") from None
    if not callable(obj):
        raise ValueError(f"model.estimator: {path!r} is not callable; name a function that returns a torch.nn.Module")
    return obj
