"""GPU interference: inference beside incremental training on one GPU, alone / unmanaged / governed.

Runs where Ray cannot be installed: PyTorch and NVML only. Three processes share one GPU:

- **serving**: a bf16 MLP answering batch-8 requests from an open-loop, day-shaped schedule (one day
  of the NASA trace compressed into ``--seconds-per-phase``; latency from each request's intended send
  time, so a stall is charged in full); it publishes the p99 of its last ``--window-s`` every 50 ms;
- **training**: the project's :class:`~runtime.training.trainers.torch_trainer.TorchTrainer` on the GPU
  (bf16 autocast), one step at a time, obeying a shared directive word: at PAUSE it finishes the step
  in flight, synchronises, releases cached blocks (``torch.cuda.empty_cache``) and reports the moment
  its last kernel ended;
- **governor** (this process): the project's control law (:func:`runtime.control.law.decide`, with
  ``pause_first``: no THROTTLE on an accelerator) every 50 ms on the serving p99, as the governor
  actor would, through a small in-process loop.

Phases, interleaved over ``--reps``: ``alone`` (no training), ``unmanaged`` (training never told to
stop), ``governed``. Printed: inference p99 per phase and its ratio to ``alone``, training steps per
second against ``unmanaged``, and PAUSE decided -> GPU idle (the step in flight ended and synchronised,
confirmed by NVML's utilization dropping). Targets (reported, never asserted): governed p99 <= 1.10x
alone, governed steps >= 50 % of unmanaged, pause -> idle median <= 50 ms.

    python -m benchmarks.gpu_interference [--seconds-per-phase 20] [--reps 2] [--out bench-out/gpu_interference.json]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "data" / "nasa-http-1995-07.csv"
PHASES = ("alone", "unmanaged", "governed")
PAUSE, RUN = 0, 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_interference", description=__doc__.splitlines()[0])
    p.add_argument("--seconds-per-phase", type=float, default=20.0, help="one replayed day lasts this long")
    p.add_argument("--reps", type=int, default=2, help="repetitions of alone, unmanaged, governed (interleaved)")
    p.add_argument("--peak-rps", type=float, default=2000.0, help="inference requests/s at the trace's peak")
    p.add_argument("--hidden", type=int, default=4096, help="width of the served MLP")
    p.add_argument("--train-hidden", type=int, default=4096, help="width of the trained MLP")
    p.add_argument("--train-batch", type=int, default=1024, help="rows per training step")
    p.add_argument("--window-s", type=float, default=0.5, help="the serving p99 the law reads covers this long")
    p.add_argument("--slo-factor", type=float, default=1.5, help="SLO p99 = this x the alone phase's p99")
    p.add_argument("--out", default="bench-out/gpu_interference.json", help="where to write the JSON figures")
    return p.parse_args(argv)


def day_rate(seconds: float, peak_rps: float):
    """Requests/s over the replay: the NASA Monday, smoothed, scaled so its peak is ``peak_rps`` (a
    sine-shaped day when the trace is not at hand)."""
    try:
        sys.path.insert(0, str(ROOT))
        from examples.loadgen import trace_rate_fn
        from runtime.windows.history import read_history_csv

        return trace_rate_fn(read_history_csv(TRACE), seconds_per_day=seconds, peak_rps=peak_rps)
    except Exception:  # noqa: BLE001 -- pandas/pydantic-free machines: the same shape, roughly
        return lambda t: peak_rps * (0.35 + 0.65 * max(0.0, math.sin(math.pi * t / seconds)) ** 2)


def schedule(rate, seconds: float, seed: int) -> np.ndarray:
    """Poisson arrival times for ``rate(t)`` by thinning."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, seconds, 200)
    peak = 1.1 * max(rate(float(t)) for t in grid)
    t, out = 0.0, []
    while True:
        t += rng.exponential(1.0 / peak)
        if t >= seconds:
            return np.array(out)
        if rng.random() * peak < rate(t):
            out.append(t)


