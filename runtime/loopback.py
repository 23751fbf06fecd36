"""Closed by default: a private local Ray cluster listens on 127.0.0.1 only.

Ray 2.60 turns ``--node-ip-address 127.0.0.1`` (and ``ray.init(_node_ip_address="127.0.0.1")``) back
into the host's routable address (``services.resolve_ip_for_localhost``), and its GCS, raylets, core
workers, dashboard agent, metrics export and Ray Client server then listen on every interface. Ray's
single-node mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the default on Windows and macOS), makes the
node address 127.0.0.1 and every one of those servers bind to loopback; it also refuses
``ray start --address`` (joining other nodes), which a private cluster never does.

Ray reads the variable once, when it is first imported, so this module must run before anything
imports Ray: ``runtime/__init__.py`` imports it first. It is set only when no ``RAY_ADDRESS`` is given
(a driver that joins an existing cluster, e.g. under ``ray job submit``, is left alone, and joining
does not depend on it), and never overrides a value the operator set. The same goes for token
authentication: a private cluster gets ``RAY_AUTH_MODE=token`` and a fresh random token, which its
own processes inherit.

One listener is left that no setting reaches: every Serve replica binds its inter-deployment gRPC
server to ``[::]:0`` (hard-coded in ``ray/serve/_private/replica.py``). A deployment of the embedded
default calls :func:`serve_replica_on_loopback` in its constructor, which runs before that server
starts, so on a loopback node the port binds to the node's address (127.0.0.1) too, which is where
callers dial a replica: nothing else changes.

>>> import runtime  # doctest: +SKIP
>>> os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]  # doctest: +SKIP
'0'
"""

from __future__ import annotations

import ipaddress
import os
import secrets

SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def close_by_default(environ: dict | None = None) -> None:
    """Ask Ray for a loopback-only local cluster with token authentication (a token of this process's
    own) unless a cluster address or an explicit choice is set."""
    env = os.environ if environ is None else environ
    # RAY_RAYLET_PID: this is a Ray worker process, whose cluster already exists with its own settings.
    if not env.get("RAY_ADDRESS") and not env.get("RAY_RAYLET_PID"):
        env.setdefault(SINGLE_NODE_ENV, "0")
        if "RAY_AUTH_MODE" not in env:  # every Ray server then asks callers for the token
            env["RAY_AUTH_MODE"] = "token"
            env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def serve_replica_on_loopback() -> bool:
    """In a Serve replica on a loopback-only node, bind the replica's gRPC server to the node's own
    (loopback) address instead of every interface. Call it from the deployment's ``__init__``; True
    when the bind is redirected.

    Ray looks ``add_port_to_grpc_server`` up in the replica module when the replica finishes
    initialising, so wrapping that name is enough; on a Ray without it this does nothing (and the
    closed-by-default test says so).
    """
    import ray
    from ray.serve._private import replica

    node_ip = ray.util.get_node_ip_address()
    if not is_loopback(node_ip):
        return False  # a routable node: callers on other nodes must reach the replica
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:
        return False
    if getattr(bind, "headroom_loopback", False):
        return True

    host = f"[{node_ip}]" if ":" in node_ip else node_ip  # where callers dial the replica: its node's address

    def bind_on_loopback(server, address: str):
        wildcard, _, port = address.rpartition(":")
        return bind(server, f"{host}:{port}" if wildcard in ("[::]", "0.0.0.0", "") else address)

    bind_on_loopback.headroom_loopback = True
    replica.add_port_to_grpc_server = bind_on_loopback
    return True


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


close_by_default()
