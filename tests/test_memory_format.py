"""Memory formats (``cudeconv._memory_format``): channels-last inputs are taken as they are, and the
forward's y and the backward's grad_input come back in x's memory format, as in PyTorch.

Oracles: the contiguous path on copies of the same values (bitwise: the formats only move bytes),
the float64 loop reference of ``oracle.py``, and PyTorch itself — its ``conv_transpose2d/3d``
values and gradients (autograd) and the exact strides of what it returns for each input layout.
"""
import numpy as np
import pytest

import cudeconv
from cudeconv import backends
from cudeconv._dtypes import BFLOAT16
from cudeconv._geometry import make_geometry
from cudeconv._interop import take_arrays
from cudeconv._memory_format import (CHANNELS_LAST, CONTIGUOUS, is_channels_last, memory_format_of,
                                     to_memory_format)

from conftest import assert_close, skip_unless_kernel_checks_can_run, tf32_round, to_backend, to_numpy
from oracle import (conv_transpose_backward_ref, conv_transpose_backward_ref_fast, conv_transpose_ref,
                    conv_transpose_ref_fast)

FUNCTIONS = {1: (cudeconv.conv_transpose1d, cudeconv.conv_transpose1d_backward),
             2: (cudeconv.conv_transpose2d, cudeconv.conv_transpose2d_backward),
             3: (cudeconv.conv_transpose3d, cudeconv.conv_transpose3d_backward)}
KW = dict(stride=2, padding=1, output_padding=1, groups=1)


@pytest.fixture(params=("numpy", "emulator"))
def cpu_backend(request):
    """The backends that compute on NumPy arrays, hence on PyTorch CPU tensors."""
    if request.param == "emulator":
        skip_unless_kernel_checks_can_run("backend 'emulator'", backends.emulator_unavailable_reason())
    return request.param


def _channels_innermost(ndim):
    """The axes that move C of an (N, C, *spatial) array innermost."""
    return (0, *range(2, ndim), 1)


def _channels_back(ndim):
    """The axes that undo :func:`_channels_innermost`."""
    return (0, ndim - 1, *range(1, ndim - 1))


def _to_channels_last(array):
    """``array``'s values in a fresh channels-last array (C innermost in memory), logical shape kept."""
    return array.transpose(_channels_innermost(array.ndim)).copy().transpose(_channels_back(array.ndim))


def _channels_last_strides(shape, dtype):
    """The strides (bytes) of a dense channels-last array of ``shape``, from NumPy's own layout of
    the channels-innermost shape."""
    inner = np.empty(tuple(shape[a] for a in _channels_innermost(len(shape))), dtype)
    return inner.transpose(_channels_back(len(shape))).strides


def _problem(ndim, batch=2, c_in=3, c_out=2, size=3, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c_in) + (size,) * ndim).astype(dtype)
    w = rng.standard_normal((c_in, c_out) + (2,) * ndim).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    return x, w, b


def _assert_channels_last(array, name):
    assert is_channels_last(array), f"{name} has strides {array.strides}"
    assert array.strides == _channels_last_strides(array.shape, array.dtype), name


# -- NumPy (CuPy) arrays ----------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", (1, 2, 3))
def test_channels_last_arrays_give_the_contiguous_values_in_channels_last(backend, ndim):
    conv, conv_backward = FUNCTIONS[ndim]
    x, w, b = _problem(ndim)
    x_cl = _to_channels_last(x)
    assert not x_cl.flags.c_contiguous and is_channels_last(x_cl) and not is_channels_last(x)
    y_ref = conv_transpose_ref(x, w, b, **KW)
    grad_output = np.random.default_rng(1).standard_normal(y_ref.shape).astype(np.float32)
    gi_ref, gw_ref, gb_ref = conv_transpose_backward_ref(grad_output, x, w, **KW)

    xb, wb, bb, gob = (to_backend(a, backend) for a in (x, w, b, grad_output))
    xb_cl = _to_channels_last(xb)
    assert xb_cl.strides == x_cl.strides
    saved = [(to_numpy(a).copy(), a.strides) for a in (xb_cl, wb, bb, gob)]

    y = conv(xb_cl, wb, bb, backend=backend, **KW)
    _assert_channels_last(y, "y")
    y_contiguous = conv(xb, wb, bb, backend=backend, **KW)
    assert y_contiguous.flags.c_contiguous and not is_channels_last(y_contiguous)
    assert np.array_equal(to_numpy(y), to_numpy(y_contiguous))
    assert_close(y, y_ref, np.float32, terms=3 * 2 ** ndim, name="y")

    grads = conv_backward(gob, xb_cl, wb, backend=backend, **KW)
    _assert_channels_last(grads[0], "grad_input")
    assert grads[1].flags.c_contiguous  # the weight's gradient keeps the weight's layout
    for got, want, ref, name in zip(grads, conv_backward(gob, xb, wb, backend=backend, **KW),
                                    (gi_ref, gw_ref, gb_ref), ("grad_input", "grad_weight", "grad_bias")):
        assert np.array_equal(to_numpy(got), to_numpy(want)), name
        assert_close(got, ref, np.float32, terms=2 * 2 ** ndim * (x.shape[0] * 3 ** ndim), name=name)

    for array, (values, strides) in zip((xb_cl, wb, bb, gob), saved):  # inputs only read
        assert np.array_equal(to_numpy(array), values) and array.strides == strides


