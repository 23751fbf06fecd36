"""A champion/challenger router on Ray Serve: serves the champion, mirrors or splits traffic to the challenger.

One deployment, ``Router``, loads two versions of a registered model from MLflow (``pyfunc``, so any
flavour with a pyfunc form: the skops scikit-learn models and pt2 torch regressors Headroom registers,
or a models-from-code wrapper) and answers HTTP on ``<prefix>``:

- ``POST <prefix>`` ``{"instances": [[...], ...], "request_id"?: "..."}`` -> ``{"predictions", "model",
  "version", "request_id"}``. With probability ``split_percent / 100`` the challenger serves the
  request, else the champion; a champion-served request is also *mirrored* to the challenger with
  probability ``shadow_fraction`` -- in the background, so the response never waits for it or sees it.
- ``POST <prefix>/feedback`` ``{"request_id": "...", "labels": [...]}`` -> labelled feedback for a
  request answered earlier (joined to its predictions by the rollout's shadow report).

Every request leaves one record (which model served it, each model's latency, success and
predictions); the draws come from one seeded RNG, so a replayed request sequence splits the same way.
Each model runs in its own one-thread executor and its latency is timed around it, queueing included:
a slow model shows up in its own numbers and cannot stall the other model's requests.

The rollout controller (:mod:`runtime.release.rollout`) steers the router through its deployment handle, not
HTTP -- the control surface is reachable only by an authenticated Ray driver::

    handle = serve.get_deployment_handle("Router", app_name=APP_NAME)
    handle.load.remote(champion=3, challenger=4).result()       # versions; None: resolve the alias
    handle.configure.remote(split_percent=5, shadow_fraction=0).result()
    handle.records.remote(since=0).result()                    # {"records", "feedback", "next"}

Usage (the caller owns ``ray.init``)::

    endpoints = start_router("sqlite:///mlflow.db", "demo-regressor", http_port=8001)
    stop_router()
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runtime.loopback import serve_replica_on_loopback
from runtime.tracking.tracker import CHALLENGER, CHAMPION

APP_NAME = "headroom-router"
DEPLOYMENT = "Router"
MAX_MIRRORS_IN_FLIGHT = 8  # a slow challenger drops mirrors instead of piling them up
MAX_RECORDS = 200_000


class _Model:
    """A pyfunc model, fed the dtype its input schema asks for (torch pt2 exports want float32)."""

    def __init__(self, pyfunc_model):
        self.pyfunc = pyfunc_model
        schema = pyfunc_model.metadata.get_input_schema()
        self.dtype = schema.numpy_types()[0] if schema is not None and schema.is_tensor_spec() else None

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.pyfunc.predict(rows if self.dtype is None else rows.astype(self.dtype)), dtype=float).ravel()


class _RouterCore:
    """The replica's logic without Ray Serve: model slots, the split, the records."""

    def __init__(self, tracking_uri: str, model_name: str, *, seed: int = 0):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri, self.model_name = tracking_uri, model_name
        self.rng = random.Random(seed)
        self.split_percent, self.shadow_fraction = 0.0, 0.0
        self.models: dict[str, tuple[int, _Model]] = {}  # role -> (version, model)
        self.pools = {role: ThreadPoolExecutor(max_workers=1, thread_name_prefix=role) for role in (CHAMPION, CHALLENGER)}
        self.records: deque[dict] = deque(maxlen=MAX_RECORDS)
        self.feedback: deque[dict] = deque(maxlen=MAX_RECORDS)
        self.next_seq = 0
        self.mirrors_in_flight = 0
        self.load()

    # --- control (through the deployment handle) --------------------------------------------------------

    def load(self, champion: int | None = None, challenger: int | None = None) -> dict:
        """Load these versions (None: the version behind the alias of that name; no challenger alias: none)."""
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(self.tracking_uri)
        wanted = {CHAMPION: champion, CHALLENGER: challenger}
        models = {}
        for role, version in wanted.items():
            if version is None:
                try:
                    version = int(client.get_model_version_by_alias(self.model_name, role).version)
                except MlflowException:
                    if role == CHAMPION:
                        raise
                    continue
            models[role] = (version, _Model(mlflow.pyfunc.load_model(f"models:/{self.model_name}/{version}")))
        self.models = models
        if CHALLENGER not in models:
            self.split_percent, self.shadow_fraction = 0.0, 0.0
        return {"versions": self.versions(), "next": self.next_seq}

    def configure(self, split_percent: float, shadow_fraction: float) -> dict:
        if not (0 <= split_percent <= 100 and 0 <= shadow_fraction <= 1):
            raise ValueError(f"split_percent must be in [0, 100] and shadow_fraction in [0, 1], "
                             f"got {split_percent}, {shadow_fraction}")
        if CHALLENGER not in self.models and (split_percent or shadow_fraction):
            raise ValueError("no challenger loaded: load one before sending it traffic")
        self.split_percent, self.shadow_fraction = float(split_percent), float(shadow_fraction)
        return {"split_percent": self.split_percent, "shadow_fraction": self.shadow_fraction, "next": self.next_seq}

    def records_since(self, since: int) -> dict:
        return {"records": _since(self.records, since), "feedback": _since(self.feedback, since), "next": self.next_seq}

    def versions(self) -> dict[str, int]:
        return {role: version for role, (version, _) in self.models.items()}

    # --- traffic ---------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return JSONResponse({"versions": self.versions(), "split_percent": self.split_percent,
                                 "shadow_fraction": self.shadow_fraction})
        try:
            body = json.loads(await request.body() or b"{}")
            if request.url.path.rstrip("/").endswith("/feedback"):
                return self._feedback(body)
            rows = _rows(body)
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return await self._predict(rows, str(body.get("request_id") or uuid.uuid4().hex))

    async def _predict(self, rows: np.ndarray, request_id: str) -> Response:
        serve_challenger = CHALLENGER in self.models and self.rng.random() * 100 < self.split_percent
        role = CHALLENGER if serve_challenger else CHAMPION
        mirror = (not serve_challenger and CHALLENGER in self.models and self.rng.random() < self.shadow_fraction
                  and self.mirrors_in_flight < MAX_MIRRORS_IN_FLIGHT)
        record = {"seq": None, "t": time.time(), "request_id": request_id, "served_by": role, "mirrored": mirror,
                  "versions": self.versions(), "latency_ms": {}, "ok": {}, "predictions": {}}
        preds = await self._run(role, rows, record)
        if mirror:
            self.mirrors_in_flight += 1
            asyncio.get_running_loop().create_task(self._mirror(rows, record))
        else:
            self._append(record)
        if preds is None:
            return JSONResponse({"error": f"the {role} failed", "request_id": request_id}, status_code=500)
        return JSONResponse({"predictions": [float(p) for p in preds], "model": role,
                             "version": record["versions"][role], "request_id": request_id})

    async def _mirror(self, rows: np.ndarray, record: dict) -> None:
        try:
            await self._run(CHALLENGER, rows, record)
        finally:
            self.mirrors_in_flight -= 1
            self._append(record)

    async def _run(self, role: str, rows: np.ndarray, record: dict) -> np.ndarray | None:
        model = self.models[role][1]
        start_s = time.perf_counter()
        try:
            preds = await asyncio.get_running_loop().run_in_executor(self.pools[role], model.predict, rows)
        except Exception:  # a model that fails is data for the risk budget, not a crash of the router
            preds = None
        record["latency_ms"][role] = (time.perf_counter() - start_s) * 1e3
        record["ok"][role] = preds is not None
        record["predictions"][role] = preds.tolist() if preds is not None else None
        return preds

    def _feedback(self, body: dict) -> Response:
        labels = [float(v) for v in body["labels"]]
        self.feedback.append({"seq": self._take_seq(), "request_id": str(body["request_id"]), "labels": labels})
        return JSONResponse({"ok": True})

    def _append(self, record: dict) -> None:
        record["seq"] = self._take_seq()
        self.records.append(record)

    def _take_seq(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq


def _since(entries: deque, seq: int) -> list[dict]:
    """Entries numbered ``seq`` or later (numbers rise along the deque, with gaps between the two deques)."""
    start = next((i for i in range(len(entries) - 1, -1, -1) if entries[i]["seq"] < seq), -1) + 1
    return list(itertools.islice(entries, start, None))


def _rows(body: dict) -> np.ndarray:
    rows = np.asarray(body["instances"], dtype=np.float64)
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError(f"instances must be a non-empty list of feature rows, got shape {rows.shape}")
    return rows


@serve.deployment(
    name=DEPLOYMENT,
    num_replicas=1,  # one replica: the split's RNG and the records live in it
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=256,
    logging_config={"enable_access_log": False, "log_level": "WARNING"},
)
class Router:
    """Ray Serve deployment wrapping :class:`_RouterCore`."""

    def __init__(self, tracking_uri: str, model_name: str, seed: int = 0):
        serve_replica_on_loopback()  # before the replica's gRPC server starts (after this constructor)
        self._core = _RouterCore(tracking_uri, model_name, seed=seed)

    async def __call__(self, request: Request) -> Response:
        return await self._core.handle(request)

    # Control methods are async so that they run on the replica's event loop, between requests: the
    # records and the split are never read half-updated. Loading models runs in a thread meanwhile.
    async def load(self, champion: int | None = None, challenger: int | None = None) -> dict:
        return await asyncio.to_thread(self._core.load, champion, challenger)

    async def configure(self, split_percent: float, shadow_fraction: float) -> dict:
        return self._core.configure(split_percent, shadow_fraction)

    async def records(self, since: int = 0) -> dict:
        return self._core.records_since(since)


@dataclass(frozen=True)
class RouterEndpoints:
    predict_url: str
    feedback_url: str


def start_router(tracking_uri: str, model_name: str, *, http_port: int = 8001, route_prefix: str = "/router",
                 seed: int = 0) -> RouterEndpoints:
    """Start Serve's proxy on ``127.0.0.1:http_port`` and deploy ``Router`` (champion and challenger by alias)."""
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    serve.run(Router.bind(tracking_uri, model_name, seed), name=APP_NAME, route_prefix=route_prefix)
    base = f"http://127.0.0.1:{http_port}{route_prefix.rstrip('/')}"
    return RouterEndpoints(predict_url=base + "/", feedback_url=base + "/feedback")


def stop_router(*, shutdown_serve: bool = True) -> None:
    try:
        serve.delete(APP_NAME)
    finally:
        if shutdown_serve:
            serve.shutdown()


def _main() -> None:
    import argparse

    import ray

    parser = argparse.ArgumentParser(description="Deploy the champion/challenger router on a running Ray cluster.")
    parser.add_argument("model", help="registered model name (the job's name)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--port", type=int, default=8001, help="Serve's HTTP port on 127.0.0.1")
    parser.add_argument("--address", default="auto", help="Ray cluster address")
    args = parser.parse_args()
    ray.init(address=args.address, log_to_driver=False)
    endpoints = start_router(args.tracking_uri, args.model, http_port=args.port)
    # Serve applications outlive this driver: the router keeps serving until `serve shutdown` / stop_router().
    print(json.dumps({"app": APP_NAME, "predict_url": endpoints.predict_url, "feedback_url": endpoints.feedback_url}))


if __name__ == "__main__":
    _main()
