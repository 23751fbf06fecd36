"""The GPU paths, on the CPU of CI: the spec and the law's pause-first policy, NVML telemetry with an NVML
that answers and one that is not there, and the torch trainer's device handling (the CUDA cases run
where a GPU is, and are skipped elsewhere)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runtime.control.law import LawConfig, LawState, Level, Reason, decide
from runtime.control.sample import Sample
from runtime.control.telemetry import GPUSource, WithGPUUtilization, build_source
from runtime.driver.summary import law_config
from runtime.errors import SpecError, TelemetryError
from runtime.spec.job import spec_from_dict
from runtime.training.trainers.torch_trainer import TorchTrainer

CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine)")]


def _spec(**budget):
    return spec_from_dict({
        "name": "gpu-job",
        "model": {"framework": "torch", "estimator": "examples.torch_models:make_mlp", "params": {"in_features": 4}},
        "data": {"path": "/tmp/none", "target": "y"}, "validation": {"holdout": "/tmp/none.parquet"},
        "serving": {"telemetry": "host", "slo_p99_ms": 50}, "budget": budget})


# ---- spec and law ---------------------------------------------------------------------------------
def test_a_gpu_worker_pauses_first_unless_told_otherwise():
    assert _spec(gpus_per_worker=0.5).budget.pause_first and law_config(_spec(gpus_per_worker=1))["pause_first"]
    assert not _spec().budget.pause_first
    assert not _spec(gpus_per_worker=1, accelerator_policy="throttle").budget.pause_first
    assert _spec(accelerator_policy="pause_first").budget.pause_first


def test_a_gpu_for_scikit_learn_is_refused_with_the_fix():
    raw = _spec().model_dump()
    raw["model"] = {"framework": "sklearn", "estimator": "sklearn.linear_model.SGDRegressor"}
    raw["budget"]["gpus_per_worker"] = 1
    with pytest.raises(SpecError, match="gpus_per_worker needs model.framework: torch"):
        spec_from_dict(raw)


def test_pause_first_pauses_where_the_law_would_throttle_and_resumes_at_full_rate():
    cfg = LawConfig(slo_p99_ms=100, max_workers=1, max_rows_per_s=1000, cooldown_s=1.0, pause_first=True)
    running = LawState(level=Level.RUN, workers=1, rows_per_s=1000.0)
    state, d = decide(running, Sample(time_s=10, p99_ms=95, rps=5), cfg)  # slack 0.05: a CPU job would THROTTLE
    assert (d.level, d.reason) == (Level.PAUSE, Reason.SLACK_LOW)
    state, d = decide(state, Sample(time_s=10.5, p99_ms=20, rps=5), cfg)
    assert d.reason is Reason.COOLDOWN  # resume keeps its cool-down ...
    state, d = decide(state, Sample(time_s=12, p99_ms=20, rps=5), cfg)
    assert (d.level, d.reason, d.rows_per_s) == (Level.RUN, Reason.RESUME, 1000.0)  # ... and comes back whole
    throttling = LawConfig(slo_p99_ms=100, max_workers=1, max_rows_per_s=1000)
    assert decide(running, Sample(time_s=10, p99_ms=95, rps=5), throttling)[1].level is Level.THROTTLE


# ---- NVML -------------------------------------------------------------------------------------------
class FakeNVML:
    """pynvml's calls the source uses, over two GPUs whose utilization the test sets."""

    def __init__(self, util=(10, 70), broken: Exception | None = None):
        self.util, self.broken = list(util), broken

    def nvmlInit(self):
        if self.broken:
            raise self.broken

    def nvmlDeviceGetCount(self):
        return len(self.util)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self.util[handle], memory=0)


def test_gpu_utilization_is_the_busiest_serving_gpu():
    nvml = FakeNVML((10, 70))
    assert GPUSource(nvml=nvml, clock=lambda: 5.0).sample().utilization == pytest.approx(0.7)
    assert GPUSource([0], nvml=nvml, clock=lambda: 5.0).sample().utilization == pytest.approx(0.1)
    with pytest.raises(TelemetryError, match="GPU index \\[3\\] not on this node"):
        GPUSource([3], nvml=nvml)


def test_no_nvml_is_one_clear_error_never_a_crash():
    class NoDriver(Exception):
        pass

    with pytest.raises(TelemetryError, match="NVML is not usable here .*NoDriver") as err:
        GPUSource(nvml=FakeNVML(broken=NoDriver("driver not loaded")))
    assert "fix:" in str(err.value)
    try:
        import pynvml  # noqa: F401
    except ImportError:  # this machine has no nvidia-ml-py: the real path says so
        with pytest.raises(TelemetryError, match="nvidia-ml-py is not installed"):
            build_source("gpu")


def test_gpu_utilization_joins_the_load_slack_and_latency_stays_first():
    class Latency:
        timeout_s = 1.0

        def __init__(self, sample):
            self.s = sample

        def sample(self, now_s=None):
            return self.s

    gpu = GPUSource(nvml=FakeNVML((20, 90)))
    merged = WithGPUUtilization(Latency(Sample(time_s=1.0, p99_ms=12.0, rps=40.0, utilization=0.3)), gpu).sample()
    assert merged.p99_ms == 12.0 and merged.utilization == pytest.approx(0.9)
    failed = WithGPUUtilization(Latency(Sample.failed(1.0, "down")), gpu).sample()
    assert failed.error == "down"


# ---- the torch trainer on a device --------------------------------------------------------------------
def _torch_spec(**params):
    return SimpleNamespace(estimator="examples.torch_models:make_mlp", classes=None, params={"in_features": 4, **params})


def _tensors_devices(blob: bytes) -> set[str]:
    state = torch.load(io.BytesIO(blob), weights_only=True)
    found: set[str] = set()

    def walk(o):
        if isinstance(o, torch.Tensor):
            found.add(o.device.type)
        elif isinstance(o, dict):
            [walk(v) for v in o.values()]
        elif isinstance(o, (list, tuple)):
            [walk(v) for v in o]

    walk(state)
    return found


def test_mixed_precision_trains_on_the_cpu_and_state_is_device_agnostic():
    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.zeros(32)
    trainer = TorchTrainer(_torch_spec(amp="bf16"), None, device="cpu")
    assert np.isfinite(trainer.fit_batch(x, y))
    trainer.park()  # a no-op off the GPU
    assert _tensors_devices(trainer.state_bytes()) == {"cpu"}
    with pytest.raises(ValueError, match="model.params.amp"):
        TorchTrainer(_torch_spec(amp="int4"), None)


def test_asking_for_a_gpu_where_there_is_none_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        TorchTrainer(_torch_spec(), None, device="cuda")


@CUDA[0]
@CUDA[1]
def test_a_cuda_checkpoint_loads_on_the_cpu_and_back():
    x, y = np.random.default_rng(0).normal(size=(64, 4)), np.ones(64)
    gpu = TorchTrainer(_torch_spec(amp="bf16"), None, device="cuda")
    for _ in range(5):
        gpu.fit_batch(x, y)
    blob = gpu.state_bytes()
    assert _tensors_devices(blob) == {"cpu"}
    cpu = TorchTrainer(_torch_spec(), blob, device="cpu")
    assert np.allclose(cpu.model.predict(x), gpu.model.predict(x), atol=1e-2)
    again = TorchTrainer(_torch_spec(), cpu.state_bytes(), device="cuda")
    assert next(again.module.parameters()).is_cuda
    before = torch.cuda.memory_reserved()
    gpu.park()
    assert torch.cuda.memory_reserved() <= before
