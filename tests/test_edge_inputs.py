"""Edge inputs: paddings that crop a huge canvas down to a few outputs, integer NumPy arrays as
hyperparameters, dtype=None (issue 13, items 3, 8 and 9)."""
import tracemalloc

import numpy as np
import pytest

import cudeconv
from cudeconv._geometry import make_geometry
from cudeconv.backends import numpy_backend

from conftest import assert_close, to_backend, to_numpy
from oracle import conv_transpose_backward_ref, conv_transpose_ref


def _peak_bytes(fn):
    """Peak memory NumPy and Python allocated while ``fn`` ran (NumPy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------- item 3: work bounded by the output

def test_stride_and_padding_of_1e11_give_three_outputs():
    """The padded canvas would be 2·10¹¹ elements (2.18 TiB as float64); the output has 3."""
    x, w = np.ones((1, 1, 3)), np.ones((1, 1, 1))
    kw = dict(stride=10**11, padding=10**11 - 1)
    peak = _peak_bytes(lambda: cudeconv.conv_transpose1d(x, w, **kw))
    y = cudeconv.conv_transpose1d(x, w, **kw)
    # Input 1 lands at 10¹¹ - (10¹¹ - 1) = 1; inputs 0 and 2 land at -10¹¹ + 1 and 10¹¹ + 1.
    np.testing.assert_array_equal(y, [[[0.0, 1.0, 0.0]]])
    np.testing.assert_array_equal(y, conv_transpose_ref(x, w, **kw))
    gy = np.array([[[5.0, 7.0, 11.0]]])
    gx, gw, gb = cudeconv.conv_transpose1d_backward(gy, x, w, **kw)
    np.testing.assert_array_equal(gx, [[[0.0, 7.0, 0.0]]])
    np.testing.assert_array_equal(gw, [[[7.0]]])
    np.testing.assert_array_equal(gb, [23.0])
    assert peak < 1 << 20, f"forward of a 3-element output peaked at {peak} bytes"


def test_huge_stride_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 2, 3))
    w = np.random.default_rng(1).standard_normal((2, 3, 2))
    kw = dict(stride=10**11, padding=10**11 - 1)
    y_t = torch.nn.functional.conv_transpose1d(torch.tensor(x), torch.tensor(w), **kw).numpy()
    assert_close(cudeconv.conv_transpose1d(x, w, **kw), y_t, np.float64, 4)


def test_stride_1e7_on_every_backend(backend):
    """Within the kernels' 32-bit limits: every backend gives the oracle's few outputs, and the
    NumPy backend's memory stays far below the 10⁷-element canvas (was +393 MiB)."""
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 2, 3)), rng.standard_normal(2)
    kw = dict(stride=10**7, padding=10**7 - 2)
    y = cudeconv.conv_transpose1d(*(to_backend(a, backend) for a in (x, w, b)), **kw, backend=backend)
    assert to_numpy(y).shape == (2, 2, 7)  # 2·10⁷ - 2·(10⁷ - 2) + 2 + 1
    assert_close(y, conv_transpose_ref(x, w, b, **kw), np.float64, 4)
    gy = rng.standard_normal((2, 2, 7))
    got = cudeconv.conv_transpose1d_backward(*(to_backend(a, backend) for a in (gy, x, w)), **kw,
                                             backend=backend)
    for g, ref, name in zip(got, conv_transpose_backward_ref(gy, x, w, **kw), ("gx", "gw", "gb")):
        assert_close(g, ref, np.float64, 12, name=name)
    if backend == "numpy":
        peak = _peak_bytes(lambda: (cudeconv.conv_transpose1d(x, w, b, **kw),
                                    cudeconv.conv_transpose1d_backward(gy, x, w, **kw)))
        assert peak < 1 << 20, peak


