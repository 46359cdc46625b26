"""ConvTranspose{1,2,3}d layers: init, forward/backward vs the functional API and the oracle,
gradient accumulation, state_dict / save / load, output_size, and backends."""
import numpy as np
import pytest

import cudeconv
from cudeconv._dtypes import BFLOAT16
from cudeconv import backends

from conftest import assert_close, to_backend, to_numpy
from oracle import conv_transpose_backward_ref, conv_transpose_ref, output_spatial

LAYERS = {1: cudeconv.ConvTranspose1d, 2: cudeconv.ConvTranspose2d, 3: cudeconv.ConvTranspose3d}

# A small layer per dimensionality: (args, kwargs, input spatial size)
SMALL = {
    1: ((4, 6, 3), dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2), (5,)),
    2: ((4, 6, (3, 2)), dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2,
                             dilation=(1, 2)), (4, 3)),
    3: ((2, 3, 2), dict(stride=(2, 1, 2), padding=(0, 1, 1), output_padding=(1, 0, 0)), (2, 3, 2)),
}


def _small(nd, backend="numpy", dtype="float32", seed=0, bias=True):
    args, kw, in_sp = SMALL[nd]
    layer = LAYERS[nd](*args, **kw, bias=bias, dtype=dtype, backend=backend, seed=seed)
    rng = np.random.default_rng(100 + nd)
    x = rng.standard_normal((2, args[0]) + in_sp).astype(dtype)
    k = args[2] if isinstance(args[2], tuple) else (args[2],) * nd
    out_sp = output_spatial(in_sp, k, kw.get("stride", 1), kw.get("padding", 0),
                            kw.get("output_padding", 0), kw.get("dilation", 1))
    gy = rng.standard_normal((2, args[1]) + out_sp).astype(dtype)
    fkw = dict(stride=kw.get("stride", 1), padding=kw.get("padding", 0),
               output_padding=kw.get("output_padding", 0), groups=kw.get("groups", 1),
               dilation=kw.get("dilation", 1))
    return layer, x, gy, fkw


def _np_params(layer):
    return to_numpy(layer.weight.data), None if layer.bias is None else to_numpy(layer.bias.data)


# ---------------------------------------------------------------------------------- init

@pytest.mark.parametrize("nd", (1, 2, 3))
def test_init_bounds_and_spread(nd):
    """PyTorch's init: U(-b, b), b = 1/sqrt(fan_in), fan_in = (C_out/groups)·prod(kernel) from the
    weight's dim 1 (which differs from C_in here, so a Conv-style fan_in would show)."""
    k = {1: 9, 2: 5, 3: 3}[nd]
    layer = LAYERS[nd](16, 24, k, groups=2, seed=3, backend="numpy")
    w = to_numpy(layer.weight.data)
    assert w.shape == (16, 12) + (k,) * nd
    bound = 1.0 / np.sqrt(12 * k ** nd)
    assert np.all(np.abs(w) <= bound), f"max |w| {np.abs(w).max()} > bound {bound}"
    assert w.max() > 0.97 * bound and w.min() < -0.97 * bound, "weights do not fill [-b, b]"
    hist, _ = np.histogram(w, bins=4, range=(-bound, bound))
    frac = hist / w.size
    assert np.all((frac > 0.2) & (frac < 0.3)), f"weights not uniform over [-b, b]: {frac}"
    assert abs(w.mean()) < 0.05 * bound
    b = to_numpy(layer.bias.data)
    assert b.shape == (24,)
    assert np.all(np.abs(b) <= bound) and b.max() > 0.3 * bound and b.min() < -0.3 * bound


def test_bias_init_bound():
    layer = cudeconv.ConvTranspose1d(4, 512, 1, seed=5, backend="numpy")
    b = to_numpy(layer.bias.data)
    bound = 1.0 / np.sqrt(512)  # fan_in = C_out/groups · kernel = 512
    assert np.all(np.abs(b) <= bound)
    assert b.max() > 0.97 * bound and b.min() < -0.97 * bound
    frac = np.histogram(b, bins=4, range=(-bound, bound))[0] / b.size
    assert np.all((frac > 0.15) & (frac < 0.35)), frac


