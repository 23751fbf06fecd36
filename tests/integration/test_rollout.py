"""Shadow -> stages -> champion, and automatic rollback, on a real Ray Serve router and a real MLflow store.

The router (examples/router.py) runs on the session's Ray cluster with Serve on 127.0.0.1; a client
thread sends live requests with labelled feedback; the controller (runtime/release/rollout.py) steers the
router through its deployment handle and moves aliases in an MLflow SQLite store in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import ray
from ray import serve

from mlflow import MlflowClient  # noqa: E402

from examples.router import start_router, stop_router  # noqa: E402
from runtime.release.registry import PREVIOUS_CHAMPION, alias_version  # noqa: E402
from runtime.release.rollout import ServeRouter, run_rollout  # noqa: E402
from runtime.spec.release import ReleaseSpec  # noqa: E402
from runtime.tracking.tracker import CHALLENGER, CHAMPION  # noqa: E402
from tests.support import free_port  # noqa: E402
from tests.support.release import N_FEATURES, LabelledTraffic, fit_linear, register_sklearn, register_slow  # noqa: E402

pytestmark = pytest.mark.integration

NAME = "routed-model"


def _plan(**budget) -> ReleaseSpec:
    return ReleaseSpec.model_validate({
        "shadow": {"fraction": 0.5, "duration_s": 4, "min_agreement": 0.5, "agreement_tolerance": 1.0,
                   "max_metric_drop": 0.05},
        "stages": [{"percent": 25, "hold_s": 3}, {"percent": 60, "hold_s": 3}, {"percent": 100, "hold_s": 3}],
        "risk_budget": {"max_p99_increase_ratio": 1.0, "max_p99_increase_ms": 250, "max_error_rate": 0.0,
                        "max_prediction_drift": 0.5, "min_requests": 10, "max_wait_s": 60, **budget},
        "poll_interval_s": 0.5,
    })


@pytest.fixture()
def routed(ray_session, tmp_path):
    """``(uri, start)``: ``start()`` deploys the router once the test has registered its versions."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = []

    def start():
        started.append(None)  # from here on, Serve may be running
        endpoints = start_router(uri, NAME, http_port=free_port(), seed=3)
        started[-1] = LabelledTraffic(endpoints.predict_url, endpoints.feedback_url)
        started[-1].start()
        return endpoints, started[-1]

    yield uri, start
    if started:
        if started[-1] is not None:
            started[-1].stop()
        stop_router()  # deletes the app and shuts Serve down; the session's Ray cluster stays


def _run(uri: str, plan: ReleaseSpec, traffic: LabelledTraffic) -> dict:
    try:
        result = run_rollout(NAME, plan, ServeRouter(), tracking_uri=uri, experiment="releases", metric="r2")
    finally:
        traffic.stop()
    print(f"\n{result['outcome']} ({result['reason']}: {result['detail']}) after {result['duration_s']:.1f} s")
    for p in result["phases"]:  # the figures measured, printed rather than asserted
        print(f"  {p['phase']:<16} champion n={p['champion_requests']} p99={_ms(p['champion_p99_ms'])} | challenger "
              f"n={p['challenger_requests']} p99={_ms(p['challenger_p99_ms'])} drift={_ms(p['drift'])} "
              f"agreement={_ms(p['agreement'])} r2 {_ms(p['metric_champion'])} -> {_ms(p['metric_challenger'])}")
    return result


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _run_artifacts(uri: str, run_id: str) -> set[str]:
    return {f.path for f in MlflowClient(uri).list_artifacts(run_id, "release")}


