"""Closed by default: what runtime.loopback asks of Ray for a private cluster, and what it leaves alone."""

from __future__ import annotations

from runtime.loopback import SINGLE_NODE_ENV, close_by_default


def test_a_private_cluster_is_closed_by_default_and_an_operator_choice_is_kept():
    env: dict = {}
    close_by_default(env)
    assert env[SINGLE_NODE_ENV] == "0" and env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 64
    chosen = {"RAY_AUTH_MODE": "disabled", SINGLE_NODE_ENV: "1"}
    close_by_default(chosen)
    assert chosen == {"RAY_AUTH_MODE": "disabled", SINGLE_NODE_ENV: "1"}
    joining = {"RAY_ADDRESS": "10.0.0.1:6379"}
    close_by_default(joining)
    assert joining == {"RAY_ADDRESS": "10.0.0.1:6379"}  # a cluster's own settings decide
    in_a_worker = {"RAY_RAYLET_PID": "4242"}  # a Ray worker importing the runtime: its cluster exists
    close_by_default(in_a_worker)
    assert in_a_worker == {"RAY_RAYLET_PID": "4242"}
