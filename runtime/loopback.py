"""Closed by default: a private local Ray cluster listens on 127.0.0.1 only and asks for a token.

Ray 2.60 turns ``--node-ip-address 127.0.0.1`` (and ``ray.init(_node_ip_address="127.0.0.1")``) back
into the host's routable address (``services.resolve_ip_for_localhost``), and its GCS, raylets, core
workers, dashboard agent, metrics export and Ray Client server then listen on every interface. Ray's
single-node mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the default on Windows and macOS), makes the
node address 127.0.0.1 and every one of those servers bind to loopback; it also refuses
``ray start --address`` (joining other nodes), which a private cluster never does.

:func:`start_private_cluster` is where that happens, and nothing else here touches the environment:
importing :mod:`runtime` changes nothing. It gives the new cluster's processes (which inherit this
process's environment) single-node mode, token authentication with a fresh random token, Ray Serve
latency buckets fine enough for a p99 (:data:`SERVE_LATENCY_BUCKETS_MS`), a metrics export every
0.5 s (Ray's default is 10 s, which would leave the ingress signal 10 s old) and Ray's low metric
cardinality (a cheaper read of that endpoint); and it lowers the node's metrics agent to
:data:`SIDECAR_NICE`, so the governor's reads of it come after serving. Ray reads the first two
when it is first imported, so a caller that imported Ray already would otherwise get a cluster whose
processes want a token its driver never sends: the function also refreshes Ray's cached settings in
this process. Values the operator set are kept.

One listener is left that no setting reaches: every Serve replica binds its inter-deployment gRPC
server to ``[::]:0`` (hard-coded in ``ray/serve/_private/replica.py``). A deployment of the embedded
default calls :func:`serve_replica_on_loopback` in its constructor, which runs before that server
starts, so on a loopback node the port binds to the node's address (127.0.0.1) too, which is where
callers dial a replica: nothing else changes.

>>> start_private_cluster(num_cpus=4, resources={"training_pool": 1})  # doctest: +SKIP
>>> os.environ["RAY_AUTH_MODE"]  # doctest: +SKIP
'token'
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import secrets
import time
from pathlib import Path

SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
SERVE_BUCKETS_ENV = "RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS"
CARDINALITY_ENV = "RAY_metric_cardinality_level"
# The metrics agent renders every series for each of the governor's reads; "low" drops the task and actor
# names from Ray's task and actor gauges (one series per name and state). Measured here, the same node
# read 20 times at each setting (a one-off script): 138 ms a read idle and 166-197 ms beside two busy
# cores at Ray's default ("recommended"), 103-112 ms and 143-149 ms at "low". The interference benchmark's
# start-up line prints a read's cost: 136 ms with it, 174 ms without. Ray's dashboard shows tasks
# without their names.
METRIC_CARDINALITY = "low"
# Serve's default latency buckets jump 100 -> 200 -> 500 ms; a p99 interpolated inside one is a guess.
SERVE_LATENCY_BUCKETS_MS = (1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 125, 150, 200, 250, 300,
                            400, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)
METRICS_REPORT_INTERVAL_MS = 500  # Ray refreshes its metrics endpoint every ~1 s at this setting (no faster)
# Ray starts every worker process at nice 15 (its worker_niceness), Serve's replicas and proxies included,
# so any process on the node at nice 0 comes before serving, and a nice-19 trainer still takes ~30 % of a
# shared core from it. Headroom's training workers lower themselves (SCHED_IDLE, budget.worker_nice), so
# serving keeps nice 0. Measured here at 75 % load beside a SCHED_IDLE CPU burner on each core: client
# p99 343 ms at Ray's default against 79 ms at 0 (66-67 ms alone either way).
WORKER_NICENESS = 0
RAY_SYSTEM_CONFIG = {"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS, "worker_niceness": WORKER_NICENESS}


# The governor and Ray's metrics agent share a serving host: after serving, before training (SCHED_IDLE).
# In a quick benchmark run's governed day, at nice 0, they took 0.11 s of CPU a second beside serving
# that `none` never paid (the agent renders its whole ~0.55 MB endpoint for every read, 0.11-0.16 s of
# CPU each; the governor decides every 0.25 s): ~5 % of this 2-core host, at serving's own priority.
SIDECAR_NICE = 19


def yield_to_serving(pid: int | None = None, nice: int = SIDECAR_NICE) -> int:
    """Lower every thread of process ``pid`` (default: this one) to at least ``nice``; returns how many
    threads it lowered. Linux keeps a nice value per thread, and a Ray process's threads (its gRPC and
    event-loop threads) exist before any code of ours runs in it, so each is set; threads started later
    inherit their creator's. Best effort: a thread that is gone, or a host without ``/proc``, is skipped.

    >>> yield_to_serving(pid=os.getpid(), nice=0)  # nothing is raised: already at 0 or below it
    0
    """
    pid = os.getpid() if pid is None else pid
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return 0
    lowered = 0
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                lowered += 1
        except OSError:  # gone, or not ours
            continue
    return lowered


def metrics_agents(session_dir: str) -> list[int]:
    """The pids of this session's Ray dashboard agents (the metrics endpoint's server): the children
    titled ``ray::DashboardAgent`` of the raylet whose command line names ``session_dir``."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].endswith("/raylet") and any(session_dir in arg for arg in cmd):
            try:
                children = proc.children()
            except psutil.Error:  # the raylet is gone
                continue
            for child in children:  # one at a time: a worker that exits meanwhile must not hide the agent
                try:
                    if (child.cmdline() or [""])[0].startswith("ray::DashboardAgent"):
                        pids.append(child.pid)
                except psutil.Error:
                    continue
    return pids


