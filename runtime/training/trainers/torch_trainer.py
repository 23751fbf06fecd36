"""Incremental PyTorch training: a model factory, an optimizer, and state as ``torch.save`` bytes.

The spec names a *factory* (``package.module:make_model`` or dotted) called with ``model.params``
less the keys ``optimizer`` (a ``torch.optim`` name, default ``Adam``), ``lr`` (default 1e-3) and
``loss`` (``mse`` | ``cross_entropy`` | ``bce``, default ``mse``). State bytes hold the model's and
optimizer's state dicts, read back with ``torch.load(weights_only=True)``: tensors and containers
only, so a checkpoint cannot run code; the factory to import comes from the spec, never the bytes.

>>> from types import SimpleNamespace
>>> spec = SimpleNamespace(estimator="examples.torch_models:make_mlp", params={"in_features": 2}, classes=None)
>>> t = TorchTrainer(spec, None)
>>> isinstance(t.fit_batch(np.ones((4, 2)), np.ones(4)), float)  # a fresh net can be scored: never None
True
>>> TorchTrainer(spec, t.state_bytes()).predict(np.ones((1, 2))).shape
(1,)
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.errors import CheckpointError, TrackingError
from runtime.spec.factories import resolve_factory

STATE_FORMAT = "headroom.torch/1"
_LOSS_FNS = {"mse": nn.MSELoss, "cross_entropy": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}
LOSSES = tuple(_LOSS_FNS)
# Explicit requirements: letting MLflow infer them costs ~10 s per logged model.
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy"]


@dataclass(frozen=True)
class TorchConfig:
    """The spec's fields, split into what the factory gets and what the training loop uses."""

    estimator: str
    factory_params: dict[str, Any]
    optimizer: str
    lr: float
    loss: str
    classes: np.ndarray | None  # sorted labels; output column i is classes[i]
    amp: str | None = None  # "bf16" or "fp16": mixed precision on an accelerator (autocast)


def parse_model_spec(model_spec) -> TorchConfig:
    """Duck-typed: needs ``estimator`` and ``params``; ``classes`` is optional."""
    params = dict(model_spec.params or {})
    optimizer, lr, loss = params.pop("optimizer", "Adam"), float(params.pop("lr", 1e-3)), params.pop("loss", "mse")
    amp = params.pop("amp", None)
    if amp not in (None, False, "bf16", "fp16"):
        raise ValueError(f"model.params.amp: {amp!r} is not bf16 or fp16 (or leave it out for full precision)")
    if loss not in LOSSES:
        raise ValueError(f"model.params.loss: {loss!r} is not one of {', '.join(LOSSES)}")
    opt_cls = getattr(torch.optim, str(optimizer), None)
    if not (isinstance(opt_cls, type) and issubclass(opt_cls, torch.optim.Optimizer)):
        raise ValueError(f"model.params.optimizer: {optimizer!r} is not an optimizer in torch.optim (e.g. Adam, SGD, AdamW)")
    labels = None if getattr(model_spec, "classes", None) is None else np.unique(np.asarray(model_spec.classes))
    if loss == "bce" and labels is not None and len(labels) != 2:
        raise ValueError(f"model.classes: loss 'bce' needs exactly 2 classes, got {len(labels)}")
    return TorchConfig(model_spec.estimator, params, str(optimizer), lr, loss, labels, amp or None)




def load_state(blob: bytes) -> dict:
    """Read state bytes with ``weights_only=True``; anything but tensors and containers is refused."""
    try:
        state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError for foreign globals, RuntimeError/EOFError for garbage
        raise CheckpointError(f"torch model state refused or unreadable ({type(exc).__name__}: {str(exc)[:200]})",
                              where="checkpoint", fix="clear the job's checkpoints if this one is foreign") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError("not a Headroom torch model state", where="checkpoint",
                              fix="clear the job's checkpoints (they were written by another framework or version)")
    return state