def test_seeding():
    a = cudeconv.ConvTranspose2d(3, 4, 3, seed=7, backend="numpy")
    b = cudeconv.ConvTranspose2d(3, 4, 3, seed=7, backend="numpy")
    c = cudeconv.ConvTranspose2d(3, 4, 3, seed=8, backend="numpy")
    assert np.array_equal(to_numpy(a.weight.data), to_numpy(b.weight.data))
    assert np.array_equal(to_numpy(a.bias.data), to_numpy(b.bias.data))
    assert not np.array_equal(to_numpy(a.weight.data), to_numpy(c.weight.data))
    assert not np.array_equal(to_numpy(a.bias.data), to_numpy(c.bias.data))
    # seed=None draws fresh values each time (like PyTorch's global generator advancing)
    d = cudeconv.ConvTranspose2d(3, 4, 3, backend="numpy")
    e = cudeconv.ConvTranspose2d(3, 4, 3, backend="numpy")
    assert not np.array_equal(to_numpy(d.weight.data), to_numpy(e.weight.data))


@pytest.mark.parametrize("dtype", ("float16", "bfloat16", "float32", "float64"))
def test_dtype(dtype, backend):
    layer, x, gy, _ = _small(2, backend, dtype)
    assert to_numpy(layer.weight.data).dtype == np.dtype(dtype)
    assert to_numpy(layer.bias.data).dtype == np.dtype(dtype)
    y = layer(to_backend(x, backend))
    assert to_numpy(y).dtype == np.dtype(dtype)
    gx = layer.backward(to_backend(gy, backend))
    assert to_numpy(gx).dtype == np.dtype(dtype)
    assert to_numpy(layer.weight.grad).dtype == np.dtype(dtype)
    assert to_numpy(layer.bias.grad).dtype == np.dtype(dtype)


def test_parameters_and_bias_false():
    layer = cudeconv.ConvTranspose2d(4, 6, 3, groups=2, backend="numpy", seed=0)
    params = list(layer.parameters())
    assert len(params) == 2 and params[0] is layer.weight and params[1] is layer.bias
    assert isinstance(layer.weight, cudeconv.Parameter) and layer.weight.grad is None
    nob = cudeconv.ConvTranspose2d(4, 6, 3, groups=2, bias=False, backend="numpy", seed=0)
    assert nob.bias is None
    assert [p for p in nob.parameters()] == [nob.weight]
    assert set(nob.state_dict()) == {"weight"}
    assert set(layer.state_dict()) == {"weight", "bias"}


# ------------------------------------------------------------------------ forward / backward

@pytest.mark.parametrize("bias", (True, False))
@pytest.mark.parametrize("nd", (1, 2, 3))
def test_layer_matches_functional_and_oracle(nd, bias, backend):
    layer, x, gy, fkw = _small(nd, backend, bias=bias)
    assert layer.backend == backend
    w, b = _np_params(layer)
    xb, gyb = to_backend(x, backend), to_backend(gy, backend)
    x0, gy0 = x.copy(), gy.copy()
    y = layer(xb)
    fn = getattr(cudeconv, f"conv_transpose{nd}d")
    y_f = fn(xb, layer.weight.data, None if layer.bias is None else layer.bias.data, backend=backend, **fkw)
    terms = (w.shape[0] // fkw["groups"]) * int(np.prod(w.shape[2:])) + 1
    scale = conv_transpose_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **fkw)
    assert_close(y, conv_transpose_ref(x, w, b, **fkw), np.float32, terms, scale=scale, name="layer output")
    assert_close(y, to_numpy(y_f), np.float32, terms, scale=scale, name="layer vs functional")

    gx = layer.backward(gyb)
    ref = conv_transpose_backward_ref(gy, x, w, bias=bias, **fkw)
    scl = conv_transpose_backward_ref(np.abs(gy), np.abs(x), np.abs(w), bias=bias, **fkw)
    t = (w.shape[1] * int(np.prod(w.shape[2:])), x.shape[0] * int(np.prod(x.shape[2:])),
         gy.shape[0] * int(np.prod(gy.shape[2:])))
    assert_close(gx, ref[0], np.float32, t[0], scale=scl[0], name="grad_input")
    assert_close(layer.weight.grad, ref[1], np.float32, t[1], scale=scl[1], name="weight.grad")
    if bias:
        assert_close(layer.bias.grad, ref[2], np.float32, t[2], scale=scl[2], name="bias.grad")
    else:
        assert layer.bias is None
    assert np.array_equal(to_numpy(xb), x0), "forward modified its input"
    assert np.array_equal(to_numpy(gyb), gy0), "backward modified grad_output"
    if backend == "cuda":
        import cupy
        assert isinstance(layer.weight.data, cupy.ndarray) and isinstance(layer.weight.grad, cupy.ndarray)


