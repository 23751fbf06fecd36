"""The governed job's training, as a plain process: the baseline every non-governed policy runs.

Same model and data path as ``jobs/demo.yaml`` under ``run_job``: the spec's estimator (an
``MLPRegressor`` updated with ``partial_fit``) through the same trainer (test-then-train on every
batch), batches of ``data.batch_rows`` rows read with :class:`runtime.training.ingest.Dataset` from
:func:`runtime.training.datagen.write_regression_slices` slices, one BLAS/OpenMP thread. No governor, no lease,
no checkpoints: it trains at whatever speed the OS gives it, looping over the data as often as needed,
until ``--seconds`` have passed, the data is exhausted (``--passes``), or it is killed (SIGTERM/SIGINT
end it cleanly, with a last log line).

It writes a JSON-lines log: one ``{"event": "ready", ...}`` line once imports and set-up are done,
then ``{"t": epoch_s, "rows_consumed": n}`` every ``--log-every-s`` and at the end (``"event": "end"``).
With ``--wait-stdin`` it blocks after "ready" until one line arrives on stdin -- the epoch second to
start training at (empty: now) -- so a harness can start it ahead of time and exclude import costs.

    python -m benchmarks.train_loop --data .headroom/bench/data --seconds 30 --log /tmp/train.jsonl
"""

from __future__ import annotations

import os

# One thread everywhere, set before NumPy/SciPy load their BLAS: the governed worker runs one too
# (budget.cpus_per_worker: 1), so every policy trains with the same parallelism.
if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "jobs" / "demo.yaml"
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                               "NUMEXPR_NUM_THREADS")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_loop", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of slices (runtime.training.datagen.write_regression_slices)")
    p.add_argument("--seconds", type=float, default=None, help="train this long, then exit (default: until killed)")
    p.add_argument("--log", required=True, help="JSON-lines progress log to write")
    p.add_argument("--spec", default=str(DEFAULT_SPEC), help="job spec whose model, target and batch size to use")
    p.add_argument("--passes", type=float, default=None, help="stop after this many passes over the data (default: no limit)")
    p.add_argument("--log-every-s", type=float, default=0.5, help="seconds between progress lines")
    p.add_argument("--wait-stdin", action="store_true", help="after set-up, wait for the start epoch on stdin")
    return p.parse_args(argv)


class _Stop(Exception):
    pass


def _on_signal(signum, frame):  # noqa: ARG001
    raise _Stop(signal.Signals(signum).name)


def main(argv=None) -> int:
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    from runtime.training.ingest import Dataset, to_xy
    from runtime.spec.job import load_spec
    from runtime.training.trainers import make_trainer

    threadpool_limits(1)
    spec = load_spec(args.spec, check_paths=False)
    dataset = Dataset(args.data, spec.data.format)
    trainer = make_trainer(spec.model)
    batch_rows = spec.data.batch_rows
    log = open(args.log, "a", buffering=1)  # line-buffered: a killed process still leaves whole lines

    def write(record: dict) -> None:
        log.write(json.dumps(record) + "\n")

    # The first batch pays one-off costs (slice read, weight allocation); do it before "ready".
    warm = to_xy(dataset.read(0, min(batch_rows, dataset.total_rows)), spec.data.target, spec.data.features, spec.data.id_column)
    make_trainer(spec.model).fit_batch(warm[0], warm[1])
    write({"event": "ready", "t": time.time(), "pid": os.getpid(), "rows_total": dataset.total_rows,
           "batch_rows": batch_rows, "estimator": spec.model.estimator})
    start_s = time.time()
    if args.wait_stdin:
        line = sys.stdin.readline().strip()
        start_s = float(line) if line else time.time()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    rows, why = 0, "seconds"
    try:
        while (delay_s := start_s - time.time()) > 0:
            time.sleep(min(delay_s, 0.1))
        start_s = time.time()
        write({"t": start_s, "rows_consumed": 0, "event": "start"})
        stop_s = start_s + args.seconds if args.seconds is not None else float("inf")
        max_rows = args.passes * dataset.total_rows if args.passes is not None else float("inf")
        pos, last_log_s = 0, start_s
        while True:
            now = time.time()
            if now >= stop_s:
                break
            if rows >= max_rows:
                why = "data exhausted"
                break
            end = min(dataset.total_rows, pos + batch_rows)
            x, y, _ = to_xy(dataset.read(pos, end), spec.data.target, spec.data.features, spec.data.id_column)
            trainer.fit_batch(x, y)
            rows += end - pos
            pos = 0 if end >= dataset.total_rows else end  # loop over the data again
            if now - last_log_s >= args.log_every_s:
                write({"t": time.time(), "rows_consumed": rows})
                last_log_s = now
    except _Stop as exc:
        why = str(exc)
    write({"t": time.time(), "rows_consumed": rows, "event": "end", "why": why})
    log.close()
    return 0


