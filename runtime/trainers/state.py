"""Model state as bytes, restored by a restricted unpickler.

Why not skops here: importing ``skops.io`` costs seconds (it imports every scikit-learn module, and
torch through them), and a worker pays that on every resume. Why not plain pickle: a checkpoint read
from shared storage must not be able to run code. So: pickle, but loading resolves only *classes*
defined in scikit-learn or NumPy modules and a short list of NumPy/copyreg reconstructor functions;
and Cython's ``__pyx_unpickle_*`` helpers; any other global (``os.system``, ``builtins.eval``, a scikit-learn helper function) is refused.
Models handed to people through MLflow still use MLflow's skops format.

>>> from sklearn.linear_model import SGDRegressor
>>> type(loads(dumps(SGDRegressor()))).__name__
'SGDRegressor'
"""

from __future__ import annotations

import io
import pickle

from ..errors import CheckpointError

_CLASS_MODULE_PREFIXES = ("sklearn.", "numpy.")
_ALLOWED_FUNCTIONS = {
    ("copyreg", "_reconstructor"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
}
_ALLOWED_BUILTINS = {"object", "list", "dict", "tuple", "set", "frozenset", "slice", "complex", "float", "int",
                     "bytearray", "bytes", "str", "bool", "range"}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _ALLOWED_FUNCTIONS:
            return super().find_class(module, name)
        if module.startswith(_CLASS_MODULE_PREFIXES) or module in ("numpy", "collections"):
            obj = super().find_class(module, name)
            # Classes, and the unpickle helpers Cython generates for its extension classes.
            if isinstance(obj, type) or name.startswith("__pyx_unpickle_"):
                return obj
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def dumps(model) -> bytes:
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def loads(blob: bytes):
    try:
        return _RestrictedUnpickler(io.BytesIO(blob)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
        raise CheckpointError(f"model state refused or unreadable ({exc})", where="checkpoint",
                              fix="checkpoints hold scikit-learn models only; clear the job's checkpoints if this one is foreign") from None
