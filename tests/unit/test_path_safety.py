"""Names from specs cannot escape their storage root: the spec refuses them with one SpecError, and
the checkpoint store refuses them again (it is also used without a spec)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.training.checkpoint import CheckpointStore
from runtime.errors import CheckpointError, SpecError
from runtime.spec.job import spec_from_dict
from tests.unit.test_spec import valid_raw

TRAVERSALS = ["../escape", "..", ".", "a/../../escape", "/etc/escape", "..\\escape", "a\\b", ".hidden",
              "-flag", "x" * 65, "", "name\x00", "job\n", "ok/../../escape"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_spec_refuses_names_that_are_not_one_plain_folder(tmp_path, name):
    raw = dict(valid_raw(tmp_path), name=name)
    with pytest.raises(SpecError, match="name"):
        spec_from_dict(raw)


@pytest.mark.parametrize("name", [n for n in TRAVERSALS if "/" in n or "\\" in n or n in ("", ".", "..")])
def test_checkpoint_store_refuses_them_too(tmp_path, name):
    with pytest.raises(CheckpointError, match="cannot be used as a folder"):
        CheckpointStore(str(tmp_path / "root"), name)
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["root"])  # nothing created outside the root


def test_a_valid_name_stays_inside_the_root(tmp_path):
    spec = spec_from_dict(dict(valid_raw(tmp_path), name="job-1.v2_x"))
    store = CheckpointStore(str(tmp_path / "root"), spec.name)
    assert Path(store.dir).resolve().parent == (tmp_path / "root").resolve()