def private_cluster_env(environ: dict | None = None) -> dict[str, str]:
    """The variables a private cluster's processes need that ``environ`` (default: this process's) does
    not set already: single-node mode, token authentication and its token, fine Serve latency buckets,
    and fewer of Ray's own series on the metrics endpoint the governor reads (:data:`METRIC_CARDINALITY`)."""
    env = os.environ if environ is None else environ
    out = {}
    if SINGLE_NODE_ENV not in env:
        out[SINGLE_NODE_ENV] = "0"
    if "RAY_AUTH_MODE" not in env:  # every Ray server then asks callers for the token
        out["RAY_AUTH_MODE"] = "token"
        if "RAY_AUTH_TOKEN" not in env:
            out["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if SERVE_BUCKETS_ENV not in env:
        out[SERVE_BUCKETS_ENV] = ",".join(f"{b:g}" for b in SERVE_LATENCY_BUCKETS_MS)
    if CARDINALITY_ENV not in env:
        out[CARDINALITY_ENV] = METRIC_CARDINALITY
    return out


def start_private_cluster(*, num_cpus: int, resources: dict | None = None, metrics_export_port: int | None = None,
                          **init_kwargs) -> dict:
    """Start a local Ray cluster on loopback with token authentication; returns ``ray.init``'s context.

    The variables of :func:`private_cluster_env` go into this process's environment, which the
    cluster's processes inherit (and so does a ``ray`` CLI this process runs later).
    """
    os.environ.update(private_cluster_env())
    import ray

    _refresh_ray_settings()
    system_config = {**RAY_SYSTEM_CONFIG, **(init_kwargs.pop("_system_config", None) or {})}
    context = ray.init(address="local", num_cpus=num_cpus, resources=resources or {}, include_dashboard=False,
                       _node_ip_address="127.0.0.1", log_to_driver=False, _system_config=system_config,
                       _metrics_export_port=metrics_export_port, **init_kwargs)
    _lower_metrics_agents(context.address_info.get("session_dir") or "")
    return context


def _lower_metrics_agents(session_dir: str, wait_s: float = 10.0) -> None:
    """:func:`yield_to_serving` for this session's metrics agents: the governor's reads of them come
    after serving. The raylet starts the agent, which may come up just after ``ray.init`` returns."""
    deadline = time.monotonic() + wait_s
    while session_dir:
        agents = metrics_agents(session_dir)
        if agents or time.monotonic() > deadline:
            for pid in agents:
                yield_to_serving(pid)
            return
        time.sleep(0.1)


def cluster_file() -> Path:
    """Where ``headroom run`` leaves its private cluster's address and token for this user's later
    commands (``headroom status``, ``pause``, ``resume`` from another terminal): ``$HEADROOM_HOME``,
    else ``~/.headroom``, file ``cluster.json``, readable by this user alone."""
    return Path(os.environ.get("HEADROOM_HOME") or Path.home() / ".headroom") / "cluster.json"


def remember_private_cluster(address: str) -> Path:
    """Write ``{address, token, pid}`` for this process's private cluster (mode 0600); removed when
    this process exits (:func:`forget_private_cluster`)."""
    path = cluster_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"address": address, "token": os.environ.get("RAY_AUTH_TOKEN"), "pid": os.getpid()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, path)
    atexit.register(forget_private_cluster)
    return path


def forget_private_cluster() -> None:
    """Remove the record if it is this process's (another run may have written its own since)."""
    record = _read_record(cluster_file())
    if record is not None and record.get("pid") == os.getpid():
        cluster_file().unlink(missing_ok=True)


def join_private_cluster() -> str | None:
    """The address of a private cluster that this user's ``headroom run`` started and still runs, with
    its token and single-node mode set for this process (which joins it); ``None`` when there is none."""
    record = _read_record(cluster_file())
    if record is None or not process_alive(record.get("pid"), this_user_only=True):
        return None
    if record.get("token"):
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = record["token"]
    os.environ.setdefault(SINGLE_NODE_ENV, "0")
    _refresh_ray_settings()
    return record["address"]


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("address"), str) else None


def process_alive(pid, *, this_user_only: bool = False) -> bool:
    """Whether process ``pid`` runs on this host; with ``this_user_only``, and belongs to this user."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return not this_user_only
    return True


def _refresh_ray_settings() -> None:
    """Make this process see the environment as it is now, even if it imported Ray before it was set."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    ray_constants.ENABLE_RAY_CLUSTER = os.environ.get(SINGLE_NODE_ENV, "1").lower() in ("1", "true")
    Config.initialize("")  # Ray's cached config holds the auth mode it read at import
    AuthenticationTokenLoader.instance().reset_cache()


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


def shared_host_ceiling(cores: int | None = None, training_cores: float = 1.0, heracles: float = 0.85,
                        night: float = 0.25) -> float:
    """The governed job's default load ceiling on a host that serving and training share (``make demo``,
    the interference benchmark): the share of the host serving may use while ``training_cores`` train,
    ``1 - training_cores / cores`` (``cores``: this host's), at most Heracles' 0.85, at least ``night``
    (one core has none to spare: the job trains in the night's lull). Capacity is measured with every
    core serving, so on 2 cores serving needs both of them above half of it, and a worker that holds one
    core there is in its way whatever its class: in the interference benchmark's run S (a 0.85 ceiling)
    the job resumed on the climb to the peak and took the tail to 1.78x ``none``; at 0.5 (runs V, W) it
    paused on the climb.

    >>> shared_host_ceiling(1), shared_host_ceiling(2), shared_host_ceiling(4), shared_host_ceiling(16)
    (0.25, 0.5, 0.75, 0.85)
    """
    cores = cores or os.cpu_count() or 1
    return round(min(heracles, max(night, 1.0 - training_cores / cores)), 3)
