"""Arrays from other frameworks at the API boundary (``cudeconv._interop``): PyTorch CPU tensors
through DLPack (zero-copy in, torch tensors out), a stand-in framework for the generic path, NumPy
subclasses, and the TypeError for what is not an array."""
import sys
import types

import numpy as np
import pytest

import cudeconv
from cudeconv._dtypes import BFLOAT16
from cudeconv._interop import as_backend_array, take_arrays


def _arrays(seed=0, shape=(2, 4, 5, 4), weight_shape=(4, 2, 3, 2)):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(weight_shape).astype(np.float32),
            rng.standard_normal(weight_shape[1] * 2).astype(np.float32))


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


KW = dict(stride=2, padding=1, groups=2)


def test_torch_tensors_are_taken_without_copying(torch):
    x = torch.randn(2, 3, 4)
    taken = as_backend_array(x, "input")
    assert type(taken) is np.ndarray and np.shares_memory(taken, x.numpy())
    view = x.transpose(1, 2)  # not contiguous: DLPack carries the strides
    assert np.array_equal(as_backend_array(view, "input"), view.numpy())


def test_functional_forward_and_backward_with_torch_tensors(torch):
    x, w, b = map(torch.from_numpy, _arrays())
    x_before = x.clone()
    y = cudeconv.conv_transpose2d(x, w, b, **KW)
    expected = torch.nn.functional.conv_transpose2d(x, w, b, **KW)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)

    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    grad_output = torch.randn_like(expected)
    torch.nn.functional.conv_transpose2d(xg, wg, bg, **KW).backward(grad_output)
    grads = cudeconv.conv_transpose2d_backward(grad_output, x, w, **KW)
    assert all(isinstance(g, torch.Tensor) for g in grads)
    for ours, theirs in zip(grads, (xg.grad, wg.grad, bg.grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert torch.equal(x, x_before)  # inputs are only read


def test_mixed_inputs_come_back_as_the_foreign_kind(torch):
    x, w, b = _arrays()
    y = cudeconv.conv_transpose2d(x, torch.from_numpy(w), b, **KW)  # only the weight is a tensor
    assert isinstance(y, torch.Tensor)
    assert type(cudeconv.conv_transpose2d(x, w, b, **KW)) is np.ndarray  # NumPy in, NumPy out


def test_layer_with_a_real_torch_state_dict_and_tensors(torch):
    module = torch.nn.ConvTranspose2d(3, 4, kernel_size=3, stride=2, padding=1, output_padding=1, groups=1)
    layer = cudeconv.ConvTranspose2d(3, 4, kernel_size=3, stride=2, padding=1, output_padding=1,
                                     backend="numpy", seed=5)
    state = module.state_dict()  # an OrderedDict of torch tensors
    layer.load_state_dict(state)
    assert type(layer.weight.data) is np.ndarray
    assert np.array_equal(layer.weight.data, state["weight"].numpy())
    assert np.array_equal(layer.bias.data, state["bias"].numpy())
    assert not np.shares_memory(layer.weight.data, state["weight"].numpy())  # the layer owns a copy

    x = torch.randn(2, 3, 6, 5)
    y = layer(x)
    expected = module(x)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, expected.detach(), rtol=1e-5, atol=1e-5)
    grad_output = torch.randn_like(expected)
    grad_input = layer.backward(grad_output)
    expected.backward(grad_output)
    assert isinstance(grad_input, torch.Tensor)
    x_grad = torch.autograd.grad(module(x.requires_grad_()), x, grad_output)[0]
    torch.testing.assert_close(grad_input, x_grad, rtol=1e-4, atol=1e-4)
    # parameters and their gradients stay the backend's arrays
    assert type(layer.weight.grad) is np.ndarray
    np.testing.assert_allclose(layer.weight.grad, module.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.bias.grad, module.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_a_tensor_that_requires_grad_is_refused_by_name(torch):
    x, w, _ = map(torch.from_numpy, _arrays())
    with pytest.raises(TypeError, match=r"input: cannot take a torch\.Tensor through DLPack.*detach"):
        cudeconv.conv_transpose2d(x.requires_grad_(), w, **KW)


def test_a_dtype_numpy_lacks_is_refused_by_name(torch):
    x, w, _ = map(torch.from_numpy, _arrays())
    with pytest.raises(TypeError, match="weight: cannot take a torch.Tensor through DLPack"):
        cudeconv.conv_transpose2d(x, w.to(torch.float8_e5m2), **KW)


def test_bfloat16_tensors_go_in_and_come_back_without_copies(torch):
    """torch.bfloat16 has no NumPy dtype: it is taken as int16 and viewed as ml_dtypes' bfloat16,
    and results go back the same way (PyTorch's bfloat16 out)."""
    x, w, b = (torch.from_numpy(a).to(torch.bfloat16) for a in _arrays())
    y = cudeconv.conv_transpose2d(x, w, b, **KW)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16
    expected = torch.nn.functional.conv_transpose2d(x.double(), w.double(), b.double(), **KW)
    # float32 math on exact bfloat16 inputs, one rounding to bfloat16 (2^-8 relative) at the end
    assert torch.allclose(y.double(), expected, rtol=2.0**-7, atol=1e-2 * float(expected.abs().max()))
    taken = as_backend_array(x, "input")
    assert taken.dtype == BFLOAT16 and taken.ctypes.data == x.data_ptr()


# -- a stand-in framework: the generic path, without torch -----------------------------------------
class FakeTensor:
    """An array type of the made-up framework ``fakeframework``: DLPack only."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


@pytest.fixture
def fakeframework(monkeypatch):
    module = types.ModuleType("fakeframework")
    module.FakeTensor = FakeTensor
    module.from_dlpack = lambda array: FakeTensor(np.from_dlpack(array))
    monkeypatch.setattr(FakeTensor, "__module__", "fakeframework")
    monkeypatch.setitem(sys.modules, "fakeframework", module)
    return module


def test_any_dlpack_framework_round_trips(fakeframework):
    x, w, b = _arrays()
    y = cudeconv.conv_transpose2d(FakeTensor(x), FakeTensor(w), FakeTensor(b), **KW)
    assert isinstance(y, FakeTensor)
    np.testing.assert_array_equal(y.array, cudeconv.conv_transpose2d(x, w, b, **KW))
    grads = cudeconv.conv_transpose2d_backward(FakeTensor(np.ones(y.array.shape, np.float32)), x, w, **KW)
    assert all(isinstance(g, FakeTensor) for g in grads)


def test_a_framework_without_from_dlpack_gets_numpy_back(fakeframework, monkeypatch):
    monkeypatch.delattr(fakeframework, "from_dlpack")
    x, w, b = _arrays()
    assert type(cudeconv.conv_transpose2d(FakeTensor(x), w, b, **KW)) is np.ndarray


def test_take_arrays_gives_back_tuples_and_none(fakeframework):
    (a, none), give_back = take_arrays(input=FakeTensor(np.ones(3)), bias=None)
    assert type(a) is np.ndarray and none is None
    back = give_back((np.zeros(2), None))
    assert isinstance(back[0], FakeTensor) and back[1] is None


class CudaOnly:
    """Memory on a CUDA device, through DLPack or the CUDA array interface."""

    def __init__(self, dlpack):
        if dlpack:
            self.__dlpack__ = lambda **kwargs: None
            self.__dlpack_device__ = lambda: (2, 0)  # kDLCUDA
        else:
            self.__cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 3}


@pytest.mark.parametrize("dlpack", [True, False], ids=["dlpack", "cuda_array_interface"])
def test_gpu_memory_without_cupy_says_what_is_missing(dlpack, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy fails, as without CuPy
    with pytest.raises(TypeError, match=r"weight is a .*CudaOnly on a CUDA device; taking it needs CuPy"):
        cudeconv.conv_transpose2d(np.ones((1, 1, 2, 2), np.float32), CudaOnly(dlpack))


# -- NumPy subclasses and what is not an array -----------------------------------------------------
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix's own warning
def test_numpy_subclasses_become_plain_arrays():
    """np.matrix is 2-d only: as an unbatched 1-d input it used to fail inside NumPy ("axes don't
    match array"); at the boundary it becomes an ndarray view of the same memory."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 7))
    w = rng.standard_normal((3, 2, 4))
    matrix = np.matrix(x)
    before = matrix.copy()
    taken = as_backend_array(matrix, "input")
    assert type(taken) is np.ndarray and np.shares_memory(taken, matrix)
    y = cudeconv.conv_transpose1d(matrix, w, stride=2, backend="numpy")
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, cudeconv.conv_transpose1d(x, w, stride=2, backend="numpy"))
    np.testing.assert_array_equal(matrix, before)
    grads = cudeconv.conv_transpose1d_backward(np.ones_like(y), matrix, w, stride=2, backend="numpy")
    assert all(type(g) is np.ndarray for g in grads)


