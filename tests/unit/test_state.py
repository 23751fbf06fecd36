"""Model state bytes: scikit-learn models round-trip exactly; pickles that would run code are refused, harmlessly."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.naive_bayes import MultinomialNB
from sklearn.neural_network import MLPRegressor

from runtime.errors import CheckpointError
from runtime.training.trainers.state import dumps, loads

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4))
X_POS = np.abs(X)  # MultinomialNB needs non-negative features
Y_REG = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * RNG.normal(size=64)
Y_CLS = (Y_REG > 0).astype(int)


def _fit(model, x, y, classes=None):
    for lo in range(0, len(x), 16):
        if classes is None:
            model.partial_fit(x[lo:lo + 16], y[lo:lo + 16])
        else:
            model.partial_fit(x[lo:lo + 16], y[lo:lo + 16], classes=classes)
    return model


MODELS = [
    ("sgd-regressor", lambda: SGDRegressor(random_state=0), X, Y_REG, None),
    ("sgd-classifier", lambda: SGDClassifier(random_state=0), X, Y_CLS, [0, 1]),
    ("sgd-classifier-log", lambda: SGDClassifier(loss="log_loss", random_state=0), X, Y_CLS, [0, 1]),
    ("mlp-regressor", lambda: MLPRegressor(hidden_layer_sizes=(8,), random_state=0), X, Y_REG, None),
    ("multinomial-nb", lambda: MultinomialNB(), X_POS, Y_CLS, [0, 1]),
]


@pytest.mark.parametrize("make, x, y, classes", [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_round_trip_predicts_identically(make, x, y, classes):
    model = _fit(make(), x, y, classes)
    restored = loads(dumps(model))
    assert type(restored) is type(model) and restored is not model
    np.testing.assert_array_equal(restored.predict(x), model.predict(x))
    assert restored.get_params() == model.get_params()


@pytest.mark.parametrize("make, x, y, classes", [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_restored_model_keeps_learning_like_the_original(make, x, y, classes):
    model = _fit(make(), x, y, classes)
    restored = loads(dumps(model))
    _fit(model, x[::-1], y[::-1], classes)
    _fit(restored, x[::-1], y[::-1], classes)
    np.testing.assert_array_equal(restored.predict(x), model.predict(x))


def test_unfitted_model_round_trips():
    assert loads(dumps(SGDRegressor(alpha=0.5))).alpha == 0.5


def test_numpy_values_round_trip():
    value = {"a": np.arange(5, dtype=np.int32), "b": np.float64(2.5), "rng": np.random.default_rng(3),
             "t": (1, 2.0, "x", b"y", None, True, frozenset({1}), complex(1, 2), range(3), slice(1, 2))}
    back = loads(dumps(value))
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["a"].dtype == np.int32 and back["b"] == 2.5 and back["t"] == value["t"]
    assert back["rng"].integers(1000) == np.random.default_rng(3).integers(1000)


# --- hostile pickles ----------------------------------------------------------------------------

class _Reduce:
    """Pickles as ``func(*args)``: what a hostile checkpoint would carry."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _python_touching(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _sklearn_script_runner():
    from sklearn.utils import _testing

    runner = getattr(_testing, "assert_run_python_script_without_output", None)
    if runner is None:  # older/newer scikit-learn: any scikit-learn *function* makes the point
        from sklearn.utils import check_random_state as runner
        return runner, lambda marker: (0,)
    return runner, lambda marker: (_python_touching(marker),)


HOSTILE = [
    ("os-system", lambda m: (os.system, (f"touch {m}",))),
    ("builtins-eval", lambda m: (builtins.eval, (_python_touching(m),))),
    ("builtins-exec", lambda m: (builtins.exec, (_python_touching(m),))),
    ("subprocess-popen", lambda m: (subprocess.Popen, (["touch", str(m)],))),
    ("sklearn-function", lambda m: (_sklearn_script_runner()[0], _sklearn_script_runner()[1](m))),
    ("numpy-function", lambda m: (np.save, (str(m), np.zeros(2)))),
    ("builtins-open", lambda m: (builtins.open, (str(m), "w"))),
    ("builtins-getattr", lambda m: (getattr, (SGDRegressor, "partial_fit"))),
]


