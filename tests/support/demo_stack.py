"""The demo's long-running parts, started the way ``make demo`` starts them, then held until stdin closes.

A private local Ray cluster (``runtime.driver.job.connect``), the Ray Serve app with its latency histogram,
and the governor (which exports its metrics through Ray's metrics agent). The closed-by-default test
runs this in a child process and lists the sockets of its process tree.

    python -m tests.support.demo_stack PORT   # prints "ready <predict url>" then waits
"""

from __future__ import annotations

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
        print(f"ready {endpoints.predict_url} auth={os.environ.get('RAY_AUTH_MODE')}", flush=True)
        sys.stdin.read()  # until the test closes our stdin
        stop_serving()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