def test_backward_accumulates(backend):
    layer, x, gy, fkw = _small(2, backend)
    w, b = _np_params(layer)
    rng = np.random.default_rng(1)
    gy2 = rng.standard_normal(gy.shape).astype(np.float32)
    xb = to_backend(x, backend)
    layer(xb)
    layer.backward(to_backend(gy, backend))
    g1w, g1b = to_numpy(layer.weight.grad).copy(), to_numpy(layer.bias.grad).copy()
    layer.backward(to_backend(gy, backend))
    t = x.shape[0] * int(np.prod(x.shape[2:]))
    assert_close(layer.weight.grad, 2 * g1w.astype(np.float64), np.float32, 2 * t, name="2x weight.grad")
    assert_close(layer.bias.grad, 2 * g1b.astype(np.float64), np.float32, 2 * gy[0, 0].size * 2, name="2x bias.grad")
    # a different grad_output accumulates on top: grads = g(gy) + g(gy) + g(gy2)
    layer.backward(to_backend(gy2, backend))
    r1 = conv_transpose_backward_ref(gy, x, w, **fkw)
    r2 = conv_transpose_backward_ref(gy2, x, w, **fkw)
    scale = conv_transpose_backward_ref(np.abs(gy) * 2 + np.abs(gy2), np.abs(x), np.abs(w), **fkw)
    assert_close(layer.weight.grad, 2 * r1[1] + r2[1], np.float32, 3 * t, scale=scale[1], name="accumulated weight.grad")
    assert_close(layer.bias.grad, 2 * r1[2] + r2[2], np.float32, 3 * gy[0, 0].size * 2, scale=scale[2],
                 name="accumulated bias.grad")


def test_zero_grad(backend):
    layer, x, gy, fkw = _small(2, backend)
    xb, gyb = to_backend(x, backend), to_backend(gy, backend)
    layer(xb)
    layer.backward(gyb)
    single_w, single_b = to_numpy(layer.weight.grad).copy(), to_numpy(layer.bias.grad).copy()
    layer.backward(gyb)
    layer.zero_grad()
    for p in layer.parameters():
        assert p.grad is None or not np.any(to_numpy(p.grad)), "zero_grad left a non-zero gradient"
    layer.backward(gyb)
    t = x.shape[0] * int(np.prod(x.shape[2:]))
    assert_close(layer.weight.grad, single_w.astype(np.float64), np.float32, t, name="weight.grad after zero_grad")
    assert_close(layer.bias.grad, single_b.astype(np.float64), np.float32, gy[0, 0].size * 2,
                 name="bias.grad after zero_grad")


def test_forward_leaves_grads_alone(backend):
    """A second forward (no backward) leaves the gradients alone."""
    layer, x, gy, _ = _small(2, backend)
    xb = to_backend(x, backend)
    layer(xb)
    layer.backward(to_backend(gy, backend))
    before = to_numpy(layer.weight.grad).copy()
    layer(xb * 2)
    assert np.array_equal(to_numpy(layer.weight.grad), before)


def test_backward_uses_last_forward_input(backend):
    layer, x, gy, fkw = _small(2, backend)
    w, _ = _np_params(layer)
    layer(to_backend(x * 3, backend))
    layer(to_backend(x, backend))
    layer.backward(to_backend(gy, backend))
    ref = conv_transpose_backward_ref(gy, x, w, **fkw)
    scl = conv_transpose_backward_ref(np.abs(gy), np.abs(x), np.abs(w), **fkw)
    assert_close(layer.weight.grad, ref[1], np.float32, x.shape[0] * x[0, 0].size, scale=scl[1])