NOT_ARRAYS = [[[1.0, 2.0]], 1.5, 3, np.float32(1.0), (1.0, 2.0), "x"]


@pytest.mark.parametrize("value", NOT_ARRAYS, ids=lambda v: type(v).__name__)
def test_what_is_not_an_array_gets_the_same_type_error_everywhere(value):
    w = np.ones((2, 1, 3, 3), np.float32)
    layer = cudeconv.ConvTranspose2d(2, 1, 3, backend="numpy")
    name = type(value).__name__
    expected = rf"input must be an array \(numpy\.ndarray, cupy\.ndarray, .*\), got (numpy\.)?{name}$"
    with pytest.raises(TypeError, match=expected):
        cudeconv.conv_transpose2d(value, w)
    with pytest.raises(TypeError, match=expected):
        layer(value)
    with pytest.raises(TypeError, match=expected):
        cudeconv.conv_transpose2d_backward(np.ones((1, 1, 4, 4), np.float32), value, w)
    with pytest.raises(TypeError, match=rf"weight must be an array .*got (numpy\.)?{name}$"):
        cudeconv.conv_transpose2d(np.ones((1, 2, 2, 2), np.float32), value)
    layer(np.ones((1, 2, 2, 2), np.float32))
    with pytest.raises(TypeError, match=rf"grad_output must be an array .*got (numpy\.)?{name}$"):
        layer.backward(value)
    with pytest.raises(TypeError, match=r"state_dict\['weight'\] must be an array"):
        layer.load_state_dict({"weight": value, "bias": np.zeros(1, np.float32)})
