"""Observability: the alert rules and the Grafana dashboard, and the metrics a live governor exports.

- ``examples/alerts.yml`` passes ``promtool check rules``, and ``promtool test rules`` shows each alert
  firing (and not firing) on series labelled as Prometheus really stores Ray's metrics;
- every query in ``examples/grafana-dashboard.json`` is valid PromQL over the exported names;
- a governed job on the session's Ray head shows up on Ray's metrics agent under those names, and
  ``headroom status`` (one-shot, ``--json`` and ``--watch``) lists it while it runs.

Needs the promtool that ``scripts/fetch_prometheus.sh`` unpacks under ``.tools/``; without it these
tests fail (not skip): a skipped rule check would hide broken alerts.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_governed_job import JobThread, assert_exactly_once, make_spec
from tests.support import LatencyServer, LoadThread

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = Path(os.environ.get("HEADROOM_PROMTOOL", ROOT / ".tools/prometheus/usr/bin/promtool"))
ALERTS = ROOT / "examples/alerts.yml"
DASHBOARD = ROOT / "examples/grafana-dashboard.json"
HEADROOM = Path(sys.executable).with_name("headroom")

# runtime/control/governor.py's _Metrics as Ray's metrics agent exports them: every name gets a ``ray_`` prefix;
# base units, counters end in _total, the job is the label headroom_job (Prometheus keeps `job` for itself).
LABEL = "headroom_job"
JOB_GAUGES = {"ray_headroom_directive_level", "ray_headroom_slack_ratio", "ray_headroom_workers_active",
              "ray_headroom_allowed_rows_per_second", "ray_headroom_serving_p99_seconds", "ray_headroom_telemetry_ok"}
IN_FLIGHT = "ray_headroom_serving_in_flight_requests"  # only where the source reads a queue
COUNTERS = {"ray_headroom_pauses_total", "ray_headroom_resumes_total", "ray_headroom_governor_tick_errors_total"}
TICK = "ray_headroom_governor_tick_seconds"  # histogram
REACTION = "ray_headroom_reaction_seconds"  # histogram: _bucket, _sum, _count
EXPORTED = (JOB_GAUGES | {IN_FLIGHT} | COUNTERS | {f"{h}_{s}" for h in (TICK, REACTION) for s in ("bucket", "sum", "count")})
ALERT_NAMES = {"HeadroomSLOBreachedWhileTraining", "HeadroomJobPausedTooLong", "HeadroomTelemetryStale",
               "HeadroomGovernorSlow", "HeadroomGovernorAbsent"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    if not (PROMTOOL.is_file() and os.access(PROMTOOL, os.X_OK)):
        pytest.fail(f"promtool not found at {PROMTOOL}; run scripts/fetch_prometheus.sh "
                    "(the Makefile runs it before the tests) or set HEADROOM_PROMTOOL", pytrace=False)
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=60)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bray_headroom_\w+", expr))


# ---- alert rules --------------------------------------------------------------------------------

def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_alert_rules_use_the_exported_names_and_tell_on_call_what_to_do():
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= EXPORTED, f"{rule['alert']}: {names - EXPORTED} is not exported by the governor"
        assert rule["annotations"]["summary"].strip() and rule["labels"]["severity"] in {"page", "ticket"}
        assert "headroom " in rule["annotations"]["description"], f"{rule['alert']}: no command to run"
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]  # every alert links its runbook section
        assert f'<a id="{anchor}"></a>' in (ROOT / "docs" / "operations.md").read_text(), anchor


def _series(job: str, worker: str = "w1") -> str:
    """Labels as Prometheus stores the governor's series: its own job label is the scrape's, the
    Headroom job is headroom_job (no exported_job rename: the label is not called job)."""
    return f'{{job="ray", {LABEL}="{job}", WorkerId="{worker}", SessionName="s1"}}'


def test_alerts_fire_when_they_should_and_only_then(tmp_path):
    # promtool compares annotations verbatim; the runbook text is not under test here (check rules
    # above validates its templates), so the rules are tested with their annotations stripped.
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))

    def s(metric, job=None, worker="w1", **extra):
        labels = f'{{job="ray", WorkerId="{worker}"' + "".join(f', {k}="{v}"' for k, v in extra.items()) + "}"
        return f"{metric}{_series(job, worker)}" if job else f"{metric}{labels}"

    flat = "+0x240"  # 240 steps of 15 s: one hour
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {   # one governor, four jobs; "hot" is breached while training, "idle" breached but holding no
                # worker, "cool" fine; "stuck" paused an hour with stale telemetry; the loop is slow
                "interval": "15s",
                "input_series": [
                    {"series": s("ray_headroom_slack_ratio", "hot"), "values": f"0.2 0.2 -0.3{flat}"},
                    {"series": s("ray_headroom_workers_active", "hot"), "values": f"1{flat}"},
                    {"series": s("ray_headroom_directive_level", "hot"), "values": f"2{flat}"},
                    {"series": s("ray_headroom_slack_ratio", "idle"), "values": f"-0.3{flat}"},
                    {"series": s("ray_headroom_workers_active", "idle"), "values": f"0{flat}"},
                    {"series": s("ray_headroom_slack_ratio", "cool"), "values": f"0.4{flat}"},
                    {"series": s("ray_headroom_workers_active", "cool"), "values": f"2{flat}"},
                    {"series": s("ray_headroom_directive_level", "cool"), "values": f"2{flat}"},
                    {"series": s("ray_headroom_directive_level", "stuck"), "values": f"0{flat}"},
                    {"series": s("ray_headroom_telemetry_ok", "stuck"), "values": f"1 1 1 1 0{flat}"},
                    # a governor restart leaves a second series for the same job: still one alert
                    {"series": s("ray_headroom_directive_level", "stuck", "w2"), "values": f"0{flat}"},
                    {"series": s("ray_headroom_telemetry_ok", "cool"), "values": f"1{flat}"},
                    # the tick histogram: 4 ticks a second, fast (in the 5-ms bucket) then slow (over 50 ms)
                    *({"series": s(f"{TICK}_bucket", le=le), "values": f"0+{fast}x4 {4 * fast}+{slow}x240"}
                      for le, fast, slow in (("0.005", 60, 0), ("0.01", 60, 0), ("0.025", 60, 0), ("0.05", 60, 0),
                                             ("0.1", 60, 60), ("+Inf", 60, 60))),
                    {"series": s(f"{TICK}_count"), "values": f"0+60x4 240+60x240"},
                ],
                "alert_rule_test": [
                    {"eval_time": "30s", "alertname": "HeadroomSLOBreachedWhileTraining", "exp_alerts": []},
                    {"eval_time": "75s", "alertname": "HeadroomSLOBreachedWhileTraining",
                     "exp_alerts": [{"exp_labels": {"severity": "page", LABEL: "hot"}}]},
                    {"eval_time": "20m", "alertname": "HeadroomJobPausedTooLong", "exp_alerts": []},
                    {"eval_time": "31m", "alertname": "HeadroomJobPausedTooLong",
                     "exp_alerts": [{"exp_labels": {"severity": "ticket", LABEL: "stuck"}}]},
                    {"eval_time": "90s", "alertname": "HeadroomTelemetryStale", "exp_alerts": []},
                    {"eval_time": "3m", "alertname": "HeadroomTelemetryStale",
                     "exp_alerts": [{"exp_labels": {"severity": "ticket", LABEL: "stuck"}}]},
                    {"eval_time": "4m", "alertname": "HeadroomGovernorSlow", "exp_alerts": []},
                    {"eval_time": "7m", "alertname": "HeadroomGovernorSlow",
                     "exp_alerts": [{"exp_labels": {"severity": "ticket"}}]},
                    {"eval_time": "10m", "alertname": "HeadroomGovernorAbsent", "exp_alerts": []},
                ],
            },
            {   # no governor metrics at all
                "interval": "15s",
                "input_series": [{"series": 'up{job="ray"}', "values": f"1{flat}"}],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "HeadroomGovernorAbsent", "exp_alerts": []},
                    {"eval_time": "3m", "alertname": "HeadroomGovernorAbsent",
                     "exp_alerts": [{"exp_labels": {"severity": "ticket"}}]},
                ],
            },
        ],
    }
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- dashboard ----------------------------------------------------------------------------------

GRAFANA_VARIABLES = {  # a value for each dashboard variable, so its queries can go through promtool
    "$job": ".*", "$reaction_window": "1h",
    "$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
}


def test_dashboard_panels_query_the_exported_metrics_in_valid_promql(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36 and dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    exprs = {}
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            exprs[f"{panel['title']} / {target['refId']}"] = target["expr"]
    used = set().union(*map(metric_names, exprs.values()))
    assert used <= EXPORTED, f"not exported by the governor: {used - EXPORTED}"
    # every governor gauge has a panel (the histograms through their buckets)
    assert JOB_GAUGES | {f"{TICK}_bucket", f"{REACTION}_bucket"} <= used

    # promtool has no expression checker: feed the queries to it as recording rules
    def concrete(expr: str) -> str:
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unresolved Grafana variable in {expr!r}"
        return expr

    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": concrete(e), "labels": {"panel": name}}
        for i, (name, e) in enumerate(exprs.items())]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    result = promtool("check", "rules", str(tmp_path / "dashboard_rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- a live governor --------------------------------------------------------------------------

def scrape(url: str) -> list:
    """Samples on the metrics endpoint ([] while Ray's metrics agent is not up yet)."""
    try:
        body = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return []
    return [s for family in text_string_to_metric_families(body) for s in family.samples]


def wait_for_metrics(url: str, job: str, job_thread: JobThread, timeout_s: float = 30.0) -> tuple[dict, bool]:
    """Scrape until every per-job gauge carries ``job`` and the tick gauge is there (Ray exports with a
    lag of seconds). Returns ``{name: labels}`` of what it saw, and whether the job was still running."""
    deadline, seen = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        running = job_thread.is_alive()
        samples = scrape(url)
        seen = {s.name: s.labels for s in samples if s.name.startswith("ray_headroom_")}
        tagged = {s.name for s in samples if s.labels.get(LABEL) == job}
        if JOB_GAUGES <= tagged and f"{TICK}_count" in seen:
            return seen, running
        time.sleep(1.0)
    raise AssertionError(f"governor metrics for job {job!r} not on {url} after {timeout_s}s; "
                         f"saw {sorted(seen)} (tagged for the job: {sorted(n for n, l in seen.items() if l.get(LABEL) == job)})")


def headroom(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it (RAY_AUTH_* come from conftest's environment)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([str(HEADROOM), *args], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)


def watch_json_lines(address: str, job: str, refreshes: int = 2, timeout_s: float = 90) -> tuple[list[dict], int]:
    """``headroom status --watch --json`` until ``refreshes`` objects list ``job``, then Ctrl-C (SIGINT).
    Run through cmd_status itself, so it does not depend on how the flag is spelled on the parser."""
    code = ("import argparse, faulthandler, signal, sys; from runtime.cli.jobs import cmd_status; "
            "faulthandler.register(signal.SIGUSR1); "  # a hang after Ctrl-C shows every thread's stack
            "sys.exit(cmd_status(argparse.Namespace(address=sys.argv[1], json=True, watch=True)))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe nobody reads would block the child
    proc = subprocess.Popen([sys.executable, "-c", code, address], stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env=env, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def stderr_tail() -> str:
        stderr.seek(0)
        return stderr.read()[-6000:]

    seen, deadline = [], time.monotonic() + timeout_s
    try:
        while len(seen) < refreshes and time.monotonic() < deadline:
            try:
                status = json.loads(lines.get(timeout=1.0))
            except queue.Empty:
                assert proc.poll() is None, f"status --watch exited early: {stderr_tail()}"
                continue
            if any(j["job"] == job for j in status.get("jobs", [])):
                seen.append(status)
        assert len(seen) >= refreshes, f"status --watch --json showed {job!r} {len(seen)} times in {timeout_s}s"
        proc.send_signal(signal.SIGINT)
        try:
            return seen, proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2.0)
            proc.kill()
            raise AssertionError(f"status --watch still running 60 s after Ctrl-C; its stacks:\n{stderr_tail()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()


def test_live_governor_exports_metrics_and_status_lists_the_job(ray_session, tmp_path):
    name = "it-observability"
    # 4,000 rows at <= 100 rows/s: the job runs for 40 s or more, long enough to look at it
    with LatencyServer(delay_s=0.002) as server, LoadThread(server.predict_url, rps=50), \
            ThreadPoolExecutor(1) as pool:
        job = JobThread(make_spec(tmp_path, name, server.metrics_url, rows_per_s=100, slices=4, rows=1000))
        job.start()
        job.wait_for(lambda s: s["rows_consumed"] > 0 and s["active"] > 0)
        metrics = pool.submit(wait_for_metrics, ray_session.metrics_url, name, job)  # meanwhile, the CLI

        table = headroom("status", "--address", ray_session.address)
        assert table.returncode == 0, table.stdout + table.stderr
        assert table.stdout.startswith("governor: poll"), table.stdout
        assert re.search(rf"^{re.escape(name)}\s+0\s+(RUN|THROTTLE|PAUSE)\s+\d+/\d+\s+\d+/\d+\s+\d+", table.stdout, re.M), table.stdout

        raw = headroom("status", "--json", "--address", ray_session.address)
        assert raw.returncode == 0, raw.stdout + raw.stderr
        entry = next(j for j in json.loads(raw.stdout)["jobs"] if j["job"] == name)
        assert entry["level"] in {"RUN", "THROTTLE", "PAUSE"} and entry["lease"] >= entry["active"]
        assert entry["priority"] == 0 and entry["pool_slots"] == 2  # the session cluster's training_pool

        watched, rc = watch_json_lines(ray_session.address, name)
        assert rc == 0, "Ctrl-C should end status --watch cleanly"
        assert all(j["level"] in {"RUN", "THROTTLE", "PAUSE"} for w in watched for j in w["jobs"] if j["job"] == name)

        seen, running = metrics.result()
        assert running, "the job finished before its metrics were seen; slow it down (rows_per_s)"
        assert seen["ray_headroom_directive_level"][LABEL] == name
        assert f"{TICK}_count" in seen
        assert set(seen) <= EXPORTED, f"exported but unknown to alerts.yml/dashboard: {set(seen) - EXPORTED}"
        summary = job.finish()
    assert_exactly_once(summary)