# ---- serving ---------------------------------------------------------------------------------------
def serve(arrivals: np.ndarray, start_at: float, hidden: int, window_s: float, p99_ms, done_q) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(hidden, hidden), torch.nn.ReLU())])
    model = model.to("cuda", dtype=torch.bfloat16).eval()
    x = torch.randn(8, hidden, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(50):
            model(x)
    torch.cuda.synchronize()
    latencies = np.zeros(len(arrivals))
    finished = np.zeros(len(arrivals))
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    last_pub, recent = t0, []
    with torch.no_grad():
        for i, due in enumerate(arrivals):
            while (now := time.perf_counter() - t0) < due:
                if now - (last_pub - t0) >= 0.05:
                    last_pub = _publish(recent, now, window_s, p99_ms, t0)
                time.sleep(min(0.0005, due - now))
            model(x)
            torch.cuda.synchronize()
            end = time.perf_counter() - t0
            latencies[i], finished[i] = (end - due) * 1e3, end
            recent.append((end, latencies[i]))
            if end - (last_pub - t0) >= 0.05:
                last_pub = _publish(recent, end, window_s, p99_ms, t0)
    done_q.put({"latencies_ms": latencies.tolist(), "finished_s": finished.tolist()})


def _publish(recent: list, now: float, window_s: float, p99_ms, t0: float) -> float:
    while recent and recent[0][0] < now - window_s:
        recent.pop(0)
    p99_ms.value = float(np.percentile([v for _, v in recent], 99)) if recent else 0.0
    return t0 + now


# ---- training --------------------------------------------------------------------------------------
def train(directive, idle_at, steps, stop, hidden: int, batch: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from types import SimpleNamespace

    from runtime.training.trainers.torch_trainer import TorchTrainer

    spec = SimpleNamespace(estimator="examples.torch_models:make_deep_mlp", classes=None,
                           params={"in_features": 256, "hidden": hidden, "layers": 4, "lr": 1e-4, "amp": "bf16"})
    trainer = TorchTrainer(spec, None, threads=2, device="cuda")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 256)).astype(np.float32)
    y = rng.normal(size=batch).astype(np.float32)
    parked = False
    while not stop.value:
        if directive.value == PAUSE:
            if not parked:
                trainer.park()  # the step in flight has ended: synchronise, give back cached blocks
                idle_at.value = time.time()
                parked = True
            time.sleep(0.0005)
            continue
        parked = False
        trainer.fit_batch(x, y)
        steps.value += 1


# ---- one phase ---------------------------------------------------------------------------------------
def run_phase(phase: str, args, rate, slo_ms: float | None, seed: int, nvml) -> dict:
    from runtime.control.law import LawConfig, LawState, Level, decide
    from runtime.control.sample import Sample

    ctx = mp.get_context("spawn")
    arrivals = schedule(rate, args.seconds_per_phase, seed)
    p99_ms, done_q = ctx.Value("d", 0.0), ctx.Queue()
    directive, idle_at, steps, stop = ctx.Value("i", RUN), ctx.Value("d", 0.0), ctx.Value("q", 0), ctx.Value("b", False)
    trainer = None
    if phase != "alone":
        directive.value = RUN if phase == "unmanaged" else PAUSE  # governed: the law resumes it
        trainer = ctx.Process(target=train, args=(directive, idle_at, steps, stop, args.train_hidden, args.train_batch))
        trainer.start()
        time.sleep(8.0)  # CUDA context and the first steps (cuBLAS autotuning) before serving starts
    start_at = time.time() + 3.0
    server = ctx.Process(target=serve, args=(arrivals, start_at, args.hidden, args.window_s, p99_ms, done_q))
    server.start()
    while time.time() < start_at:
        time.sleep(0.01)
    steps_at_start = steps.value
    cfg = LawConfig(slo_p99_ms=slo_ms or 1e9, max_workers=1, max_rows_per_s=1.0, holddown_s=0.5, cooldown_s=1.0,
                    pause_first=True)
    state, decisions, reactions = LawState(), [], []
    t_end = start_at + args.seconds_per_phase
    util = []
    while time.time() < t_end and server.is_alive():
        now = time.time()
        if nvml is not None:
            util.append((now - start_at, nvml.utilization()))
        if phase == "governed":
            before = state.level
            sample = Sample(time_s=now, p99_ms=p99_ms.value if p99_ms.value > 0 else None, rps=rate(now - start_at),
                            staleness_s=0.0)
            state, d = decide(state, sample, cfg)
            decisions.append((now - start_at, d.level.value, d.reason.value, p99_ms.value))
            if d.level is Level.PAUSE and before is not Level.PAUSE:
                decided_at = time.time()
                idle_at.value = 0.0
                directive.value = PAUSE
                reactions.append([decided_at, None])
            elif d.level is not Level.PAUSE and before is Level.PAUSE:
                directive.value = RUN
        if reactions and reactions[-1][1] is None and idle_at.value > 0:
            reactions[-1][1] = idle_at.value
        time.sleep(0.05)
    steps_in_phase = steps.value - steps_at_start
    result = done_q.get(timeout=120)
    server.join(30)
    if trainer is not None:
        stop.value = True
        trainer.join(30)
    lat = np.array(result["latencies_ms"])
    pause_to_idle_ms = [(i - d) * 1e3 for d, i in reactions if i is not None]
    return {"phase": phase, "requests": len(lat), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "p999_ms": float(np.percentile(lat, 99.9)),
            "train_steps": int(steps_in_phase), "train_steps_per_s": steps_in_phase / args.seconds_per_phase,
            "pauses": len(reactions), "pause_to_idle_ms": pause_to_idle_ms,
            "paused_fraction": (sum(1 for d in decisions if d[1] == "PAUSE") / len(decisions)) if decisions else None,
            "gpu_util_mean": float(np.mean([u for _, u in util])) if util else None}