def measure_rows_per_s(data: str, *, seconds: float = 4.0, spec_path: str | Path = DEFAULT_SPEC) -> float:
    """Rows/s of this loop alone, in-process on one thread: the best one-second stretch in ``seconds``
    (the best, not the mean: on a shared host a neighbour's burst says nothing about this loop)."""
    from threadpoolctl import threadpool_limits

    from runtime.training.ingest import Dataset, to_xy
    from runtime.spec.job import load_spec
    from runtime.training.trainers import make_trainer

    spec = load_spec(spec_path, check_paths=False)
    dataset = Dataset(data, spec.data.format)
    n = min(spec.data.batch_rows, dataset.total_rows)
    x, y, _ = to_xy(dataset.read(0, n), spec.data.target, spec.data.features, spec.data.id_column)
    best = 0.0
    with threadpool_limits(1):
        trainer = make_trainer(spec.model)
        trainer.fit_batch(x, y)  # warm-up: weight allocation, first-call overheads
        rows, pos, start_s = 0, 0, time.perf_counter()
        stretch_rows, stretch_s = 0, start_s
        while time.perf_counter() - start_s < seconds:
            bx, by, _ = to_xy(dataset.read(pos, pos + n), spec.data.target, spec.data.features, spec.data.id_column)
            trainer.fit_batch(bx, by)
            pos = (pos + n) % max(1, dataset.total_rows - n)
            stretch_rows += n
            if (now := time.perf_counter()) - stretch_s >= 1.0:
                best = max(best, stretch_rows / (now - stretch_s))
                stretch_rows, stretch_s = 0, now
    return best


def static_limit(cpus: float) -> dict:
    """How the static policy is confined: a cgroup CPU quota (v2 ``cpu.max``, else v1 CFS) if the host
    lets us create one, else ``taskset`` onto one core. Returns ``{"kind", "cpus", "prefix", ...}``."""
    period_us, quota_us = 100_000, int(cpus * 100_000)
    name = f"headroom-bench-{os.getpid()}"
    notes = []
    v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
    attempts = []
    if "cpu" in _read(v2 / "cgroup.controllers").split():
        attempts.append(("cgroup-v2", v2 / name, {"cpu.max": f"{quota_us} {period_us}"}))
    if (v1 / "cpu.cfs_quota_us").exists():
        attempts.append(("cgroup-v1", v1 / name, {"cpu.cfs_period_us": str(period_us), "cpu.cfs_quota_us": str(quota_us)}))
    for kind, group, files in attempts:
        try:
            if kind == "cgroup-v2" and "cpu" not in _read(v2 / "cgroup.subtree_control").split():
                (v2 / "cgroup.subtree_control").write_text("+cpu")
            group.mkdir(exist_ok=True)
            for f, value in files.items():
                (group / f).write_text(value)
            return {"kind": kind, "cpus": cpus, "path": str(group), "prefix": [], "notes": notes}
        except OSError as exc:
            notes.append(f"{kind}: {exc}")
            _rmdir(group)
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return {"kind": "taskset", "cpus": 1.0, "prefix": ["taskset", "-c", "1"], "notes": notes}
    return {"kind": "none", "cpus": None, "prefix": [], "notes": notes + ["no cgroup, no taskset: static == unmanaged"]}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def release_limit(static: dict) -> None:
    """Remove the cgroup :func:`static_limit` made (it must be empty: its process has exited)."""
    if static.get("path"):
        _rmdir(Path(static["path"]))


class TrainProcess:
    """This loop as a process under one policy, started ahead (imports excluded), told when to start over stdin.

    ``policy``: ``unmanaged`` (plain), ``nice`` (``nice -n 19``), ``idle`` (Linux's ``SCHED_IDLE`` class,
    as the governed job's workers run by default), ``static`` (the confinement :func:`static_limit`
    returned), ``cron`` (plain; the caller picks the start time and ``seconds``), ``offpeak`` (``SCHED_IDLE``,
    as ``idle``; the caller stops and continues it, :meth:`hold` and :meth:`release`).
    """

    def __init__(self, policy: str, data_dir: Path, log: Path, seconds: float, static: dict | None = None):
        cmd = [sys.executable, "-m", "benchmarks.train_loop", "--data", str(data_dir), "--log", str(log),
               "--seconds", f"{seconds:.3f}", "--wait-stdin"]
        preexec = None
        if policy == "nice":
            cmd = ["nice", "-n", "19", *cmd]
        elif policy in ("idle", "offpeak"):
            preexec = lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # noqa: E731
        elif policy == "static":
            cmd = [*static["prefix"], *cmd]
            if static["kind"].startswith("cgroup"):
                procs = Path(static["path"]) / "cgroup.procs"
                preexec = lambda: procs.write_text(str(os.getpid()))  # noqa: E731 -- joins before exec
        self.log = log
        log.unlink(missing_ok=True)
        self._stderr = open(log.with_suffix(".err"), "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     cwd=ROOT, env={**os.environ, **ONE_THREAD}, preexec_fn=preexec, text=True)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.time() + timeout_s
        while read_log(self.log)[0] is None:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"train loop not ready: {self.log.with_suffix('.err').read_text()[-2000:]}")
            time.sleep(0.1)

    def go(self, start_at_s: float) -> None:
        self.proc.stdin.write(f"{start_at_s}\n")
        self.proc.stdin.flush()

    def hold(self) -> None:
        """Stop the loop where it stands (``SIGSTOP``): an instant pause that costs nothing, no checkpoint."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def release(self) -> None:
        """Continue a held loop (``SIGCONT``); a no-op on one that runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> list[dict]:
        self.release()  # a stopped process would keep its SIGTERM pending
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return read_log(self.log)[1]


def read_log(path: str | Path) -> tuple[dict | None, list[dict]]:
    """``(ready record or None, progress records)`` of a train-loop log; torn last lines are skipped."""
    ready, progress = None, []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None, []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == "ready":
            ready = rec
        elif "rows_consumed" in rec:
            progress.append(rec)
    return ready, progress


if __name__ == "__main__":
    sys.exit(main())