def test_layer_rejects_bad_input():
    layer = cudeconv.ConvTranspose2d(4, 6, 3, groups=2, backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"\binput\b|\bx\b"):
        layer(np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"weight|input|\bx\b|channel"):
        layer(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(TypeError):
        layer(np.zeros((2, 4, 5, 5), np.float64))  # layer is float32
    layer(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.zeros((2, 6, 6, 7), np.float32))


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(groups=3), ValueError, "groups"),
    (dict(groups=0), ValueError, "groups"),
    (dict(stride=0), ValueError, "stride"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(stride=2, output_padding=2), ValueError, "output_padding"),
    (dict(stride=(1, 1, 1)), ValueError, "stride"),
    (dict(dtype="int32"), TypeError, None),
    (dict(backend="tpu"), ValueError, "backend"),
])
def test_layer_rejects_bad_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        cudeconv.ConvTranspose2d(4, 6, 3, **{"backend": "numpy", **kwargs})


def test_layer_kernel_size_checked():
    with pytest.raises(ValueError, match="kernel_size"):
        cudeconv.ConvTranspose2d(4, 6, 0, backend="numpy")
    with pytest.raises(ValueError, match="kernel_size"):
        cudeconv.ConvTranspose2d(4, 6, (3, 3, 3), backend="numpy")


# ------------------------------------------------------------------------------- output_size

def _output_size_layer(backend="numpy"):
    layer = cudeconv.ConvTranspose2d(2, 3, 3, stride=(3, 2), padding=1, output_padding=(1, 1),
                                     seed=0, backend=backend)
    x = np.random.default_rng(4).standard_normal((1, 2, 4, 5)).astype(np.float32)
    # minimum sizes: (4-1)*3 - 2 + 2 + 1 = 10 and (5-1)*2 - 2 + 2 + 1 = 9
    return layer, x, (10, 9)


def test_output_size_in_range(backend):
    layer, x, (h0, w0) = _output_size_layer(backend)
    w, b = _np_params(layer)
    xb = to_backend(x, backend)
    for h in range(h0, h0 + 3):
        for wd in range(w0, w0 + 2):
            op = (h - h0, wd - w0)
            ref = conv_transpose_ref(x, w, b, stride=(3, 2), padding=1, output_padding=op)
            for size in ((h, wd), [h, wd], (1, 3, h, wd)):
                y = layer.forward(xb, output_size=size)
                assert to_numpy(y).shape == (1, 3, h, wd), (size, to_numpy(y).shape)
                assert_close(y, ref, np.float32, 2 * 9 + 1, name=f"output_size={size}")
            # backward follows the output_padding the last forward used
            gy = np.random.default_rng(h * 10 + wd).standard_normal((1, 3, h, wd)).astype(np.float32)
            layer.zero_grad()
            gx = layer.backward(to_backend(gy, backend))
            gref = conv_transpose_backward_ref(gy, x, w, stride=(3, 2), padding=1, output_padding=op)
            assert_close(gx, gref[0], np.float32, 27)
            assert_close(layer.weight.grad, gref[1], np.float32, 20)
    # without output_size the layer's own output_padding applies
    assert to_numpy(layer(xb)).shape == (1, 3, h0 + 1, w0 + 1)


@pytest.mark.parametrize("size", [(9, 9), (13, 9), (10, 8), (10, 11), (0, 9), (-1, 9), (10,), (10, 9, 9),
                                  (1, 3, 13, 9), (1, 2, 3, 10, 9)])
def test_output_size_out_of_range(size):
    layer, x, _ = _output_size_layer()
    with pytest.raises(ValueError, match="output_size"):
        layer.forward(x, output_size=size)


