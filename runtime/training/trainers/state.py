"""Model state as bytes, restored by a restricted unpickler.

Why not skops here: importing ``skops.io`` costs seconds (it imports every scikit-learn module, and
torch through them), and a worker pays that on every resume. Why not plain pickle: a checkpoint read
from shared storage must not be able to run code. So:

- NumPy arrays, scalars and dtypes are written as ``.npy`` bytes and read back with
  ``np.load(allow_pickle=False)`` — NumPy's own pickle path (``dtype.__setstate__`` with any state)
  can be driven to crash the loading process, so it is never used;
- everything else is pickle, but loading resolves only scikit-learn *classes*, NumPy's random
  generator constructors, Cython's ``__pyx_unpickle_*`` helpers, a few builtins and the loaders
  below; any other global (``os.system``, ``builtins.eval``, ``numpy.memmap``, a scikit-learn
  helper *function*) is refused.

The checkpoint container's SHA-256 rejects accidental corruption before any of this runs; the
allowlist is the defence against a crafted file. Models handed to people through MLflow use MLflow's
skops format.

>>> from sklearn.linear_model import SGDRegressor
>>> type(loads(dumps(SGDRegressor()))).__name__
'SGDRegressor'
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from runtime.errors import CheckpointError

_RANDOM_CLASSES = {("numpy.random._generator", "Generator"), ("numpy.random.mtrand", "RandomState"),
                   ("numpy.random._pcg64", "PCG64"), ("numpy.random._mt19937", "MT19937"),
                   ("numpy.random.bit_generator", "SeedSequence")}
_ALLOWED_FUNCTIONS = {
    ("copyreg", "_reconstructor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    (__name__, "_array_from_npy"),
    (__name__, "_scalar_from_npy"),
    (__name__, "_dtype_from_str"),
}
_ALLOWED_BUILTINS = {"object", "list", "dict", "tuple", "set", "frozenset", "slice", "complex", "float", "int",
                     "bytearray", "bytes", "str", "bool", "range"}


def _npy(value) -> bytes:
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    return buf.getvalue()


def _array_from_npy(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def _scalar_from_npy(blob: bytes):
    return np.load(io.BytesIO(blob), allow_pickle=False)[()]


def _dtype_from_str(spec: str) -> np.dtype:
    return np.dtype(spec)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject and type(obj) is np.ndarray:
            return _array_from_npy, (_npy(obj),)
        if isinstance(obj, np.generic) and not isinstance(obj, np.object_):
            return _scalar_from_npy, (_npy(np.asarray(obj)),)
        if isinstance(obj, np.dtype) and not obj.hasobject and obj.fields is None:
            return _dtype_from_str, (obj.str,)
        return NotImplemented


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _ALLOWED_FUNCTIONS or (module, name) in _RANDOM_CLASSES:
            return super().find_class(module, name)
        if module.startswith("sklearn."):
            obj = super().find_class(module, name)
            # scikit-learn classes, and the unpickle helpers Cython generates for its extension classes.
            if isinstance(obj, type) or name.startswith("__pyx_unpickle_"):
                return obj
        if module.startswith("numpy.random") and name.startswith("__pyx_unpickle_"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def dumps(model) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(model)
    return buf.getvalue()


def loads(blob: bytes):
    try:
        return _RestrictedUnpickler(io.BytesIO(blob)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError, IndexError,
            KeyError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"model state refused or unreadable ({exc})", where="checkpoint",
                              fix="checkpoints hold scikit-learn models only; clear the job's checkpoints if this one is foreign") from None