GEMM_KW = dict(stride=2, padding=1, output_padding=1, groups=2)


@pytest.mark.parametrize("ndim, size", ((1, 9), (3, 3)), ids=("1d", "3d"))
@pytest.mark.parametrize("dtype, precision", [(np.float32, "fp32"), (np.float32, "tf32"), (np.float32, "tf32x3"),
                                              (np.float16, "fp32"), (BFLOAT16, "fp32"), (np.float64, "fp32")],
                         ids=("f32", "tf32", "tf32x3", "f16", "bf16", "f64"))
def test_channels_last_1d_and_3d_on_the_gemms(ndim, size, dtype, precision):
    """(N, L, C) and channels_last_3d arrays on the emulator's implicit GEMMs, every pass (8 → 16
    channels in 2 groups: K sides of 4 and 8 channels a group, rows the packing pads or that are
    read in place by dtype): y and grad_input come back channels-last, every result is bitwise the
    NCHW arrays', and within the dtype's tolerance of the float64 loop reference (on TF32-rounded
    operands for tf32, whose products are exact)."""
    skip_unless_kernel_checks_can_run("backend 'emulator'", backends.emulator_unavailable_reason())
    conv, conv_backward = FUNCTIONS[ndim]
    rng = np.random.default_rng([ndim, np.dtype(dtype).num])
    x = rng.standard_normal((2, 8) + (size,) * ndim).astype(dtype)
    w = rng.standard_normal((8, 8) + (3,) * ndim).astype(dtype)
    b = rng.standard_normal(16).astype(dtype)
    y_nchw = conv(x, w, b, backend="emulator", precision=precision, **GEMM_KW)
    grad_output = rng.standard_normal(y_nchw.shape).astype(dtype)
    paths = backends.get("emulator").kernel_paths(make_geometry(ndim, x.shape, w.shape, 2, 1, 1, 2, 1), dtype,
                                                  precision=precision)
    assert [paths[p].kind for p in ("forward", "grad_input", "grad_weight")] == ["gemm"] * 3

    x_cl, grad_output_cl = _to_channels_last(x), _to_channels_last(grad_output)
    y = conv(x_cl, w, b, backend="emulator", precision=precision, **GEMM_KW)
    grads = conv_backward(grad_output_cl, x_cl, w, backend="emulator", precision=precision, **GEMM_KW)
    _assert_channels_last(y, "y")
    _assert_channels_last(grads[0], "grad_input")
    assert grads[1].flags.c_contiguous  # the weight's layout
    nchw = (y_nchw,) + tuple(conv_backward(grad_output, x, w, backend="emulator", precision=precision, **GEMM_KW))
    for got, want, name in zip((y,) + tuple(grads), nchw, ("y", "grad_input", "grad_weight", "grad_bias")):
        assert got.dtype == want.dtype and np.array_equal(got, want), name

    exact = [a.astype(np.float64) for a in (x, w, b, grad_output)]
    up = list(exact)
    if precision == "tf32":  # the GEMMs' operands; grad_bias sums grad_output as it is
        up[0], up[1], up[3] = (tf32_round(a.astype(np.float32)).astype(np.float64) for a in (x, w, grad_output))
    magnitude = [np.abs(a) for a in up]
    not_channels = (0, *range(2, ndim + 2))
    reference = (conv_transpose_ref_fast(up[0], up[1], up[2], **GEMM_KW),
                 *conv_transpose_backward_ref_fast(up[3], up[0], up[1], **GEMM_KW)[:2],
                 exact[3].sum(axis=not_channels))
    scales = (conv_transpose_ref_fast(magnitude[0], magnitude[1], magnitude[2], **GEMM_KW),
              *conv_transpose_backward_ref_fast(magnitude[3], magnitude[0], magnitude[1], **GEMM_KW)[:2],
              np.abs(exact[3]).sum(axis=not_channels))
    taps = 3 ** ndim
    terms = (4 * taps + 1, 8 * taps, 2 * size ** ndim, grad_output[0, 0].size * 2)
    for got, want, scale, count, name in zip((y,) + tuple(grads), reference, scales, terms,
                                             ("y", "grad_input", "grad_weight", "grad_bias")):
        assert_close(got, want, dtype, terms=count, scale=scale, factor=20.0 if precision == "tf32x3" else 8.0,
                     name=name)


