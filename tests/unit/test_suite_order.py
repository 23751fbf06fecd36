"""The test suite's own scheduling: its lists name files that exist (a renamed test file would
otherwise drop out of its group silently: run beside a private cluster, or handed out last), and
pytest-xdist really applies the groups (it once grouped nothing, silently: tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import LONGEST_FIRST, OWN_CLUSTERS, ROOT, SHARED_GROUP

THIS = "tests/unit/test_suite_order.py"


def test_every_listed_group_is_a_test_file_or_the_shared_group():
    for path in sorted(OWN_CLUSTERS) + [g for g in LONGEST_FIRST if g != SHARED_GROUP]:
        assert (ROOT / path).is_file() and path.startswith("tests/") and path.endswith(".py"), path
    assert LONGEST_FIRST[0] == SHARED_GROUP  # the longest group: it must start first
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    assert not set(LONGEST_FIRST) & OWN_CLUSTERS  # a file of the shared group is never a group of its own


def test_xdist_runs_a_file_as_its_group():
    """``make test``'s own flags, on this file's first test: the test runs as ``nodeid@group``."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup",
           "--no-loadscope-reorder", "-v", f"{THIS}::test_every_listed_group_is_a_test_file_or_the_shared_group"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"the_shared_group@{THIS} " in proc.stdout, proc.stdout[-2000:]