@pytest.mark.parametrize("stride, in_size", [(1, 4), (4, 5)], ids=["combs", "stride-phases"])
def test_huge_dilation_and_padding_stay_small(stride, in_size):
    """Taps 10⁹ apart, padding 10⁹: the canvas has 2·10⁹ + 17 positions, but only the middle tap
    lands in the output, (in - 1)·stride + 1 positions."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 2, in_size)), rng.standard_normal((2, 3, 3))
    kw = dict(stride=stride, padding=10**9, dilation=10**9)
    y = cudeconv.conv_transpose1d(x, w, **kw)
    assert y.shape == (2, 3, (in_size - 1) * stride + 1)
    assert_close(y, conv_transpose_ref(x, w, **kw), np.float64, 4)
    gy = rng.standard_normal(y.shape)
    for g, ref, name in zip(cudeconv.conv_transpose1d_backward(gy, x, w, **kw),
                            conv_transpose_backward_ref(gy, x, w, **kw), ("gx", "gw", "gb")):
        assert_close(g, ref, np.float64, 8, name=name)
    peak = _peak_bytes(lambda: (cudeconv.conv_transpose1d(x, w, **kw),
                                cudeconv.conv_transpose1d_backward(gy, x, w, **kw)))
    assert peak < 1 << 20, peak


def _random_cropping_geometry(rng, nd):
    """A small geometry whose padding crops much of the canvas away (often whole inputs)."""
    in_size = tuple(int(v) for v in rng.integers(1, 5, nd))
    kernel = tuple(int(v) for v in rng.integers(1, 5, nd))
    stride = tuple(int(v) for v in rng.integers(1, 7, nd))
    dilation = tuple(int(v) for v in rng.integers(1, 4, nd))
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    padding = []
    for i, k, s, d, op in zip(in_size, kernel, stride, dilation, output_padding):
        canvas = (i - 1) * s + d * (k - 1) + 1 + op
        padding.append(int(rng.integers(0, (canvas - 1) // 2 + 1)))  # out = canvas - 2p ≥ 1
    groups = int(rng.choice([1, 2]))
    return in_size, kernel, dict(stride=stride, padding=tuple(padding), output_padding=output_padding,
                                 dilation=dilation, groups=groups)


def test_cropping_paddings_match_the_oracle():
    """Random geometries with large paddings, forward and backward against the naive loops; the
    batch runs cover inputs that reach nothing, taps that reach nothing, and both target layouts."""
    rng = np.random.default_rng(4)
    seen = {"inputs cut": 0, "stride phases": 0, "idle taps": 0}
    for case in range(60):
        nd = 1 + case % 3
        in_size, kernel, kw = _random_cropping_geometry(rng, nd)
        groups = kw["groups"]
        x = rng.standard_normal((2, 2 * groups) + in_size)
        w = rng.standard_normal((2 * groups, 2) + kernel)
        b = rng.standard_normal(2 * groups)
        geom = make_geometry(nd, x.shape, w.shape, kw["stride"], kw["padding"],
                             kw["output_padding"], groups, kw["dilation"])
        plan = numpy_backend._tap_plan(geom)
        seen["inputs cut"] += not plan.whole_input
        seen["stride phases"] += plan.phased
        seen["idle taps"] += bool(plan.idle_taps)
        fwd = getattr(cudeconv, f"conv_transpose{nd}d")
        bwd = getattr(cudeconv, f"conv_transpose{nd}d_backward")
        terms = 2 * int(np.prod(kernel))
        assert_close(fwd(x, w, b, **kw), conv_transpose_ref(x, w, b, **kw), np.float64, terms,
                     name=f"case {case} {kw}")
        gy = rng.standard_normal(geom.output_shape)
        for got, ref, name in zip(bwd(gy, x, w, **kw), conv_transpose_backward_ref(gy, x, w, **kw),
                                  ("grad_input", "grad_weight", "grad_bias")):
            assert_close(got, ref, np.float64, gy[0, 0].size * 2 * terms, name=f"case {case} {name}")
    assert all(count >= 3 for count in seen.values()), seen


def test_output_that_no_input_reaches_is_the_bias(backend):
    """Stride 10, padding 5: input 0 lands at -5, input 1 at 5, the single output position is 0."""
    x, w, b = np.full((2, 1, 2), 3.0), np.full((1, 2, 1), 2.0), np.array([0.5, -1.0])
    kw = dict(stride=10, padding=5)
    y = cudeconv.conv_transpose1d(*(to_backend(a, backend) for a in (x, w, b)), **kw, backend=backend)
    np.testing.assert_array_equal(to_numpy(y), np.broadcast_to(b[:, None], (2, 2, 1)))
    gy = to_backend(np.ones((2, 2, 1)), backend)
    gx, gw, gb = cudeconv.conv_transpose1d_backward(gy, *(to_backend(a, backend) for a in (x, w)), **kw,
                                                    backend=backend)
    np.testing.assert_array_equal(to_numpy(gx), np.zeros(x.shape))
    np.testing.assert_array_equal(to_numpy(gw), np.zeros(w.shape))
    np.testing.assert_array_equal(to_numpy(gb), [2.0, 2.0])


def test_nan_in_an_input_that_reaches_nothing_stays_out():
    """Inputs cut away by the padding never meet the output: a NaN there reaches no result."""
    x = np.ones((1, 1, 5))
    x[0, 0, 0] = np.nan  # lands at 0·10 - 15 + k < 0 for every tap
    w = np.ones((1, 1, 3))
    kw = dict(stride=10, padding=15)
    y = cudeconv.conv_transpose1d(x, w, **kw)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y, conv_transpose_ref(np.nan_to_num(x), w, **kw))
    gx, gw, _ = cudeconv.conv_transpose1d_backward(np.ones(y.shape), x, w, **kw)
    assert np.isfinite(gw).all() and gx[0, 0, 0] == 0


# ---------------------------------------------------- item 9: integer NumPy arrays as hyperparameters

@pytest.mark.parametrize("kw", [
    dict(stride=np.array(2), padding=np.array([1, 1])),
    dict(stride=np.array([2, 1], dtype=np.int32), dilation=np.array(2, dtype=np.uint8)),
    dict(stride=(np.array(2), 1), output_padding=np.array([1, 0])),
    dict(stride=np.int64(2), padding=[np.array(1), np.int32(0)]),
], ids=str)
def test_integer_arrays_as_hyperparameters(kw):
    x = np.random.default_rng(5).standard_normal((1, 2, 3, 3))
    w = np.random.default_rng(6).standard_normal((2, 3, 2, 2))
    as_ints = {k: (int(v) if np.ndim(v) == 0 else tuple(int(e) for e in v)) for k, v in kw.items()}
    want = conv_transpose_ref(x, w, **as_ints)
    np.testing.assert_array_equal(cudeconv.conv_transpose2d(x, w, **kw),
                                  cudeconv.conv_transpose2d(x, w, **as_ints))
    assert_close(cudeconv.conv_transpose2d(x, w, **kw), want, np.float64, 8)
    layer = cudeconv.ConvTranspose2d(2, 3, np.array([2, 2]), **kw, dtype="float64", backend="numpy")
    layer.load_state_dict({"weight": w, "bias": np.zeros(3)})
    assert_close(layer(x), want, np.float64, 8)
    assert all(type(v) is int for v in layer.stride + layer.padding + layer.kernel_size)


def test_integer_arrays_as_hyperparameters_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(7).standard_normal((1, 2, 3, 3))
    t = torch.nn.ConvTranspose2d(2, 3, 2, stride=np.array([2, 1]), padding=np.array([1, 0]),
                                 dtype=torch.float64)
    layer = cudeconv.ConvTranspose2d(2, 3, 2, stride=np.array([2, 1]), padding=np.array([1, 0]),
                                     dtype="float64", backend="numpy")
    layer.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    assert_close(layer(x), t(torch.tensor(x)).detach().numpy(), np.float64, 8)


@pytest.mark.parametrize("bad, exc", [
    (np.array(2.0), TypeError), (np.array([2.0, 2.0]), TypeError), (np.array(True), TypeError),
    (np.array([True, True]), TypeError), (np.array([2, 2, 2]), ValueError),
    (np.array([[2, 2]]), TypeError), ((np.array(2.0), 1), TypeError), ((np.array([2]), 1), TypeError),
], ids=repr)
def test_float_bool_and_misshapen_arrays_refused(bad, exc):
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    with pytest.raises(exc, match="stride"):
        cudeconv.conv_transpose2d(x, w, stride=bad)
    with pytest.raises(exc, match="stride"):
        cudeconv.ConvTranspose2d(1, 1, 2, stride=bad, backend="numpy")


def test_remembered_geometries_tell_arrays_apart_whatever_the_print_options():
    """Validated hyperparameters are cached by their repr; an array's repr may elide elements."""
    x, w = np.ones((1, 1, 2, 2, 2)), np.ones((1, 1, 1, 1, 1))
    with np.printoptions(threshold=1, edgeitems=1):
        assert repr(np.array([1, 2, 3])) == repr(np.array([1, 5, 3]))
        first = cudeconv.conv_transpose3d(x, w, stride=np.array([1, 2, 3]))
        second = cudeconv.conv_transpose3d(x, w, stride=np.array([1, 5, 3]))
    assert first.shape == (1, 1, 2, 3, 4) and second.shape == (1, 1, 2, 6, 4)


# ----------------------------------------------------------------------- item 8: dtype=None

def test_dtype_none_is_float32_as_in_pytorch():
    layer = cudeconv.ConvTranspose2d(4, 6, 3, dtype=None, backend="numpy", seed=0)
    assert layer.dtype == np.float32
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
    assert layer(np.ones((1, 4, 2, 2), np.float32)).dtype == np.float32
    torch = pytest.importorskip("torch")
    assert torch.nn.ConvTranspose2d(4, 6, 3, dtype=None).weight.dtype == torch.float32
