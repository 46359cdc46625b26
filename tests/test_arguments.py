"""Argument checking at every public entry point: the ``dtype`` of the layers (one reader,
``cudeconv._dtypes.float_dtype``) and the required array arguments of the functional API and the
layers, which must raise TypeError naming the argument rather than fail somewhere inside."""
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import cudeconv
from cudeconv import functional
from cudeconv._dtypes import FLOAT_DTYPES, float_dtype

LAYERS = {1: cudeconv.ConvTranspose1d, 2: cudeconv.ConvTranspose2d, 3: cudeconv.ConvTranspose3d}
FORWARDS = {1: cudeconv.conv_transpose1d, 2: cudeconv.conv_transpose2d, 3: cudeconv.conv_transpose3d}
BACKWARDS = {1: cudeconv.conv_transpose1d_backward, 2: cudeconv.conv_transpose2d_backward,
             3: cudeconv.conv_transpose3d_backward}
CHOICES = "float16, bfloat16, float32, float64"

# ------------------------------------------------------------------------------------- dtype

ACCEPTED = [
    (None, "float32"),  # PyTorch's default
    ("float32", "float32"), ("f4", "float32"), ("float64", "float64"), ("double", "float64"),
    ("float16", "float16"), ("half", "float16"), ("bfloat16", "bfloat16"),
    (np.float32, "float32"), (np.float16, "float16"), (np.dtype(np.float64), "float64"),
    (ml_dtypes.bfloat16, "bfloat16"), (np.dtype(ml_dtypes.bfloat16), "bfloat16"),
]
# torch's dtypes by attribute name (torch is imported by the tests that use them)
TORCH_ACCEPTED = [("float32", "float32"), ("float64", "float64"), ("double", "float64"),
                  ("float16", "float16"), ("half", "float16"), ("bfloat16", "bfloat16")]
TORCH_REFUSED = ["int32", "complex64", "bool", "float8_e4m3fn", "uint8"]


@pytest.mark.parametrize("value, name", ACCEPTED, ids=[repr(v) for v, _ in ACCEPTED])
def test_layer_dtype_accepts_numpy_and_ml_dtypes_forms(value, name):
    _check_layer_dtype(value, name)


@pytest.mark.parametrize("attribute, name", TORCH_ACCEPTED)
def test_layer_dtype_accepts_torch_dtypes(attribute, name):
    torch = pytest.importorskip("torch", reason="torch dtypes need torch (installed in the dev venv)")
    _check_layer_dtype(getattr(torch, attribute), name)


def _check_layer_dtype(value, name):
    layer = cudeconv.ConvTranspose2d(2, 3, 2, dtype=value, backend="numpy", seed=0)
    assert layer.dtype == np.dtype(name) and layer.dtype.name == name
    assert layer.weight.dtype == np.dtype(name) and layer.bias.dtype == np.dtype(name)
    assert f"dtype={name}," in repr(layer)
    y = layer(np.ones((1, 2, 3, 3), dtype=name))
    assert y.dtype == np.dtype(name)


REFUSED = [
    "nonsense", "float8", "int32", ">f4", "float32 ", "", "f4,f4", 123, 4.0, True, float, int,
    np.int32, np.complex64, np.dtype("V2"), np.dtype(">f8"), np.dtype("U3"), object(),
    np.zeros(2, np.float32),
]


@pytest.mark.parametrize("value", REFUSED, ids=[repr(v)[:40] for v in REFUSED])
def test_layer_dtype_refuses_everything_else_naming_argument_value_and_choices(value):
    """Item 1: "nonsense", "float8", 123 (and torch.float32) all built a float64 layer whose repr
    said dtype=None."""
    _check_refused(value)


@pytest.mark.parametrize("attribute", TORCH_REFUSED)
def test_layer_dtype_refuses_torch_dtypes_it_does_not_compute_in(attribute):
    torch = pytest.importorskip("torch", reason="torch dtypes need torch (installed in the dev venv)")
    _check_refused(getattr(torch, attribute))


def test_layer_dtype_refuses_a_tensor():
    torch = pytest.importorskip("torch", reason="torch tensors need torch (installed in the dev venv)")
    _check_refused(torch.zeros(2, dtype=torch.float32))  # a tensor is not a dtype


def _check_refused(value):
    with pytest.raises(TypeError) as info:
        cudeconv.ConvTranspose2d(2, 3, 2, dtype=value, backend="numpy")
    message = str(info.value)
    assert message.startswith("dtype must be one of " + CHOICES)
    assert message.endswith(f"got {value!r}")


@pytest.mark.parametrize("layer", LAYERS.values(), ids=["1d", "2d", "3d"])
def test_every_layer_reads_its_dtype_the_same_way(layer):
    assert layer(2, 2, 1, dtype=ml_dtypes.bfloat16, backend="numpy").dtype == np.dtype(ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match="dtype must be one of"):
        layer(2, 2, 1, dtype="float8", backend="numpy")


