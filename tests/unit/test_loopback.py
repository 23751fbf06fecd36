"""Closed by default: what runtime.loopback asks of Ray for a private cluster, and what it leaves alone."""

from __future__ import annotations

import pytest

from runtime.loopback import SINGLE_NODE_ENV, close_by_default, serve_replica_on_loopback


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


@pytest.mark.parametrize("node_ip, expected", [("127.0.0.1", "127.0.0.1:0"), ("::1", "[::1]:0"),
                                               ("10.0.0.5", "[::]:0")])
def test_a_serve_replica_binds_its_grpc_port_where_its_node_is_dialled(monkeypatch, node_ip, expected):
    """Ray 2.60's replica binds "[::]:0"; on a loopback node the wrapper binds the node's address instead,
    and on a routable node (callers on other hosts) it leaves Ray alone."""
    import ray
    from ray.serve._private import replica

    bound = []
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda server, address: bound.append(address) or 4242)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: node_ip)
    redirected = serve_replica_on_loopback()
    assert serve_replica_on_loopback() == redirected  # idempotent: a second call does not wrap twice
    assert replica.add_port_to_grpc_server(object(), "[::]:0") == 4242
    assert bound == [expected] and redirected == (expected != "[::]:0")
    replica.add_port_to_grpc_server(object(), "127.0.0.1:5000")
    assert bound[-1] == "127.0.0.1:5000"  # an explicit address is kept
