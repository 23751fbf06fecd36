"""``import_skops_io`` keeps PyTorch out of a scikit-learn job's process and changes nothing skops trusts.

Each import runs in a fresh interpreter of its own (what was imported before is the point)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
{importer}
from skops.io import _trusted_types as tt
trusted = {{k: sorted(map(str, v)) for k, v in vars(tt).items() if k.isupper() and isinstance(v, list)}}
torch_before = "torch" in sys.modules
import sklearn.externals.array_api_compat.torch  # the shim marked absent during the import works after it
print(json.dumps({{"trusted": trusted, "torch_imported": torch_before, "torch_after": "torch" in sys.modules}}))
"""


def _probe(importer: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(importer=importer)], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_skops_imported_without_torch_trusts_exactly_the_same_types():
    guarded = _probe("from runtime.tracking.tracker import import_skops_io; import_skops_io()")
    plain = _probe("import skops.io")

    assert plain["torch_imported"]  # what the guard exists for: scikit-learn's package walk imports torch
    assert not guarded["torch_imported"]
    assert guarded["trusted"] == plain["trusted"] and len(guarded["trusted"]["SKLEARN_ESTIMATOR_TYPE_NAMES"]) > 100
    assert guarded["torch_after"]  # nothing left behind: the shim (and torch through it) imports as usual