@pytest.mark.parametrize("x_format", (CONTIGUOUS, CHANNELS_LAST))
def test_grad_output_in_the_other_format_is_converted(backend, x_format):
    """grad_input takes x's format whatever grad_output's; the values are the contiguous path's."""
    x, w, _ = _problem(2)
    y = conv_transpose_ref(x, w, **KW)
    grad_output = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    other = _to_channels_last(grad_output) if x_format == CONTIGUOUS else grad_output
    x_in = x if x_format == CONTIGUOUS else _to_channels_last(x)
    assert memory_format_of(x_in) == x_format and memory_format_of(other) != x_format
    gi, gw, gb = cudeconv.conv_transpose2d_backward(to_backend(other, backend), to_backend(x_in, backend),
                                                    to_backend(w, backend), backend=backend, **KW)
    assert memory_format_of(gi) == x_format
    expected = cudeconv.conv_transpose2d_backward(to_backend(grad_output, backend), to_backend(x, backend),
                                                  to_backend(w, backend), backend=backend, **KW)
    for got, want in zip((gi, gw, gb), expected):
        assert np.array_equal(to_numpy(got), to_numpy(want))


@pytest.mark.parametrize("shape", ((2, 1, 3, 4), (2, 3, 1, 1), (2, 1, 1, 1), (2, 1, 1, 3, 2), (2, 1, 4)))
def test_degenerate_sizes_follow_the_strides_of_the_size_one_dims(backend, shape):
    """C == 1, or all spatial sizes 1: both layouts order the memory alike and PyTorch tells them
    apart by the strides of the size-1 dims (N11..1 always contiguous): a C-contiguous array gives
    contiguous results, one laid out channels-last gives channels-last ones (PyTorch's checks below)."""
    ndim = len(shape) - 2
    conv, conv_backward = FUNCTIONS[ndim]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((shape[1], 2) + (2,) * ndim).astype(np.float32)
    x_cl = _to_channels_last(x)
    ambiguous = shape[1] == 1 and all(s == 1 for s in shape[2:])  # N11..1: the same strides too
    assert x.flags.c_contiguous and x_cl.flags.c_contiguous  # NumPy sees no difference
    assert ambiguous or x.strides != x_cl.strides
    assert is_channels_last(x_cl) is not ambiguous and not is_channels_last(x)
    for x_in in (x, x_cl):
        y = conv(to_backend(x_in, backend), to_backend(w, backend), backend=backend, stride=2)
        gi = conv_backward(y, to_backend(x_in, backend), to_backend(w, backend), backend=backend, stride=2)[0]
        for result in (y, gi):
            if is_channels_last(x_in):
                _assert_channels_last(result, "result")
            else:
                assert result.flags.c_contiguous and not is_channels_last(result)


def test_bitwise_reruns_and_the_layer_api(backend):
    x, _, _ = _problem(2, seed=4)
    x_cl = to_backend(_to_channels_last(x), backend)
    layer = cudeconv.ConvTranspose2d(3, 2, 2, stride=2, padding=1, output_padding=1, backend=backend, seed=0)
    runs = []
    for _ in range(2):
        layer.zero_grad()
        y = layer(x_cl)
        gi = layer.backward(y)
        runs.append((to_numpy(y), to_numpy(gi), to_numpy(layer.weight.grad), y.strides, gi.strides))
        _assert_channels_last(y, "layer y")
        _assert_channels_last(gi, "layer grad_input")
        assert layer.weight.grad.flags.c_contiguous
    for first, second in zip(*runs):
        assert np.array_equal(first, second) if isinstance(first, np.ndarray) else first == second
    assert np.array_equal(runs[0][0], to_numpy(layer(to_backend(x, backend))))  # the contiguous path