def test_float_dtype_names_the_argument_it_is_given():
    assert float_dtype("bfloat16", "param_dtype") in FLOAT_DTYPES
    with pytest.raises(TypeError, match=re.escape(f"param_dtype must be one of {CHOICES}")):
        float_dtype("int8", "param_dtype")


_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # an import of torch now raises ImportError, as where it is not installed
import numpy as np
import cudeconv
for value in ("float16", np.float64, "bfloat16"):
    layer = cudeconv.ConvTranspose2d(2, 3, 2, dtype=value, backend="numpy")
    assert layer.dtype.name == np.dtype(value).name, layer.dtype
try:
    cudeconv.ConvTranspose2d(2, 3, 2, dtype="nonsense", backend="numpy")
except TypeError as exc:
    assert "dtype must be one of" in str(exc), exc
else:
    raise AssertionError("dtype='nonsense' accepted")
assert sys.modules["torch"] is None
"""


def test_dtype_is_read_without_torch():
    """The torch dtype is recognised by its type: no import of torch, which may not be installed."""
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ required array arguments

def _arrays(nd, dtype=np.float32):
    """x (1, 2, 3...), weight (2, 2, 2...), bias (2,), grad_output (1, 2, 4...): stride 1, no padding."""
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((1, 2) + (3,) * nd).astype(dtype)
    weight = rng.standard_normal((2, 2) + (2,) * nd).astype(dtype)
    bias = rng.standard_normal(2).astype(dtype)
    grad_output = rng.standard_normal((1, 2) + (4,) * nd).astype(dtype)
    return x, weight, bias, grad_output


NOT_ARRAYS = [(None, "None"), ([[1.0, 2.0]], "list"), (2.5, "float"), (np.float32(1), "numpy.float32"),
              ("x", "str")]


def _refused(call, name, value, got):
    with pytest.raises(TypeError, match=rf"^{name} must be an array \(.*\), got {re.escape(got)}$"):
        call()


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("value, got", NOT_ARRAYS, ids=[g for _, g in NOT_ARRAYS])
def test_functional_forward_refuses_missing_or_non_array_input_and_weight(nd, value, got):
    """Item 2: conv_transpose2d(None, w) raised AttributeError: 'NoneType' object has no attribute 'ndim'."""
    x, weight, bias, _ = _arrays(nd)
    conv = FORWARDS[nd]
    _refused(lambda: conv(value, weight, bias, backend="numpy"), "input", value, got)
    _refused(lambda: conv(x, value, bias, backend="numpy"), "weight", value, got)
    _refused(lambda: functional.forward(nd, value, weight), "input", value, got)
    _refused(lambda: functional.forward(nd, x, value), "weight", value, got)
    if value is not None:
        _refused(lambda: conv(x, weight, value, backend="numpy"), "bias", value, got)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_functional_forward_takes_bias_none(nd):
    x, weight, bias, _ = _arrays(nd)
    with_bias = FORWARDS[nd](x, weight, bias, backend="numpy")
    without = FORWARDS[nd](x, weight, None, backend="numpy")
    np.testing.assert_allclose(with_bias - without, np.broadcast_to(bias.reshape((1, 2) + (1,) * nd),
                                                                     with_bias.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("value, got", NOT_ARRAYS, ids=[g for _, g in NOT_ARRAYS])
def test_functional_backward_refuses_missing_or_non_array_arguments(nd, value, got):
    x, weight, _, grad_output = _arrays(nd)
    backward = BACKWARDS[nd]
    _refused(lambda: backward(value, x, weight, backend="numpy"), "grad_output", value, got)
    _refused(lambda: backward(grad_output, value, weight, backend="numpy"), "input", value, got)
    _refused(lambda: backward(grad_output, x, value, backend="numpy"), "weight", value, got)
    _refused(lambda: functional.backward(nd, value, x, weight), "grad_output", value, got)
    _refused(lambda: functional.backward(nd, grad_output, value, weight), "input", value, got)
    _refused(lambda: functional.backward(nd, grad_output, x, value), "weight", value, got)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("value, got", NOT_ARRAYS, ids=[g for _, g in NOT_ARRAYS])
def test_layer_forward_and_backward_refuse_missing_or_non_array_arguments(nd, value, got):
    x, _, _, grad_output = _arrays(nd)
    layer = LAYERS[nd](2, 2, 2, backend="numpy", seed=0)
    _refused(lambda: layer(value), "input", value, got)
    _refused(lambda: layer.forward(value), "input", value, got)
    layer(x)
    _refused(lambda: layer.backward(value), "grad_output", value, got)
    assert layer.weight.grad is None and layer.bias.grad is None  # nothing accumulated
    assert layer.backward(grad_output).shape == x.shape  # the cached input is still usable
