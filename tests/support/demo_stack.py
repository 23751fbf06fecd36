"""The demo's long-running parts, started the way ``make demo`` starts them, then held until stdin closes.

A private local Ray cluster (``runtime.driver.job.connect``), the Ray Serve app with its latency histogram,
and the governor (which exports its metrics through Ray's metrics agent). The closed-by-default test
runs this in a child process and lists the sockets of its process tree.

    python -m tests.support.demo_stack PORT [TOKEN_FILE]
    # prints "ready <predict url> auth=<mode> gcs=<address> ports=<json of the node's ports>" then waits;
    # with TOKEN_FILE, the cluster's token goes there (mode 0600), for a test's "with the token" control
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    from runtime.driver.job import connect  # first, as the demo does: the runtime closes Ray's ports before Ray loads

    import ray

    from examples.serving import start_serving, stop_serving
    from runtime.control.governor import get_or_create_governor

    connect()
    try:
        endpoints = start_serving(http_port=int(sys.argv[1]))
        ray.get(get_or_create_governor().status.remote())
        node = next(n for n in ray.nodes() if n["Alive"])
        ports = {k: node.get(k) for k in ("NodeManagerPort", "ObjectManagerPort", "MetricsExportPort",
                                          "RuntimeEnvAgentPort", "DashboardAgentListenPort")}
        if len(sys.argv) > 2:
            fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(os.environ.get("RAY_AUTH_TOKEN", ""))
        gcs = ray.get_runtime_context().gcs_address
        compact = json.dumps(ports, separators=(",", ":"))  # one field of the line: no spaces
        print(f"ready {endpoints.predict_url} auth={os.environ.get('RAY_AUTH_MODE')} gcs={gcs} ports={compact}",
              flush=True)
        sys.stdin.read()  # until the test closes our stdin
        stop_serving()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
