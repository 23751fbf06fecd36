"""The test suite's own scheduling lists name files that exist: a renamed test file would otherwise
drop out of its group silently (run beside a private cluster, or handed out last)."""

from __future__ import annotations

from tests.conftest import LONGEST_FIRST, OWN_CLUSTERS, ROOT


def test_every_listed_group_is_a_test_file_or_the_shared_group():
    for path in sorted(OWN_CLUSTERS) + [g for g in LONGEST_FIRST if g != "own-clusters"]:
        assert (ROOT / path).is_file() and path.startswith("tests/") and path.endswith(".py"), path
    assert LONGEST_FIRST[0] == "own-clusters"  # the longest group: it must start first
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