@pytest.mark.parametrize("build", [h[1] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_pickle_is_refused_without_side_effect(tmp_path, build):
    marker = tmp_path / "pwned"
    func, args = build(marker)
    blob = pickle.dumps(_Reduce(func, args))
    with pytest.raises(CheckpointError) as info:
        loads(blob)
    assert "refus" in str(info.value) and info.value.fix
    assert not marker.exists() and not Path(f"{marker}.npy").exists()


def test_hostile_object_nested_inside_a_real_model_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    model = _fit(SGDRegressor(random_state=0), X, Y_REG)
    model.extra_ = _Reduce(os.system, (f"touch {marker}",))
    with pytest.raises(CheckpointError):
        loads(pickle.dumps(model))
    assert not marker.exists()


def test_numpy_memmap_cannot_touch_the_filesystem(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(_Reduce(np.memmap, (str(marker), np.uint8, "w+", 0, (4,))))
    with pytest.raises(CheckpointError):
        loads(blob)
    assert not marker.exists()


_LOAD_IN_CHILD = """
import sys
from runtime.errors import CheckpointError
from runtime.training.trainers.state import loads
try:
    loads(sys.stdin.buffer.read())
except CheckpointError:
    print("refused")
"""


def test_malformed_dtype_state_does_not_crash_the_process():
    # NumPy's own array pickle with one opcode changed: NONE -> BUILD inside the dtype's state tuple
    # (with numpy.dtype allowed, this segfaulted the loader; state.py never loads NumPy's pickle path).
    blob = pickle.dumps(np.zeros(2), protocol=pickle.HIGHEST_PROTOCOL)
    assert blob.count(b"NNNJ") == 1
    blob = blob.replace(b"NNNJ", b"NNbJ")
    # In a child: a segfault must not take the test run down with it.
    child = subprocess.run([sys.executable, "-c", _LOAD_IN_CHILD], input=blob, capture_output=True,
                           cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert child.returncode == 0, f"loader died with {child.returncode}"
    assert child.stdout.strip() == b"refused"


# --- garbage ------------------------------------------------------------------------------------

@pytest.mark.parametrize("blob", [b"", b"not a pickle", b"\x80\x05", b"\x80\x05K\x01", bytes(range(256))],
                         ids=["empty", "text", "proto-only", "no-stop", "all-bytes"])
def test_garbage_is_a_checkpoint_error(blob):
    with pytest.raises(CheckpointError):
        loads(blob)


_MODEL_BLOB = dumps(_fit(SGDRegressor(random_state=0), X, Y_REG))


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(_MODEL_BLOB) - 1))
def test_truncated_model_is_a_checkpoint_error(cut):
    with pytest.raises(CheckpointError):
        loads(_MODEL_BLOB[:cut])


# Opcodes with 8-byte lengths (BINUNICODE8, BINBYTES8, FRAME, BYTEARRAY8) are swapped for NONE here: what they
# do with absurd lengths is the known bug covered by test_absurd_lengths_are_a_checkpoint_error.
_NO_8_BYTE_LENGTHS = bytes.maketrans(b"\x8d\x8e\x95\x96", b"NNNN")


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=200).map(lambda b: b.translate(_NO_8_BYTE_LENGTHS)))
def test_random_bytes_never_escape_as_another_exception(blob):
    try:
        loads(blob)
    except CheckpointError:
        pass


@pytest.mark.parametrize("blob", [
    b"\x95\x00\x00\x00\x00\x00\x00\x00\x80",
    b"\x80\x05\x8e" + (2**62).to_bytes(8, "little") + b".",  # 4 EiB: no machine can allocate it
], ids=["frame-overflow", "binbytes8-huge"])
def test_absurd_lengths_are_a_checkpoint_error(blob):
    with pytest.raises(CheckpointError):
        loads(blob)