def test_output_size_1d_and_3d():
    layer = cudeconv.ConvTranspose1d(2, 2, 4, stride=3, backend="numpy", seed=0)
    x = np.ones((1, 2, 3), np.float32)
    # min = (3-1)*3 + 3 + 1 = 10, max 12
    assert to_numpy(layer.forward(x, output_size=(12,))).shape == (1, 2, 12)
    with pytest.raises(ValueError, match="output_size"):
        layer.forward(x, output_size=(13,))
    layer3 = cudeconv.ConvTranspose3d(1, 1, 2, stride=(1, 2, 3), backend="numpy", seed=0)
    x3 = np.ones((1, 1, 2, 2, 2), np.float32)
    # min = (3, 4, 5), max = (3, 5, 7)
    assert to_numpy(layer3.forward(x3, output_size=(3, 5, 7))).shape == (1, 1, 3, 5, 7)
    for bad in ((4, 4, 5), (3, 6, 5), (3, 4, 4)):
        with pytest.raises(ValueError, match="output_size"):
            layer3.forward(x3, output_size=bad)


# ---------------------------------------------------------------------- state_dict, save, load

def test_state_dict_round_trip(backend):
    a, x, _, _ = _small(2, backend, seed=0)
    b, _, _, _ = _small(2, backend, seed=1)
    xb = to_backend(x, backend)
    assert not np.array_equal(to_numpy(a(xb)), to_numpy(b(xb)))
    b.load_state_dict(a.state_dict())
    for k in ("weight", "bias"):
        assert np.array_equal(to_numpy(getattr(a, k).data), to_numpy(getattr(b, k).data))
    assert_close(b(xb), to_numpy(a(xb)).astype(np.float64), np.float32, 7)


def test_state_dict_holds_copies(backend):
    """Writing into a state_dict's arrays leaves the layer alone, and an SGD step (which updates
    the parameters' arrays in place) leaves an earlier state_dict alone."""
    layer, x, gy, _ = _small(2, backend)
    before = {name: to_numpy(array).copy() for name, array in layer.state_dict().items()}
    for array in layer.state_dict().values():
        array.fill(7)
    for name, value in before.items():
        assert np.array_equal(to_numpy(getattr(layer, name).data), value), f"{name} changed with its state_dict"
    state = layer.state_dict()
    layer(to_backend(x, backend))
    layer.backward(to_backend(gy, backend))
    cudeconv.SGD(layer.parameters(), lr=0.1, backend=backend).step()
    assert not np.array_equal(to_numpy(layer.weight.data), before["weight"])  # the step moved the layer
    for name, value in before.items():
        assert np.array_equal(to_numpy(state[name]), value), f"state_dict[{name!r}] changed with the layer"


def test_pytorch_layout_state_dict_loads():
    layer, x, _, fkw = _small(2, "numpy")
    rng = np.random.default_rng(0)
    state = {"weight": rng.standard_normal((4, 3, 3, 2)), "bias": rng.standard_normal(6)}
    layer.load_state_dict(state)
    w, b = _np_params(layer)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, state["weight"].astype(np.float32))
    ref = conv_transpose_ref(x, w, b, **fkw)
    assert_close(layer(x), ref, np.float32, 7)


@pytest.mark.parametrize("bad", [
    {"weight": np.zeros((6, 2, 3, 2), np.float32), "bias": np.zeros(6, np.float32)},  # Conv2d layout
    {"weight": np.zeros((4, 3, 2, 3), np.float32), "bias": np.zeros(6, np.float32)},  # kernel swapped
    {"weight": np.zeros((4, 3, 3, 2), np.float32), "bias": np.zeros(5, np.float32)},
    {"weight": np.zeros((4, 3, 3), np.float32), "bias": np.zeros(6, np.float32)},
])
def test_state_dict_wrong_shape_rejected(bad):
    layer, _, _, _ = _small(2, "numpy")
    before = to_numpy(layer.weight.data).copy()
    with pytest.raises(ValueError):
        layer.load_state_dict(bad)
    assert np.array_equal(to_numpy(layer.weight.data), before)