class NVML:
    """GPU utilization through NVML (nvidia-ml-py), or ``None`` where there is none."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self.pynvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.name = pynvml.nvmlDeviceGetName(self.handle)

    def utilization(self) -> float:
        return self.pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100.0


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_interference: no CUDA device here; this benchmark needs one (the CPU paths are covered by the "
              "tests)", file=sys.stderr)
        return 2
    try:
        nvml = NVML()
    except Exception as exc:  # noqa: BLE001
        print(f"gpu_interference: NVML unavailable ({exc}); GPU utilization not recorded", file=sys.stderr)
        nvml = None
    device = torch.cuda.get_device_name(0)
    rate = day_rate(args.seconds_per_phase, args.peak_rps)
    print(f"[gpu] {device}; serving MLP {args.hidden} wide, batch 8, bf16, peak {args.peak_rps:g} req/s; "
          f"training MLP {args.train_hidden} wide, batch {args.train_batch}, bf16 autocast", flush=True)
    runs, slo_ms = [], None
    for rep in range(1, args.reps + 1):
        for phase in PHASES:
            r = run_phase(phase, args, rate, slo_ms, seed=rep, nvml=nvml)
            r["rep"] = rep
            runs.append(r)
            if phase == "alone" and slo_ms is None:
                slo_ms = args.slo_factor * r["p99_ms"]
                print(f"[gpu] SLO p99 {slo_ms:.3f} ms = {args.slo_factor:g} x alone's first p99", flush=True)
            idle = r["pause_to_idle_ms"]
            print(f"[gpu] rep {rep} {phase:<9} p99 {r['p99_ms']:.3f} ms (p50 {r['p50_ms']:.3f}), {r['train_steps']} steps, "
                  f"pauses {r['pauses']}" + (f", pause->idle median {statistics.median(idle):.1f} ms" if idle else ""),
                  flush=True)
    med = {p: {k: statistics.median([r[k] for r in runs if r["phase"] == p]) for k in ("p99_ms", "train_steps_per_s")}
           for p in PHASES}
    idle = [v for r in runs for v in r["pause_to_idle_ms"]]
    figures = {"device": device, "args": vars(args), "slo_ms": slo_ms, "runs": runs, "medians": med,
               "governed_p99_over_alone": med["governed"]["p99_ms"] / med["alone"]["p99_ms"],
               "unmanaged_p99_over_alone": med["unmanaged"]["p99_ms"] / med["alone"]["p99_ms"],
               "governed_steps_over_unmanaged": (med["governed"]["train_steps_per_s"] /
                                                 max(med["unmanaged"]["train_steps_per_s"], 1e-9)),
               "pause_to_idle_ms": {"median": statistics.median(idle) if idle else None,
                                    "p95": float(np.percentile(idle, 95)) if idle else None, "n": len(idle)}}
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print(f"\n  {device}: inference p99 alone {med['alone']['p99_ms']:.3f} ms, unmanaged "
          f"{figures['unmanaged_p99_over_alone']:.2f}x, governed {figures['governed_p99_over_alone']:.2f}x (target <= 1.10x)")
    print(f"  training steps/s: unmanaged {med['unmanaged']['train_steps_per_s']:.1f}, governed "
          f"{med['governed']['train_steps_per_s']:.1f} ({figures['governed_steps_over_unmanaged']:.0%} of unmanaged; target >= 50 %)")
    p = figures["pause_to_idle_ms"]
    if p["n"]:
        print(f"  PAUSE decided -> GPU idle: median {p['median']:.1f} ms, p95 {p['p95']:.1f} ms over {p['n']} pauses "
              "(target median <= 50 ms)")
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
