"""The fault tier runs in ``make test``; its slowest cases (minutes each on a 2-core machine: several job
runs, or an MLflow server started twice) run only when ``HEADROOM_SLOW_TESTS=1`` — in CI, and with
``make test-faults``."""

from __future__ import annotations

import os

import pytest

SLOW_ENV = "HEADROOM_SLOW_TESTS"


def pytest_collection_modifyitems(config, items):
    if os.environ.get(SLOW_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow fault test: set {SLOW_ENV}=1 (CI, make test-faults)")
    for item in items:
        if item.get_closest_marker("slow") and "tests/faults" in str(item.path):
            item.add_marker(skip)