def test_a_clearly_better_candidate_goes_shadow_then_stages_then_champion(routed):
    uri, start = routed
    champion = register_sklearn(uri, NAME, fit_linear(rows=20, seed=1, label_noise=1.0), has_champion=False)  # few, noisy labels
    challenger = register_sklearn(uri, NAME, fit_linear(rows=4000, seed=2), has_champion=True)
    client = MlflowClient(uri)
    assert (alias_version(client, NAME, CHAMPION), alias_version(client, NAME, CHALLENGER)) == (champion, challenger)
    endpoints, traffic = start()

    result = _run(uri, _plan(), traffic)

    assert result["outcome"] == "promoted", result["detail"]
    assert [d["action"] for d in result["decisions"] if d["action"] != "hold"] == \
        ["advance", "advance", "advance", "promote"]
    assert [p["percent"] for p in result["phases"]] == [0, 25, 60, 100]
    shadow = result["phases"][0]
    assert shadow["pairs"] > 0 and shadow["agreement"] >= 0.5
    assert shadow["champion_p99_ms"] is not None and shadow["challenger_p99_ms"] is not None
    assert shadow["metric_challenger"] > shadow["metric_champion"]  # better on the labelled feedback
    assert all(p["challenger_requests"] >= 10 for p in result["phases"][1:])

    assert alias_version(client, NAME, CHAMPION) == challenger
    assert alias_version(client, NAME, PREVIOUS_CHAMPION) == champion
    assert alias_version(client, NAME, CHALLENGER) is None
    run = client.get_run(result["run_id"])
    assert run.data.tags["headroom.release.outcome"] == "promoted"
    splits = {m.value for m in client.get_metric_history(result["run_id"], "split_percent")}
    assert {0.0, 25.0, 60.0, 100.0} <= splits
    assert {"release/report.md", "release/latency.png", "release/shadow.png", "release/decisions.json",
            "release/events.json"} <= _run_artifacts(uri, result["run_id"])
    report = Path(client.download_artifacts(result["run_id"], "release/report.md"))
    assert "PROMOTED" in report.read_text() and "![latency](latency.png)" in report.read_text()

    # Every live request was answered; the router now serves the new champion alone.
    assert traffic.responses and all(code == 200 for code, _ in traffic.responses), traffic.responses[-3:]
    assert not traffic.feedback_failures, traffic.feedback_failures[:3]
    after = httpx.post(endpoints.predict_url, json={"instances": [[0.0] * N_FEATURES]}, timeout=30).json()
    assert (after["model"], after["version"]) == ("champion", challenger)


def test_a_candidate_that_breaches_the_latency_budget_is_rolled_back(routed, tmp_path):
    uri, start = routed
    champion = register_sklearn(uri, NAME, fit_linear(rows=4000, seed=2), has_champion=False)
    challenger = register_slow(uri, NAME, fit_linear(rows=4000, seed=4), tmp_path, delay_s=0.5)
    endpoints, traffic = start()

    result = _run(uri, _plan(), traffic)

    assert result["outcome"] == "rolled_back", result["detail"]
    assert result["reason"] == "p99_breach"
    actions = [d["action"] for d in result["decisions"] if d["action"] != "hold"]
    assert actions[0] == "advance" and actions[-1] == "rollback"  # it passed shadow, then breached in a stage
    assert result["decisions"][-1]["split_percent"] == 0
    breached = result["phases"][-1]
    assert breached["percent"] > 0 and breached["challenger_p99_ms"] >= 500  # every call sleeps 0.5 s

    client = MlflowClient(uri)
    assert alias_version(client, NAME, CHAMPION) == champion  # champion is the old version, never unset
    assert alias_version(client, NAME, CHALLENGER) is None
    assert "p99_breach" in client.get_model_version(NAME, str(challenger)).tags["headroom.release.abort"]
    assert client.get_run(result["run_id"]).data.tags["headroom.release.outcome"] == "rolled_back"
    assert "release/report.md" in _run_artifacts(uri, result["run_id"])

    # The slow challenger never broke a response, and the champion serves everything again.
    assert traffic.responses and all(code == 200 for code, _ in traffic.responses), traffic.responses[-3:]
    assert not traffic.feedback_failures, traffic.feedback_failures[:3]
    after = httpx.post(endpoints.predict_url, json={"instances": [[0.0] * N_FEATURES]}, timeout=30).json()
    assert (after["model"], after["version"]) == ("champion", champion)