def test_unbatched_inputs_are_judged_as_pytorch_unsqueezes_them():
    """(C, H, W) over HWC memory gives contiguous results (unsqueeze(0) puts the new N stride at
    C·stride_C, less than the H·W·C a channels-last N needs); (C, 1, 1) over such memory is
    channels-last. PyTorch's returns are checked in test_torch_layouts_give_pytorchs_strides."""
    hwc = np.random.default_rng(5).standard_normal((4, 5, 3)).astype(np.float32)
    chw = hwc.transpose(2, 0, 1)
    batch_of_one = hwc[None].copy().transpose(0, 3, 1, 2)  # a fresh copy: N's stride H·W·C, not 0
    assert is_channels_last(batch_of_one) and not is_channels_last(chw, unbatched=True)
    assert is_channels_last(hwc[:1, :1].copy().transpose(2, 0, 1), unbatched=True)
    y = cudeconv.conv_transpose2d(chw, np.ones((3, 2, 2, 2), np.float32), backend="numpy")
    assert y.flags.c_contiguous


def test_is_channels_last_refuses_other_ranks_broadcasts_and_reversals():
    x_cl = _to_channels_last(np.zeros((2, 3, 4, 5), np.float32))
    assert is_channels_last(x_cl)
    assert not is_channels_last(x_cl[:, :, ::-1])  # a negative stride
    assert not is_channels_last(np.broadcast_to(x_cl[:, :1], x_cl.shape))  # C's stride 0
    assert not is_channels_last(np.zeros((3, 4), np.float32))
    assert not is_channels_last(np.zeros((1, 2, 3, 4, 5, 6), np.float32).transpose(0, 2, 3, 4, 5, 1))
    assert is_channels_last(x_cl[:, :, ::2])  # strided, C still innermost: PyTorch's rule says so


def test_to_memory_format_names_a_bad_format():
    with pytest.raises(ValueError, match="'nhwc'"):
        to_memory_format(np.zeros((1, 2, 3, 3), np.float32), "nhwc")


# -- PyTorch tensors ----------------------------------------------------------------------------
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _torch_layouts(torch):
    """{name: (shape, make)}: each builds a layout of a contiguous tensor of that shape."""
    cl, cl3 = torch.channels_last, torch.channels_last_3d
    to_cl = lambda t: t.to(memory_format=cl if t.dim() == 4 else cl3)
    # clone, not contiguous(): that keeps the strides of size-1 dims, which decide here
    hwc_backed = lambda t: t.movedim(0, -1).clone(memory_format=torch.contiguous_format).movedim(-1, 0)
    return {
        "contiguous": ((2, 3, 4, 5), lambda t: t),
        "channels_last": ((2, 3, 4, 5), to_cl),
        "w_major": ((2, 3, 4, 5), lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)),
        "channels_last_sliced": ((2, 3, 4, 5), lambda t: to_cl(t.repeat(1, 1, 2, 1))[:, :, ::2]),
        "broadcast_c": ((2, 3, 4, 5), lambda t: t[:, :1].expand(2, 3, 4, 5)),
        "batch_1_channels_last": ((1, 3, 4, 5), to_cl),
        "c1_contiguous": ((2, 1, 4, 5), lambda t: t),
        "c1_channels_last": ((2, 1, 4, 5), to_cl),
        "spatial_1_contiguous": ((2, 3, 1, 1), lambda t: t),
        "spatial_1_channels_last": ((2, 3, 1, 1), to_cl),
        "n111_channels_last": ((2, 1, 1, 1), to_cl),
        "empty_batch_channels_last": ((0, 3, 4, 5), to_cl),
        "3d_contiguous": ((2, 3, 2, 3, 2), lambda t: t),
        "3d_channels_last": ((2, 3, 2, 3, 2), to_cl),
        "3d_c1_channels_last": ((2, 1, 2, 3, 2), to_cl),
        "3d_spatial_1_channels_last": ((2, 3, 1, 1, 1), to_cl),
        "unbatched_hwc": ((3, 4, 5), hwc_backed),
        "unbatched_hwc_1x1": ((3, 1, 1), hwc_backed),
        "unbatched_3d_dhwc": ((3, 2, 3, 2), hwc_backed),
    }