def _save(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class TorchModelWrapper:
    """An ``nn.Module`` with scikit-learn's ``predict``/``predict_proba``, for holdout scoring.
    ``toggles_mode`` is False for ``torch.export`` modules (from :func:`load_torch_model`): they were
    exported in eval mode and refuse ``.eval()``."""

    def __init__(self, module: nn.Module, loss: str = "mse", classes: np.ndarray | None = None,
                 n_features_in: int | None = None, *, toggles_mode: bool = True):
        self.module, self.loss, self.classes_, self.n_features_in_ = module, loss, classes, n_features_in
        self.toggles_mode = toggles_mode

    @classmethod
    def from_state(cls, model_spec, state: bytes) -> "TorchModelWrapper":
        return TorchTrainer(model_spec, state, threads=None).model

    def _forward(self, x: np.ndarray) -> torch.Tensor:
        if self.toggles_mode:  # dropout off, batch-norm running stats; fit_batch switches back to train mode
            self.module.eval()
        with torch.no_grad():
            return self.module(_as_tensor(x, self.module))

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self._forward(x)
        if self.loss == "mse":
            out = out.squeeze(-1) if out.ndim > 1 and out.shape[-1] == 1 else out
            return out.float().cpu().numpy()
        idx = (out.argmax(-1) if self.loss == "cross_entropy" else (out.reshape(len(out)) > 0).long()).cpu().numpy()
        return self.classes_[idx] if self.classes_ is not None else idx

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = self._forward(x)
        if self.loss == "cross_entropy":
            return torch.softmax(out.float(), -1).cpu().numpy()
        if self.loss == "bce":
            p = torch.sigmoid(out.float().reshape(len(out))).cpu().numpy()
            return np.column_stack([1.0 - p, p])
        raise AttributeError("a regression model (loss 'mse') has no predict_proba")


def _as_tensor(x: np.ndarray, module: nn.Module) -> torch.Tensor:
    param = next(module.parameters(), None)  # follow the model's dtype and device (float32 on CPU by default)
    if param is None:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=param.dtype).to(param.device, non_blocking=True)


