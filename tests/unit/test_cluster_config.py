"""cluster.yaml starts Ray the way the governor's ingress signal needs it, as the embedded default does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from runtime.loopback import (CARDINALITY_ENV, METRIC_CARDINALITY, RAY_SYSTEM_CONFIG, SERVE_BUCKETS_ENV,
                              SERVE_LATENCY_BUCKETS_MS, SIDECAR_NICE)

ROOT = Path(__file__).resolve().parents[2]


def _commands(config: dict, key: str) -> str:
    return " ".join(config[key])


def test_every_node_exports_fine_serve_buckets_and_a_metrics_port():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    embedded = ",".join(f"{b:g}" for b in SERVE_LATENCY_BUCKETS_MS)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        text = _commands(config, key)
        buckets = re.search(rf"{SERVE_BUCKETS_ENV}=(\S+)", text)
        assert buckets and buckets.group(1) == embedded, (key, text)
        assert "--metrics-export-port=" in text, key  # the governor scrapes every node there
        assert f"{CARDINALITY_ENV}={METRIC_CARDINALITY} " in text, key  # and each read renders fewer series
    head = _commands(config, "head_start_ray_commands")
    system = json.loads(re.search(r"--system-config='([^']+)'", head).group(1))
    assert system == RAY_SYSTEM_CONFIG  # metrics every ~1 s, serving at nice 0


def test_every_node_lowers_its_metrics_agent_after_ray_starts_as_the_embedded_stack_does():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = config[key]
        starts = [i for i, c in enumerate(commands) if "ray start" in c]
        lowers = [i for i, c in enumerate(commands) if "ray::DashboardAgent" in c]
        assert starts and lowers and lowers[0] > starts[-1], (key, commands)  # after the agent exists
        assert f"renice -n {SIDECAR_NICE} " in commands[lowers[0]] and "/task/" in commands[lowers[0]]  # every thread