LAYOUTS = ("contiguous", "channels_last", "w_major", "channels_last_sliced", "broadcast_c",
           "batch_1_channels_last", "c1_contiguous", "c1_channels_last", "spatial_1_contiguous",
           "spatial_1_channels_last", "n111_channels_last", "empty_batch_channels_last", "3d_contiguous",
           "3d_channels_last", "3d_c1_channels_last", "3d_spatial_1_channels_last", "unbatched_hwc",
           "unbatched_hwc_1x1", "unbatched_3d_dhwc")


def _same_layout(ours, theirs, name):
    assert ours.shape == theirs.shape, name
    if theirs.numel():  # NumPy gives zero-size arrays zero strides; only the layout flags count
        assert ours.stride() == theirs.stride(), f"{name}: {ours.stride()} vs PyTorch's {theirs.stride()}"
    assert ours.is_contiguous() == theirs.is_contiguous(), name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("grad_format", ("contiguous", "channels_last"))
def test_torch_layouts_give_pytorchs_strides_and_values(torch, cpu_backend, layout, grad_format):
    """Whatever the layout of x (and of grad_output), y and grad_input have exactly the strides
    PyTorch's conv_transpose and its autograd give them, and PyTorch's values. In float32: PyTorch's
    CPU conv_transpose3d in float64 and float16 ignores channels_last_3d (its other paths and dtypes
    keep it), so those are no oracle of the format."""
    shape, make = _torch_layouts(torch)[layout]
    spatial = len(shape) - (1 if layout.startswith("unbatched") else 2)
    conv, conv_backward = FUNCTIONS[spatial]
    reference = (torch.nn.functional.conv_transpose2d if spatial == 2 else torch.nn.functional.conv_transpose3d)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=generator).requires_grad_()
    c_in = shape[-spatial - 1]
    w = torch.randn((c_in, 2) + (2,) * spatial, generator=generator)
    x = make(base)  # a view or copy of base in the layout, still in the graph
    kw = dict(stride=2, output_padding=1)  # out = 2·in + 1: no spatial size 1 in y
    expected = reference(x, w, **kw)
    grad_output = torch.randn(expected.shape, generator=generator)
    if grad_format == "channels_last" and grad_output.dim() in (4, 5):
        grad_output = grad_output.to(memory_format=torch.channels_last if grad_output.dim() == 4
                                     else torch.channels_last_3d)
    expected_grad_input, = torch.autograd.grad(expected, x, grad_output)

    x_in = x.detach()
    x_before, strides_before = x_in.clone(), x_in.stride()
    y = conv(x_in, w, backend=cpu_backend, **kw)
    _same_layout(y, expected, "y")
    torch.testing.assert_close(y, expected.detach(), rtol=1e-5, atol=1e-5)
    grad_input, grad_weight, _ = conv_backward(grad_output, x_in, w, backend=cpu_backend, **kw)
    _same_layout(grad_input, expected_grad_input, "grad_input")
    torch.testing.assert_close(grad_input, expected_grad_input, rtol=1e-5, atol=1e-5)
    assert grad_weight.is_contiguous()
    assert torch.equal(x_in, x_before) and x_in.stride() == strides_before


@pytest.mark.parametrize("dtype_name", ("float32", "float16", "bfloat16"))
def test_torch_channels_last_values_within_the_dtypes_tolerance(torch, cpu_backend, dtype_name):
    """A channels-last tensor of each dtype: y and the gradients within the dtype's tolerance of
    PyTorch's in float64 (autograd), y and grad_input channels-last, bitwise equal to the
    contiguous path and on a rerun."""
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(1)
    x64 = torch.randn(2, 4, 3, 3, generator=generator, dtype=torch.float64)
    w64 = torch.randn(4, 3, 3, 3, generator=generator, dtype=torch.float64)
    b64 = torch.randn(6, generator=generator, dtype=torch.float64)
    x, w, b = (t.to(dtype) for t in (x64, w64, b64))  # the values both sides compute on
    x_cl = x.to(memory_format=torch.channels_last)
    xg, wg, bg = (t.to(torch.float64).requires_grad_() for t in (x, w, b))
    kw = dict(stride=2, padding=1, groups=2)
    expected = torch.nn.functional.conv_transpose2d(xg, wg, bg, **kw)
    grad_output = torch.randn(expected.shape, generator=generator, dtype=torch.float64).to(dtype)
    expected.backward(grad_output.to(torch.float64))

    y = cudeconv.conv_transpose2d(x_cl, w, b, backend=cpu_backend, **kw)
    grads = cudeconv.conv_transpose2d_backward(grad_output, x_cl, w, backend=cpu_backend, **kw)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert grads[0].is_contiguous(memory_format=torch.channels_last) and not grads[0].is_contiguous()
    numpy_dtype = BFLOAT16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
    as_float64 = lambda t: t.detach().to(torch.float64).numpy()
    assert_close(as_float64(y), as_float64(expected), numpy_dtype, terms=2 * 9, name="y")
    for got, want, terms, name in zip(grads, (xg.grad, wg.grad, bg.grad), (3 * 9, 2 * 9, 2 * 25),
                                      ("grad_input", "grad_weight", "grad_bias")):
        assert got.dtype == dtype
        assert_close(as_float64(got), as_float64(want), numpy_dtype, terms=terms, name=name)
    rerun = cudeconv.conv_transpose2d(x_cl, w, b, backend=cpu_backend, **kw)
    contiguous = cudeconv.conv_transpose2d(x, w, b, backend=cpu_backend, **kw)
    assert torch.equal(y, rerun) and torch.equal(y, contiguous)
    assert torch.equal(grads[0], cudeconv.conv_transpose2d_backward(grad_output, x, w, backend=cpu_backend,
                                                                    **kw)[0])


