"""Run one governed retraining job: ``python -m jobs.retrain SPEC.yaml [--summary-out FILE]``.

The same command runs under ``ray job submit --working-dir . -- python -m jobs.retrain SPEC.yaml``,
where ``RAY_ADDRESS`` points it at the cluster.
"""

from __future__ import annotations

import sys

from runtime.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