def test_torch_state_dict_loads_and_matches():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                                 groups=2, dilation=(1, 2))
    layer, x, gy, _ = _small(2, "numpy")
    layer.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    y_t = t(torch.tensor(x)).detach().numpy()
    w, b = _np_params(layer)
    scale = conv_transpose_ref(np.abs(x), np.abs(w), np.abs(b), stride=(2, 1), padding=(1, 0),
                               output_padding=(1, 0), groups=2, dilation=(1, 2))
    assert_close(layer(x), y_t, np.float32, 7, scale=scale, factor=16, name="vs torch layer")
    # and the init distribution matches torch's in kind: same bounds
    bound = 1 / np.sqrt(3 * 3 * 2)
    assert np.abs(t.weight.detach().numpy()).max() <= bound
    fresh = cudeconv.ConvTranspose2d(4, 6, (3, 2), groups=2, seed=0, backend="numpy")
    assert np.abs(to_numpy(fresh.weight.data)).max() <= bound


def test_save_load_round_trip(tmp_path, backend):
    a, x, _, _ = _small(2, backend, seed=0)
    path = tmp_path / "layer.npz"
    a.save(str(path))
    assert path.exists()
    with np.load(path, allow_pickle=False) as f:  # a plain npz of the PyTorch-layout arrays
        assert set(f.files) == {"weight", "bias"}
        np.testing.assert_array_equal(f["weight"], to_numpy(a.weight.data))
    b, _, _, _ = _small(2, backend, seed=1)
    b.load(str(path))
    for k in ("weight", "bias"):
        assert np.array_equal(to_numpy(getattr(a, k).data), to_numpy(getattr(b, k).data))
    xb = to_backend(x, backend)
    assert_close(b(xb), to_numpy(a(xb)).astype(np.float64), np.float32, 7)

    c = cudeconv.ConvTranspose2d(4, 6, (3, 2), groups=2, bias=False, seed=2, backend=backend)
    c.save(str(tmp_path / "nobias.npz"))
    d = cudeconv.ConvTranspose2d(4, 6, (3, 2), groups=2, bias=False, seed=3, backend=backend)
    d.load(str(tmp_path / "nobias.npz"))
    assert np.array_equal(to_numpy(c.weight.data), to_numpy(d.weight.data))


def test_bfloat16_layers_save_load_and_pytorch_state_dicts(tmp_path, backend):
    """A bfloat16 layer's checkpoint round-trips bitwise (stored as float32: .npy has no bfloat16),
    stays pickle-free, and a PyTorch bfloat16 state dict loads — widened with .float().numpy() or
    as the tensors themselves (through DLPack)."""
    a = cudeconv.ConvTranspose2d(4, 6, 3, stride=2, dtype="bfloat16", seed=0, backend=backend)
    path = tmp_path / "bf16.npz"
    a.save(str(path))
    with np.load(path, allow_pickle=False) as f:
        assert f["weight"].dtype == np.float32
    b = cudeconv.ConvTranspose2d(4, 6, 3, stride=2, dtype="bfloat16", seed=1, backend=backend)
    b.load(str(path))
    for k in ("weight", "bias"):
        got, want = to_numpy(getattr(b, k).data), to_numpy(getattr(a, k).data)
        assert got.dtype == want.dtype == BFLOAT16 and got.tobytes() == want.tobytes()
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    assert np.asarray(to_numpy(b(to_backend(x.astype(BFLOAT16), backend))), dtype=np.float32).dtype == np.float32
    torch = pytest.importorskip("torch")
    t = torch.nn.ConvTranspose2d(4, 6, 3, stride=2).to(torch.bfloat16)
    for state in ({k: v.detach().float().numpy() for k, v in t.state_dict().items()},
                  {k: v.detach() for k, v in t.state_dict().items()}):
        b.load_state_dict(state)
        assert to_numpy(b.weight.data).tobytes() == t.weight.detach().view(torch.int16).numpy().tobytes()


