"""Helpers for the release tests: registered model versions and labelled live traffic for the router.

>>> v1 = register_sklearn(uri, "m", fit_linear(rows=20, seed=1, label_noise=1.0), has_champion=False)  # doctest: +SKIP
>>> with LabelledTraffic(endpoints.predict_url, endpoints.feedback_url) as traffic: ...
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
from sklearn.linear_model import LinearRegression

N_FEATURES = 6
WEIGHTS = np.linspace(-2.0, 2.0, N_FEATURES)
SLOW_MODEL = Path(__file__).resolve().with_name("slow_model.py")


def fit_linear(rows: int, seed: int, label_noise: float = 0.0) -> LinearRegression:
    """A linear model of the test world; few rows and noisy labels make a clearly worse one."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES))
    y = x @ WEIGHTS + 0.1 * rng.normal(size=rows) + label_noise * rng.normal(size=rows)
    return LinearRegression().fit(x, y)


def register_sklearn(uri: str, name: str, model, *, has_champion: bool) -> int:
    """Register as a governed job does: first version champion, later ones challenger."""
    from runtime.tracking.tracker import Tracker, register_model

    tracker = Tracker(uri, "jobs", "job")
    version = register_model(tracker, model, name, beats_champion=True, has_champion=has_champion)["version"]
    tracker.end()
    return version


def register_slow(uri: str, name: str, inner, workdir: Path, delay_s: float) -> int:
    """A challenger that breaches the latency budget: ``slow_model.py`` (models-from-code) around ``inner``."""
    import mlflow
    from mlflow import MlflowClient

    from runtime.tracking.tracker import CHALLENGER, PIP_REQUIREMENTS

    inner_dir = workdir / "inner"
    mlflow.sklearn.save_model(inner, str(inner_dir), serialization_format="skops", pip_requirements=PIP_REQUIREMENTS,
                              skops_trusted_types=["sklearn.linear_model._base.LinearRegression"])
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(SLOW_MODEL), artifacts={"inner": str(inner_dir)},
                                       model_config={"delay_s": delay_s}, pip_requirements=PIP_REQUIREMENTS)
    version = int(mlflow.register_model(info.model_uri, name).version)
    MlflowClient(uri).set_registered_model_alias(name, CHALLENGER, version)
    return version


class LabelledTraffic(threading.Thread):
    """Live requests at ~``rps``, each followed by its true labels on the feedback route; keeps every response."""

    def __init__(self, predict_url: str, feedback_url: str, rps: float = 20.0, rows: int = 8):
        super().__init__(daemon=True)
        self.predict_url, self.feedback_url, self.rps, self.rows = predict_url, feedback_url, rps, rows
        # (status, body) per request; a request that raised is kept as (0, {"error": ...}), never dropped,
        # so a test's `all(code == 200 ...)` sees every failure.
        self.responses: list[tuple[int, dict]] = []
        self.feedback_failures: list[str] = []
        self.error: BaseException | None = None  # what stopped the thread, re-raised by stop()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            self._send()
        except BaseException as exc:  # surfaced by stop(): a dead traffic thread must fail the test
            self.error = exc

    def _send(self) -> None:
        rng = np.random.default_rng(7)
        with httpx.Client(timeout=30.0) as client:
            i = 0
            while not self._halt.is_set():
                x = rng.normal(size=(self.rows, N_FEATURES))
                rid = f"r{i}"
                try:
                    r = client.post(self.predict_url, json={"instances": x.tolist(), "request_id": rid})
                    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {"text": r.text}
                    self.responses.append((r.status_code, body))
                except httpx.HTTPError as exc:
                    self.responses.append((0, {"error": f"{type(exc).__name__}: {exc}"}))
                try:
                    fb = client.post(self.feedback_url, json={"request_id": rid, "labels": (x @ WEIGHTS).tolist()})
                    if fb.status_code != 200:
                        self.feedback_failures.append(f"{rid}: HTTP {fb.status_code}")
                except httpx.HTTPError as exc:
                    self.feedback_failures.append(f"{rid}: {type(exc).__name__}: {exc}")
                i += 1
                self._halt.wait(1.0 / self.rps)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the traffic thread did not stop within 60 s"
        if self.error is not None:
            raise AssertionError(f"the traffic thread died: {self.error!r}") from self.error

    def __enter__(self) -> "LabelledTraffic":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
