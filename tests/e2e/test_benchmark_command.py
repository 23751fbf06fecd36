"""``make benchmark`` as a user runs it, in miniature: serving + open-loop replay + four policies.

Runs the README's command (``make benchmark``, with ``BENCH_ARGS`` shortening it: a day compressed
into 8 s, one repetition of ``none``, ``unmanaged``, ``offpeak`` and ``governed``) with no Ray variable in the
environment, as on a fresh machine: the benchmark starts its own private loopback Ray cluster. Asserted:
the output's structure, that every policy got latency samples, that the policies that train consumed
rows, and that the signals' freshness was measured. The latency figures are printed, never asserted:
this machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ["none", "unmanaged", "offpeak", "governed"]


def test_short_benchmark_produces_results_for_every_policy(tmp_path):
    out = tmp_path / "interference"
    args = (f"--policies {','.join(POLICIES)} --seconds-per-policy 8 --reps 1 --calibration-seconds 8 "
            f"--out {out} --work {tmp_path / 'work'}")
    cmd = ["make", "--no-print-directory", "benchmark", f"BENCH_ARGS={args}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # as a fresh shell: no token, no address
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    print(f"benchmark took {time.time() - started:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    result = json.loads((out / "results.json").read_text())
    assert set(result) >= {"meta", "summary", "targets", "runs"}
    meta = result["meta"]
    assert meta["machine"]["cores"] >= 1 and len(meta["machine"]["loadavg_at_start"]) == 3
    assert meta["capacity"]["rps"] > 0 and meta["slo_ms"] > 0 and meta["peak_rps"] > 0
    assert meta["freshness"]["targets"] >= 1 and meta["freshness"]["scrape_ms_median"] > 0
    assert [r["policy"] for r in result["runs"]] == POLICIES
    assert list(result["summary"]) == POLICIES
    for run in result["runs"]:
        lat = run["latency"]
        assert lat["requests"] > 0 and lat["p50_ms"] is not None and lat["p99_ms"] is not None, run
        assert (out / run["timeline"]).is_file()
        print(f"{run['policy']:<9} p50 {lat['p50_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms  "
              f"errors {lat['errors']}/{lat['requests']}  rows {run['train_rows']} (whole run {run['train_rows_run']})")
    runs = {r["policy"]: r for r in result["runs"]}
    assert runs["none"]["train_rows"] == 0
    assert runs["unmanaged"]["train_rows"] > 0
    assert 0 < runs["offpeak"]["train_rows"]  # held (SIGSTOP) through the peak seconds only, then released
    # The governed job may be paused for the whole 8-s window on a busy host; over its lead-in too it trains.
    assert runs["governed"]["train_rows_run"] > 0
    assert runs["governed"]["jobs_left_on_governor"] == []  # the job unregistered: no parked lease left behind
    assert runs["governed"]["checkpoints"] >= 1
    assert {"median_s", "p95_s", "count"} <= set(runs["governed"]["reaction"])
    assert {t["target"] for t in result["targets"]} and all("met" in t for t in result["targets"])

    md = (out / "results.md").read_text()
    assert "| policy |" in md and all(f"| {p} |" in md for p in POLICIES)