class _Evil:
    """Unpickling this creates a file: proof that something unpickled."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def test_load_refuses_pickled_arrays(tmp_path):
    flag = tmp_path / "unpickled"
    path = tmp_path / "evil.npz"
    weight = np.empty((4, 3, 3, 2), dtype=object)
    weight[...] = _Evil(str(flag))
    np.savez(path, weight=weight, bias=np.zeros(6, np.float32))
    assert not flag.exists()
    layer, _, _, _ = _small(2, "numpy")
    before = to_numpy(layer.weight.data).copy()
    with pytest.raises(Exception):
        layer.load(str(path))
    assert not flag.exists(), "load() unpickled an object array"
    assert np.array_equal(to_numpy(layer.weight.data), before)


# -------------------------------------------------------------------------------- backends

def test_layer_default_backend():
    layer = cudeconv.ConvTranspose2d(2, 2, 2, seed=0)
    expected = "cuda" if backends.cuda_unavailable_reason() is None else "numpy"
    assert layer.backend == expected


def test_layer_cuda_unavailable():
    if backends.cuda_unavailable_reason() is None:
        pytest.skip("CUDA is usable here")
    with pytest.raises(cudeconv.BackendUnavailableError):
        cudeconv.ConvTranspose2d(2, 2, 2, backend="cuda")


@pytest.mark.parametrize("dtype", ("float16", "bfloat16", "float64"))
@pytest.mark.parametrize("nd", (1, 3))
def test_layer_other_dtypes_vs_oracle(nd, dtype, backend):
    layer, x, gy, fkw = _small(nd, backend, dtype)
    w, b = _np_params(layer)
    y = layer(to_backend(x, backend))
    terms = (w.shape[0] // fkw["groups"]) * int(np.prod(w.shape[2:])) + 1
    scale = conv_transpose_ref(np.abs(x), np.abs(w), np.abs(b), **fkw)
    assert_close(y, conv_transpose_ref(x, w, b, **fkw), dtype, terms, scale=scale)
    gx = layer.backward(to_backend(gy, backend))
    ref = conv_transpose_backward_ref(gy, x, w, **fkw)
    scl = conv_transpose_backward_ref(np.abs(gy), np.abs(x), np.abs(w), **fkw)
    assert_close(gx, ref[0], dtype, w.shape[1] * int(np.prod(w.shape[2:])), scale=scl[0], name="grad_input")
    assert_close(layer.weight.grad, ref[1], dtype, x.shape[0] * x[0, 0].size, scale=scl[1], name="weight.grad")
    assert_close(layer.bias.grad, ref[2], dtype, gy.shape[0] * gy[0, 0].size, scale=scl[2], name="bias.grad")


def test_load_state_dict_of_fortran_ordered_arrays_then_train(backend):
    layer = cudeconv.ConvTranspose2d(3, 2, 3, backend=backend, seed=0)
    weight = np.asfortranarray(np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32))
    layer.load_state_dict({"weight": weight, "bias": np.zeros(2, np.float32)})
    assert layer.weight.data.flags.c_contiguous
    np.testing.assert_array_equal(to_numpy(layer.weight.data), weight)
    opt = cudeconv.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    x = to_backend(np.ones((1, 3, 2, 2), np.float32), backend)
    layer.backward(layer(x))
    opt.step()
    assert np.all(np.isfinite(to_numpy(layer.weight.data)))


def test_zero_grad_in_place_keeps_the_arrays(backend):
    """zero_grad(set_to_none=False) zeroes the same gradient arrays (a CUDA graph keeps their
    addresses), and the next backward accumulates into them."""
    layer = cudeconv.ConvTranspose2d(2, 3, 3, stride=2, backend=backend, seed=1, dtype="float64")
    opt = cudeconv.SGD(layer.parameters(), lr=0.1)
    x = to_backend(np.random.default_rng(2).standard_normal((2, 2, 4, 4)), backend)
    gy = to_backend(np.ones(layer(x).shape), backend)
    layer.backward(gy)
    single = [to_numpy(p.grad).copy() for p in layer.parameters()]
    arrays = [p.grad for p in layer.parameters()]
    layer.zero_grad(set_to_none=False)
    for p, array in zip(layer.parameters(), arrays):
        assert p.grad is array and not np.any(to_numpy(p.grad))
    layer.backward(gy)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is a and not np.any(to_numpy(p.grad)) for p, a in zip(layer.parameters(), arrays))
    layer.backward(gy)
    for p, array, want in zip(layer.parameters(), arrays, single):
        assert p.grad is array
        np.testing.assert_allclose(to_numpy(p.grad), want, rtol=1e-12, atol=1e-12)