class TorchTrainer:
    """Test-then-train: ``fit_batch`` returns the loss of the forward pass its update uses, i.e. *before*
    the update, on every batch (a fresh net predicts too: unlike SklearnTrainer, never ``None``).
    Restoring keeps the optimizer state (Adam's moments) unless the spec names another optimizer;
    the spec's ``lr`` wins over the stored one: the spec is the user's current intent.
    """

    framework = "torch"

    def __init__(self, model_spec, state: bytes | None = None, *, threads: int | None = 1, device: str = "cpu"):
        if threads is not None:  # None: leave the process's setting alone (e.g. scoring in the driver)
            torch.set_num_threads(max(1, int(threads)))  # the lease's CPUs, not the machine's
        self.config = parse_model_spec(model_spec)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("a GPU was asked for (budget.gpus_per_worker) but torch sees no CUDA device here")
        self.module = resolve_factory(self.config.estimator)(**self.config.factory_params)
        if not isinstance(self.module, nn.Module):
            raise ValueError(f"model.estimator: {self.config.estimator!r} returned {type(self.module).__name__}, not an nn.Module")
        self.module.to(self.device)
        self.optimizer = getattr(torch.optim, self.config.optimizer)(self.module.parameters(), lr=self.config.lr)
        self.n_features_in: int | None = None
        if state is not None:
            self._restore(load_state(state))
        self._loss_fn = _LOSS_FNS[self.config.loss]()

    def _restore(self, state: dict) -> None:
        if state.get("estimator") != self.config.estimator:
            raise CheckpointError(f"state was trained with {state.get('estimator')!r}, the spec names {self.config.estimator!r}",
                                  where="checkpoint", fix="restore model.estimator, or clear the job's checkpoints")
        try:
            self.module.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"state does not fit the model {self.config.estimator} builds ({str(exc)[:200]})",
                                  where="checkpoint", fix="restore model.params as they were, or clear the job's checkpoints") from None
        if state.get("optimizer") is not None and state.get("optimizer_name") == self.config.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr
        self.n_features_in = state.get("n_features")

    @classmethod
    def from_model(cls, model_spec, model: TorchModelWrapper, *, threads: int = 1) -> "TorchTrainer":
        """Warm start from a model's weights (e.g. the champion from MLflow), with a fresh optimizer."""
        trainer = cls(model_spec, threads=threads)
        trainer.module.load_state_dict(model.module.state_dict())
        trainer.n_features_in = model.n_features_in_
        return trainer

    def fit_batch(self, x: np.ndarray, y: np.ndarray) -> float:
        self.n_features_in = int(np.shape(x)[1])
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with self._autocast():
                out = self.module(_as_tensor(x, self.module))
        except RuntimeError as exc:
            raise ValueError(f"{self.config.estimator} cannot take a batch of shape {tuple(np.shape(x))} "
                             f"(check model.params against data.features): {str(exc)[:200]}") from None
        loss = self._loss_fn(*self._loss_inputs(out.float(), y))
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _autocast(self):
        """Mixed precision (``model.params.amp``) where it is asked for; full precision otherwise."""
        if self.config.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def park(self) -> None:
        """Paused: wait for the step in flight to end, and hand cached activations and blocks back to the
        GPU (the CUDA context stays, for a fast resume). On the CPU there is nothing to give back."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _loss_inputs(self, out: torch.Tensor, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.asarray(y)
        if self.config.loss == "mse":
            if y.ndim == 1 and out.ndim == 2 and out.shape[1] == 1:
                out = out.squeeze(1)  # (n, 1) against (n,) would broadcast to (n, n)
            return out, torch.as_tensor(y, dtype=out.dtype).to(out.device)
        idx = self._label_index(y)
        if self.config.loss == "cross_entropy":
            return out, torch.as_tensor(idx, dtype=torch.long).to(out.device)
        return out.reshape(len(out)), torch.as_tensor(idx, dtype=out.dtype).to(out.device)

    def _label_index(self, y: np.ndarray) -> np.ndarray:
        labels = self.config.classes
        if labels is None:
            return y.astype(np.int64)  # labels are already 0..k-1
        idx = np.clip(np.searchsorted(labels, y), 0, len(labels) - 1)
        if (unknown := labels[idx] != y).any():
            raise ValueError(f"labels {sorted(set(y[unknown].tolist()))[:5]} are not in model.classes {labels.tolist()}")
        return idx

    @property
    def model(self) -> TorchModelWrapper:
        """The live module behind a scikit-learn-like face (shares weights with the trainer)."""
        return TorchModelWrapper(self.module, self.config.loss, self.config.classes, self.n_features_in)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x)

    def state_bytes(self) -> bytes:
        """Device-agnostic: every tensor on the CPU, so a checkpoint written on a GPU loads on a host
        without one (and the other way round: :meth:`_restore` moves it to this trainer's device)."""
        return _save({"format": STATE_FORMAT, "estimator": self.config.estimator, "model": _to_cpu(self.module.state_dict()),
                      "optimizer_name": self.config.optimizer, "optimizer": _to_cpu(self.optimizer.state_dict()),
                      "n_features": self.n_features_in})


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def average_states(states: list[bytes], weights: list[float]) -> bytes:
    """Weighted parameter averaging (local SGD) of same-shaped states; the first one is the template.

    Floating tensors are averaged (in float64); integer buffers (batch-norm's ``num_batches_tracked``)
    are counters, not estimates: the first's are kept. So is the first's optimizer state: Adam's
    moments and step count are one worker's consistent running statistics (the step count drives
    their bias correction), while averaged second moments are not the second moment of anything.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states and {len(weights)} weights")
    if len(states) == 1:
        return states[0]
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    loaded, merged = [load_state(s) for s in states], {}
    for key, tensor in loaded[0]["model"].items():
        others = [s["model"].get(key) for s in loaded]
        if any(t is None or t.shape != tensor.shape for t in others):
            raise ValueError(f"states differ in parameter {key!r}: they come from different models")
        floating = tensor.is_floating_point()
        merged[key] = sum(float(wi) * t.double() for wi, t in zip(w, others)).to(tensor.dtype) if floating else tensor
    return _save(dict(loaded[0], model=merged))


def log_torch_model(model: TorchModelWrapper, name: str = "model", *, input_example: np.ndarray | None = None):
    """Log ``model`` to the active MLflow run as a ``torch.export`` (pt2) archive; returns the ``ModelInfo``.

    pt2 rather than pickle: MLflow 3 refuses to unpickle models unless an environment variable allows
    it, and a pt2 archive loads without importing the factory. The export traces ``input_example``
    (default: two rows of zeros, from the feature count seen in training).

    >>> with mlflow.start_run():  # doctest: +SKIP
    ...     mlflow.register_model(log_torch_model(trainer.model).model_uri, "my-job")
    """
    import mlflow

    if mlflow.active_run() is None:
        raise TrackingError("no active MLflow run to log the torch model to", where="tracking",
                            fix="call log_torch_model inside `with mlflow.start_run(...)`")
    if input_example is None and model.n_features_in_ is None:
        raise ValueError("the model has not seen a batch, so its input width is unknown: pass input_example")
    if input_example is None:  # a batch of 2: with 1 the export would fix the batch size
        input_example = np.zeros((2, model.n_features_in_))
    example = _as_tensor(input_example, model.module).numpy()  # in the model's dtype
    metadata = {"headroom.loss": model.loss, "headroom.n_features": model.n_features_in_,
                "headroom.classes": model.classes_.tolist() if model.classes_ is not None else None}
    model.module.eval()  # the export bakes the mode in (serve with dropout off); fit_batch switches back
    return mlflow.pytorch.log_model(model.module, name=name, pip_requirements=PIP_REQUIREMENTS,
                                    input_example=example, serialization_format="pt2", metadata=metadata)


def load_torch_model(uri: str) -> TorchModelWrapper:
    """Load a model logged by :func:`log_torch_model` (e.g. ``models:/my-job@champion``)."""
    import mlflow

    module = mlflow.pytorch.load_model(uri)
    meta = mlflow.models.get_model_info(uri).metadata or {}
    classes = meta.get("headroom.classes")
    return TorchModelWrapper(module, meta.get("headroom.loss", "mse"), np.asarray(classes) if classes is not None else None,
                             meta.get("headroom.n_features"), toggles_mode=False)
