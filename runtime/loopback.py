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
own processes inherit (the one listener Ray 2.60 cannot bind to loopback, a Serve replica's gRPC
port, then refuses callers without it).

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
    if not env.get("RAY_ADDRESS"):
        env.setdefault(SINGLE_NODE_ENV, "0")
        if "RAY_AUTH_MODE" not in env:  # the one port Ray binds beyond loopback still needs the token
            env["RAY_AUTH_MODE"] = "token"
            env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


close_by_default()