def test_torch_layers_keep_the_memory_format(torch, cpu_backend):
    """``layer(x)`` and ``layer.backward`` with channels_last_3d tensors: PyTorch's strides and values."""
    module = torch.nn.ConvTranspose3d(3, 2, 2, stride=2, padding=1, output_padding=1)
    layer = cudeconv.ConvTranspose3d(3, 2, 2, stride=2, padding=1, output_padding=1, backend=cpu_backend)
    layer.load_state_dict({k: v.detach() for k, v in module.state_dict().items()})
    base = torch.randn(2, 3, 2, 3, 2, requires_grad=True)
    x = base.to(memory_format=torch.channels_last_3d)
    expected = module(x)
    grad_output = torch.randn(expected.shape)
    expected_grad_input, expected_grad_weight = torch.autograd.grad(expected, (x, module.weight), grad_output)
    y = layer(x.detach())
    assert isinstance(y, torch.Tensor) and y.is_contiguous(memory_format=torch.channels_last_3d)
    _same_layout(y, expected, "y")
    torch.testing.assert_close(y, expected.detach(), rtol=1e-5, atol=1e-5)
    grad_input = layer.backward(grad_output)
    _same_layout(grad_input, expected_grad_input, "grad_input")
    torch.testing.assert_close(grad_input, expected_grad_input, rtol=1e-5, atol=1e-5)
    assert layer.weight.grad.flags.c_contiguous
    np.testing.assert_allclose(layer.weight.grad, expected_grad_weight.numpy(), rtol=1e-5, atol=1e-5)


def test_torch_1d_inputs_over_nlc_memory_keep_it(torch, cpu_backend):
    """(N, C, L) over (N, L, C) memory: y and grad_input over (N, L, C) memory too (PyTorch, having
    no 3-d channels-last format, returns them contiguous), with PyTorch's values."""
    base = torch.randn(2, 5, 3, requires_grad=True)
    x = base.transpose(1, 2)  # (2, 3, 5), C innermost
    w = torch.randn(3, 4, 3)
    expected = torch.nn.functional.conv_transpose1d(x, w, stride=2)
    grad_output = torch.randn(expected.shape)
    expected_grad_input, = torch.autograd.grad(expected, x, grad_output)
    y = cudeconv.conv_transpose1d(x.detach(), w, backend=cpu_backend, stride=2)
    grad_input = cudeconv.conv_transpose1d_backward(grad_output, x.detach(), w, backend=cpu_backend,
                                                    stride=2)[0]
    assert y.transpose(1, 2).is_contiguous() and not y.is_contiguous()
    assert grad_input.stride() == x.stride()
    torch.testing.assert_close(y, expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_input, expected_grad_input, rtol=1e-5, atol=1e-5)


def test_strides_survive_the_dlpack_trip_both_ways(torch):
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, 4, 5).to(dtype).to(memory_format=torch.channels_last)
        (taken,), give_back = take_arrays(input=x)
        assert taken.strides == tuple(s * x.element_size() for s in x.stride())
        assert taken.__array_interface__["data"][0] == x.data_ptr()  # the same memory, no copy
        result = to_memory_format(np.ascontiguousarray(taken), CHANNELS_LAST)
        back = give_back(result)
        assert back.dtype == dtype and back.stride() == x.stride()
        assert back.is_contiguous(memory_format=torch.channels_last) and torch.equal(back, x)
