"""conv_transpose{1,2,3}d and their backward against the independent oracle (tests/oracle.py).

Random configurations (fixed seeds) cover 1/2/3 spatial dims, stride, padding, output_padding,
dilation, groups, bias on/off and empty batches, in float16/32/64; every output and gradient is
compared with the float64 scatter-add oracle within a bound derived from the number of products
summed per element (conftest.assert_close, with Σ|a·b| per element as the scale). Every backend
runs a list of tiny configurations (the emulator is a CPU emulation of the kernels); the NumPy
backend also runs a larger list, and the kernel backends a few medium sizes.
"""
import functools

import numpy as np
import pytest

import cudeconv
from cudeconv import backends

from conftest import assert_close, to_backend, to_numpy
from oracle import (
    conv_transpose_backward_ref,
    conv_transpose_backward_ref_fast,
    conv_transpose_ref,
    conv_transpose_ref_fast,
    output_spatial,
)

DTYPES = (np.float16, np.float32, np.float64)


def fwd(nd):
    return getattr(cudeconv, f"conv_transpose{nd}d")


def bwd(nd):
    return getattr(cudeconv, f"conv_transpose{nd}d_backward")


# ----------------------------------------------------------------------------- configurations

def _maybe_int(rng, values):
    """Pass a per-dim parameter as an int (when all dims agree, half the time) or a tuple."""
    values = tuple(int(v) for v in values)
    if len(set(values)) == 1 and rng.random() < 0.5:
        return values[0]
    return values


def _random_case(rng, small, nd):
    while True:
        groups = int(rng.integers(1, 4))
        cin_g = int(rng.integers(1, 3 if small else 4))
        cout_g = int(rng.integers(1, 3 if small else 4))
        n_batch = 0 if rng.random() < 0.08 else int(rng.integers(1, 3))
        max_sp = ({1: 5, 2: 3, 3: 2} if small else {1: 7, 2: 5, 3: 3})[nd]
        max_k = ({1: 3, 2: 3, 3: 2} if small else {1: 4, 2: 3, 3: 3})[nd]
        in_sp = tuple(int(v) for v in rng.integers(1, max_sp + 1, nd))
        kernel = tuple(int(v) for v in rng.integers(1, max_k + 1, nd))
        stride = rng.integers(1, 4, nd)
        dilation = rng.integers(1, 3, nd)
        padding = rng.integers(0, 3, nd)
        output_padding = np.array([rng.integers(0, max(s, d)) for s, d in zip(stride, dilation)])
        out = output_spatial(in_sp, kernel, stride, padding, output_padding, dilation)
        if min(out) < 1:
            continue
        return dict(
            nd=nd, n=n_batch, cin=cin_g * groups, cout=cout_g * groups, groups=groups,
            in_sp=in_sp, kernel=kernel,
            stride=_maybe_int(rng, stride), padding=_maybe_int(rng, padding),
            output_padding=_maybe_int(rng, output_padding), dilation=_maybe_int(rng, dilation),
            bias=bool(rng.random() < 0.7), seed=int(rng.integers(2**31)),
        )


def _case_id(c):
    return (f"{c['nd']}d-n{c['n']}-c{c['cin']}x{c['cout']}g{c['groups']}-in{'x'.join(map(str, c['in_sp']))}"
            f"-k{'x'.join(map(str, c['kernel']))}-s{c['stride']}-p{c['padding']}-op{c['output_padding']}"
            f"-d{c['dilation']}-{'b' if c['bias'] else 'nob'}").replace(" ", "")


def _cases(seed, count, small):
    rng = np.random.default_rng(seed)
    cases = [_random_case(rng, small, nd=(1, 2, 2, 3)[i % 4]) for i in range(count)]
    # Make sure an empty batch appears whatever the draws.
    if not any(c["n"] == 0 for c in cases):
        cases[-1] = dict(cases[-1], n=0)
    return cases


CASES = _cases(20240601, 48, small=False)
SMALL_CASES = _cases(777, 24, small=True)


def _kw(c):
    return dict(stride=c["stride"], padding=c["padding"], output_padding=c["output_padding"],
                groups=c["groups"], dilation=c["dilation"])


def _inputs(c, dtype):
    """x, w, b (or None), grad_output as NumPy arrays of ``dtype`` (seeded by the case)."""
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["n"], c["cin"]) + c["in_sp"]).astype(dtype)
    w = rng.standard_normal((c["cin"], c["cout"] // c["groups"]) + c["kernel"]).astype(dtype)
    b = rng.standard_normal(c["cout"]).astype(dtype) if c["bias"] else None
    out_sp = output_spatial(c["in_sp"], c["kernel"], c["stride"], c["padding"],
                            c["output_padding"], c["dilation"])
    gy = rng.standard_normal((c["n"], c["cout"]) + out_sp).astype(dtype)
    return x, w, b, gy


def _terms(c):
    """Products summed per element: forward, grad_input, grad_weight, grad_bias."""
    nk = int(np.prod(c["kernel"]))
    out_sp = output_spatial(c["in_sp"], c["kernel"], c["stride"], c["padding"],
                            c["output_padding"], c["dilation"])
    return dict(
        y=(c["cin"] // c["groups"]) * nk + (1 if c["bias"] else 0),
        gx=(c["cout"] // c["groups"]) * nk,
        gw=c["n"] * int(np.prod(c["in_sp"])),
        gb=c["n"] * int(np.prod(out_sp)),
    )


@functools.lru_cache(maxsize=None)
def _reference(case_key, dtype_name):
    """Oracle outputs and per-element scales Σ|a·b| for one case and dtype (cached across backends)."""
    c = _CASE_BY_KEY[case_key]
    x, w, b, gy = _inputs(c, np.dtype(dtype_name))
    kw = _kw(c)
    y = conv_transpose_ref(x, w, b, **kw)
    y_scale = conv_transpose_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)
    grads = conv_transpose_backward_ref(gy, x, w, bias=c["bias"], **kw)
    scales = conv_transpose_backward_ref(np.abs(gy), np.abs(x), np.abs(w), bias=c["bias"], **kw)
    return y, y_scale, grads, scales


_CASE_BY_KEY = {_case_id(c) + f"#{i}": c for i, c in enumerate(CASES)}
_CASE_BY_KEY.update({"small:" + _case_id(c) + f"#{i}": c for i, c in enumerate(SMALL_CASES)})
FULL_KEYS = [k for k in _CASE_BY_KEY if not k.startswith("small:")]
SMALL_KEYS = [k for k in _CASE_BY_KEY if k.startswith("small:")]


def _check_case(case_key, dtype, backend):
    c = _CASE_BY_KEY[case_key]
    nd = c["nd"]
    x, w, b, gy = _inputs(c, dtype)
    y_ref, y_scale, (gx_ref, gw_ref, gb_ref), (gx_s, gw_s, gb_s) = _reference(case_key, np.dtype(dtype).name)
    t = _terms(c)
    xb, wb, bb, gyb = (to_backend(a, backend) if a is not None else None for a in (x, w, b, gy))

    y = fwd(nd)(xb, wb, bb, backend=backend, **_kw(c))
    assert to_numpy(y).dtype == np.dtype(dtype), f"output dtype {to_numpy(y).dtype} != {np.dtype(dtype)}"
    assert_close(y, y_ref, dtype, t["y"], scale=y_scale, name="output")

    gx, gw, gb = bwd(nd)(gyb, xb, wb, bias=c["bias"], backend=backend, **_kw(c))
    for name, got in (("grad_input", gx), ("grad_weight", gw)):
        assert to_numpy(got).dtype == np.dtype(dtype), f"{name} dtype {to_numpy(got).dtype}"
    assert_close(gx, gx_ref, dtype, t["gx"], scale=gx_s, name="grad_input")
    assert_close(gw, gw_ref, dtype, t["gw"], scale=gw_s, name="grad_weight")
    if c["bias"]:
        assert gb is not None, "grad_bias is None although bias=True"
        assert to_numpy(gb).dtype == np.dtype(dtype), f"grad_bias dtype {to_numpy(gb).dtype}"
        assert_close(gb, gb_ref, dtype, t["gb"], scale=gb_s, name="grad_bias")
    else:
        assert gb is None, "grad_bias must be None when bias=False"


@pytest.mark.parametrize("backend", ["numpy"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case_key", FULL_KEYS)
def test_matches_oracle_numpy(case_key, dtype, backend):
    _check_case(case_key, dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case_key", SMALL_KEYS)
def test_matches_oracle_small(case_key, dtype, backend):
    """Tiny configurations on every backend (this is where the emulator checks the kernels)."""
    _check_case(case_key, dtype, backend)


def test_oracle_fast_matches_naive():
    """The tap-loop oracle used for the medium-size GPU checks agrees with the naive loops."""
    for key in FULL_KEYS[:16]:
        c = _CASE_BY_KEY[key]
        x, w, b, gy = _inputs(c, np.float64)
        y, _, grads, _ = _reference(key, "float64")
        np.testing.assert_allclose(conv_transpose_ref_fast(x, w, b, **_kw(c)), y, rtol=1e-12, atol=1e-12)
        fast = conv_transpose_backward_ref_fast(gy, x, w, bias=c["bias"], **_kw(c))
        for a, e in zip(fast, grads):
            if e is None:
                assert a is None
            else:
                np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- medium sizes

MEDIUM = [
    dict(nd=2, n=2, cin=32, cout=48, groups=1, in_sp=(17, 13), kernel=(3, 3), stride=2, padding=1,
         output_padding=1, dilation=1, bias=True, seed=1),
    dict(nd=2, n=3, cin=24, cout=36, groups=3, in_sp=(9, 11), kernel=(4, 3), stride=(3, 2),
         padding=(2, 0), output_padding=(1, 1), dilation=(1, 2), bias=True, seed=2),
    dict(nd=1, n=4, cin=64, cout=16, groups=2, in_sp=(70,), kernel=(5,), stride=2, padding=2,
         output_padding=0, dilation=2, bias=False, seed=3),
    dict(nd=3, n=2, cin=8, cout=12, groups=4, in_sp=(5, 6, 4), kernel=(3, 2, 3), stride=(2, 1, 2),
         padding=1, output_padding=(1, 0, 0), dilation=1, bias=True, seed=4),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", MEDIUM, ids=_case_id)
def test_medium_sizes(c, dtype, kernel_backend):
    """Sizes big enough for many thread blocks and channel tiles, on the GPU and the emulator."""
    x, w, b, gy = _inputs(c, dtype)
    kw = _kw(c)
    t = _terms(c)
    kb = kernel_backend
    y = fwd(c["nd"])(*(to_backend(a, kb) if a is not None else None for a in (x, w, b)),
                     backend=kb, **kw)
    scale = conv_transpose_ref_fast(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)
    assert_close(y, conv_transpose_ref_fast(x, w, b, **kw), dtype, t["y"], scale=scale, name="output")
    got = bwd(c["nd"])(*(to_backend(a, kb) for a in (gy, x, w)), bias=c["bias"], backend=kb, **kw)
    ref = conv_transpose_backward_ref_fast(gy, x, w, bias=c["bias"], **kw)
    scl = conv_transpose_backward_ref_fast(np.abs(gy), np.abs(x), np.abs(w), bias=c["bias"], **kw)
    for name, a, e, s, tt in zip(("grad_input", "grad_weight", "grad_bias"), got, ref, scl,
                                 (t["gx"], t["gw"], t["gb"])):
        if e is None:
            assert a is None
        else:
            assert_close(a, e, dtype, tt, scale=s, name=name)


# ------------------------------------------------------------------------ finite differences

@pytest.mark.parametrize("case_key", SMALL_KEYS[:8])
def test_gradients_by_finite_differences(case_key):
    """<grad_output, d forward> along random directions equals <grad, direction> (float64, numpy)."""
    c = _CASE_BY_KEY[case_key]
    if c["n"] == 0:
        pytest.skip("empty batch: nothing to differentiate")
    nd = c["nd"]
    x, w, b, gy = _inputs(c, np.float64)
    kw = _kw(c)
    rng = np.random.default_rng(c["seed"] + 1)
    dx, dw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    db = rng.standard_normal(b.shape) if b is not None else None

    def f(xx, ww, bb):
        return float(np.sum(gy * to_numpy(fwd(nd)(xx, ww, bb, backend="numpy", **kw))))

    gx, gw, gb = (to_numpy(g) for g in bwd(nd)(gy, x, w, bias=b is not None, backend="numpy", **kw))
    h = 1e-3
    fd_x = (f(x + h * dx, w, b) - f(x - h * dx, w, b)) / (2 * h)
    fd_w = (f(x, w + h * dw, b) - f(x, w - h * dw, b)) / (2 * h)
    scale = np.sum(np.abs(gy) * conv_transpose_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)) + 1
    np.testing.assert_allclose(np.sum(gx * dx), fd_x, rtol=1e-7, atol=1e-9 * scale)
    np.testing.assert_allclose(np.sum(gw * dw), fd_w, rtol=1e-7, atol=1e-9 * scale)
    if b is not None:
        fd_b = (f(x, w, b + h * db) - f(x, w, b - h * db)) / (2 * h)
        np.testing.assert_allclose(np.sum(gb * db), fd_b, rtol=1e-7, atol=1e-9 * scale)
    # A non-trivial check: the directional derivatives are not all zero.
    assert abs(fd_x) + abs(fd_w) > 0


# ----------------------------------------------------------------------------------- PyTorch

def _torch_case(c, dtype):
    torch = pytest.importorskip("torch")
    x, w, b, gy = _inputs(c, dtype)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if b is not None else None
    kw = _kw(c)
    yt = getattr(torch.nn.functional, f"conv_transpose{c['nd']}d")(xt, wt, bt, **kw)
    yt.backward(torch.tensor(gy))
    grads = (xt.grad, wt.grad, None if bt is None else bt.grad)
    grads = tuple(None if g is None else g.numpy() for g in grads)
    return (x, w, b, gy), yt.detach().numpy(), grads


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case_key", FULL_KEYS[:24])
def test_oracle_matches_torch(case_key, dtype):
    """The oracle itself agrees with PyTorch (validates the reference, independent of cudeconv)."""
    c = _CASE_BY_KEY[case_key]
    (x, w, b, gy), y_t, g_t = _torch_case(c, dtype)
    y_ref, y_scale, grads, scales = _reference(case_key, np.dtype(dtype).name)
    t = _terms(c)
    assert_close(y_t, y_ref, dtype, t["y"], scale=y_scale, name="torch output")
    for name, a, e, s, tt in zip(("grad_input", "grad_weight", "grad_bias"), g_t, grads, scales,
                                 (t["gx"], t["gw"], t["gb"])):
        if e is not None:
            assert_close(a, e, dtype, tt, scale=s, name="torch " + name)


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case_key", SMALL_KEYS[:8])
def test_matches_torch(case_key, dtype, backend):
    c = _CASE_BY_KEY[case_key]
    (x, w, b, gy), y_t, g_t = _torch_case(c, dtype)
    kw = _kw(c)
    t = _terms(c)
    y_scale = conv_transpose_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)
    scales = conv_transpose_backward_ref(np.abs(gy), np.abs(x), np.abs(w), bias=b is not None, **kw)
    xb, wb, gyb = (to_backend(a, backend) for a in (x, w, gy))
    bb = to_backend(b, backend) if b is not None else None
    y = fwd(c["nd"])(xb, wb, bb, backend=backend, **kw)
    # Both sides carry their own rounding: twice the single-result bound.
    assert_close(y, y_t, dtype, t["y"], scale=y_scale, factor=16, name="output vs torch")
    got = bwd(c["nd"])(gyb, xb, wb, bias=b is not None, backend=backend, **kw)
    for name, a, e, s, tt in zip(("grad_input", "grad_weight", "grad_bias"), got, g_t, scales,
                                 (t["gx"], t["gw"], t["gb"])):
        if b is None and name == "grad_bias":
            assert a is None
            continue
        assert_close(a, e, dtype, tt, scale=s, factor=16, name=name + " vs torch")


# ------------------------------------------------------------------------------- bad input

def _base2d(dtype=np.float32):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 5, 5)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)  # groups=2 -> Cout = 6
    b = rng.standard_normal(6).astype(dtype)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    return x, w, b, kw


INPUT = r"\binput\b|\bx\b"

# (id, change to (x, w, b, kw), exception, regex on the message, substrings the message must hold)
FORWARD_ERRORS = [
    ("x-2d", lambda x, w, b, kw: (x[0, :, :, 0], w, b, kw), ValueError, INPUT, []),
    ("x-5d", lambda x, w, b, kw: (x[..., None], w, b, kw), ValueError, INPUT, []),
    ("weight-3d", lambda x, w, b, kw: (x, w[..., 0], b, kw), ValueError, "weight", []),
    ("weight-5d", lambda x, w, b, kw: (x, w[..., None], b, kw), ValueError, "weight", []),
    ("channel-mismatch", lambda x, w, b, kw: (x, w[:2], b, dict(kw, groups=1)), ValueError,
     r"weight|input|\bx\b|channel", ["4", "2"]),
    ("groups-not-dividing", lambda x, w, b, kw: (x, w, np.concatenate([b, b[:3]]), dict(kw, groups=3)),
     ValueError, "groups", ["3"]),
    ("groups-zero", lambda x, w, b, kw: (x, w, b, dict(kw, groups=0)), ValueError, "groups", ["0"]),
    ("groups-negative", lambda x, w, b, kw: (x, w, b, dict(kw, groups=-2)), ValueError, "groups", ["-2"]),
    ("stride-zero", lambda x, w, b, kw: (x, w, b, dict(kw, stride=0)), ValueError, "stride", ["0"]),
    ("stride-negative", lambda x, w, b, kw: (x, w, b, dict(kw, stride=(2, -1))), ValueError, "stride", ["-1"]),
    ("dilation-zero", lambda x, w, b, kw: (x, w, b, dict(kw, dilation=0)), ValueError, "dilation", ["0"]),
    ("dilation-negative", lambda x, w, b, kw: (x, w, b, dict(kw, dilation=(1, -3))), ValueError, "dilation", ["-3"]),
    ("padding-negative", lambda x, w, b, kw: (x, w, b, dict(kw, padding=(0, -1))), ValueError,
     r"(?<!output_)padding", ["-1"]),
    ("output_padding-too-large", lambda x, w, b, kw: (x, w, b, dict(kw, output_padding=2)), ValueError,
     "output_padding", ["2"]),
    ("output_padding-too-large-one-dim", lambda x, w, b, kw: (x, w, b, dict(kw, stride=(2, 3), output_padding=(0, 3))),
     ValueError, "output_padding", ["3"]),
    ("output_padding-negative", lambda x, w, b, kw: (x, w, b, dict(kw, output_padding=-1)), ValueError,
     "output_padding", ["-1"]),
    ("output-size-negative", lambda x, w, b, kw: (x[:, :, :1, :1], w[:, :, :1, :1], b,
                                                  dict(kw, stride=1, output_padding=0, padding=1)),
     ValueError, r"(?i)output|padding|size", ["-1"]),
    ("output-size-zero", lambda x, w, b, kw: (x[:, :, :1, :1], w[:, :, :2, :2], b,
                                              dict(kw, stride=1, output_padding=0, padding=1)),
     ValueError, r"(?i)output|padding|size", ["0"]),
    ("bias-wrong-length", lambda x, w, b, kw: (x, w, b[:5], kw), ValueError, "bias", ["5", "6"]),
    ("bias-2d", lambda x, w, b, kw: (x, w, b[:, None], kw), ValueError, "bias", []),
    ("stride-tuple-too-long", lambda x, w, b, kw: (x, w, b, dict(kw, stride=(2, 2, 2))), ValueError, "stride", []),
    ("padding-tuple-too-short", lambda x, w, b, kw: (x, w, b, dict(kw, padding=(1,))), ValueError,
     r"(?<!output_)padding", []),
    ("dilation-tuple-too-long", lambda x, w, b, kw: (x, w, b, dict(kw, dilation=(1, 1, 1))), ValueError, "dilation", []),
    ("output_padding-tuple-too-long", lambda x, w, b, kw: (x, w, b, dict(kw, output_padding=(1, 1, 1))),
     ValueError, "output_padding", []),
    ("x-int", lambda x, w, b, kw: (x.astype(np.int32), w, b, kw), TypeError, INPUT, ["int32"]),
    ("all-int", lambda x, w, b, kw: (x.astype(np.int64), w.astype(np.int64), b.astype(np.int64), kw),
     TypeError, INPUT, ["int64"]),
    ("weight-dtype-mismatch", lambda x, w, b, kw: (x, w.astype(np.float64), b, kw), TypeError,
     r"weight|input|\bx\b", ["float64", "float32"]),
    ("bias-dtype-mismatch", lambda x, w, b, kw: (x, w, b.astype(np.float16), kw), TypeError, "bias", ["float16"]),
]


@pytest.mark.parametrize("case", FORWARD_ERRORS, ids=lambda c: c[0])
def test_forward_rejects_bad_input(case, backend):
    _, change, exc, pattern, values = case
    x, w, b, kw = change(*_base2d())
    with pytest.raises(exc, match=pattern) as info:
        cudeconv.conv_transpose2d(to_backend(x, backend), to_backend(w, backend),
                                  None if b is None else to_backend(b, backend), backend=backend, **kw)
    for v in values:
        assert v in str(info.value), f"message {str(info.value)!r} does not show {v!r}"


@pytest.mark.parametrize("case", [c for c in FORWARD_ERRORS if not c[0].startswith("bias")], ids=lambda c: c[0])
def test_backward_rejects_bad_input(case):
    """The same checks guard the backward (grad_output of the valid base shape)."""
    _, change, exc, pattern, values = case
    x0, w0, b0, kw0 = _base2d()
    gy = np.ones(to_numpy(cudeconv.conv_transpose2d(x0, w0, b0, **kw0)).shape, np.float32)
    x, w, _, kw = change(x0, w0, b0, kw0)
    # The grad_output check may come first (its expected shape depends on the bad arguments).
    with pytest.raises(exc, match=None if pattern is None else pattern + "|grad_output"):
        cudeconv.conv_transpose2d_backward(gy, x, w, **kw)


@pytest.mark.parametrize("shape_change", ["spatial", "channels", "batch", "ndim"])
def test_backward_rejects_bad_grad_output_shape(shape_change, backend):
    x, w, b, kw = _base2d()
    shape = to_numpy(cudeconv.conv_transpose2d(x, w, b, **kw)).shape
    bad = {
        "spatial": shape[:2] + (shape[2] + 1, shape[3]),
        "channels": (shape[0], shape[1] - 1) + shape[2:],
        "batch": (shape[0] + 1,) + shape[1:],
        "ndim": shape[1:],
    }[shape_change]
    gy = np.ones(bad, np.float32)
    with pytest.raises(ValueError, match="grad_output"):
        cudeconv.conv_transpose2d_backward(*(to_backend(a, backend) for a in (gy, x, w)), backend=backend, **kw)


def test_backward_rejects_grad_output_dtype(backend):
    x, w, b, kw = _base2d()
    shape = to_numpy(cudeconv.conv_transpose2d(x, w, b, **kw)).shape
    for dt in (np.float64, np.float16, np.int32):
        gy = np.ones(shape, dt)
        with pytest.raises(TypeError, match="grad_output"):
            cudeconv.conv_transpose2d_backward(*(to_backend(a, backend) for a in (gy, x, w)),
                                               backend=backend, **kw)


def test_output_padding_below_dilation_is_allowed():
    """PyTorch's rule: output_padding < stride OR output_padding < dilation."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 4, 3))
    w = rng.standard_normal((2, 2, 2, 3))
    kw = dict(stride=1, padding=0, output_padding=1, groups=1, dilation=2)
    y = cudeconv.conv_transpose2d(x, w, **kw)
    assert_close(y, conv_transpose_ref(x, w, **kw), np.float64, 2 * 6)
    with pytest.raises(ValueError, match="output_padding"):
        cudeconv.conv_transpose2d(x, w, **dict(kw, output_padding=2))


def test_wrong_functional_for_dimensionality():
    """A 2-d weight/input pair given to conv_transpose3d or conv_transpose1d is refused."""
    x, w, b, kw = _base2d()
    for fn in (cudeconv.conv_transpose1d, cudeconv.conv_transpose3d):
        with pytest.raises(ValueError):
            fn(x, w, b, stride=2, padding=1, output_padding=1, groups=2)


# ------------------------------------------------------------------------------ zero batch

@pytest.mark.parametrize("nd", (1, 2, 3))
def test_empty_batch(nd, backend):
    rng = np.random.default_rng(nd)
    x = np.zeros((0, 4) + (3,) * nd, np.float32)
    w = rng.standard_normal((4, 2) + (2,) * nd).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    out_sp = output_spatial((3,) * nd, (2,) * nd, 2, 1, 1, 1)
    y = fwd(nd)(*(to_backend(a, backend) for a in (x, w, b)), backend=backend, **kw)
    y = to_numpy(y)
    assert y.shape == (0, 4) + out_sp and y.dtype == np.float32
    gy = np.zeros((0, 4) + out_sp, np.float32)
    gx, gw, gb = (to_numpy(a) for a in bwd(nd)(*(to_backend(a, backend) for a in (gy, x, w)),
                                               backend=backend, **kw))
    assert gx.shape == x.shape and gx.dtype == np.float32
    assert gw.shape == w.shape and gw.dtype == np.float32 and np.all(gw == 0)
    assert gb.shape == (4,) and gb.dtype == np.float32 and np.all(gb == 0)


# ---------------------------------------------------------------- layouts: views and strides

def _views(backend):
    """Pairs (view, contiguous copy) of x, w and grad_output built on the backend's arrays."""
    rng = np.random.default_rng(11)
    kw = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2))
    base_x = to_backend(rng.standard_normal((2, 4, 5, 8)).astype(np.float32), backend)
    base_w = to_backend(rng.standard_normal((4, 3, 3, 2)).astype(np.float32), backend)
    xs = {
        "contiguous": base_x[:, :, :, :4],
        "reversed-last": base_x[:, :, :, ::-1][:, :, :, :4],
        "reversed-all": base_x[::-1, ::-1, ::-1, ::-1][:, :, :, :4],
        "step2": base_x[:, :, :, ::2],
        "transposed": to_backend(np.ascontiguousarray(
            to_numpy(base_x[:, :, :, :4]).transpose(3, 2, 0, 1)), backend).transpose(2, 3, 1, 0),
    }
    ws = {
        "contiguous": base_w,
        "flipped": base_w[:, :, ::-1, ::-1],
        "transposed": to_backend(np.ascontiguousarray(to_numpy(base_w).transpose(3, 1, 2, 0)),
                                 backend).transpose(3, 1, 2, 0),
    }
    return kw, xs, ws


def test_noncontiguous_and_negative_strides(backend):
    kw, xs, ws = _views(backend)
    for xname, xv in xs.items():
        for wname, wv in ws.items():
            if xname != "contiguous" and wname != "contiguous" and (xname, wname) != ("reversed-all", "flipped"):
                continue
            xc = to_numpy(xv).copy()
            wc = to_numpy(wv).copy()
            ref = conv_transpose_ref(xc, wc, **kw)
            scale = conv_transpose_ref(np.abs(xc), np.abs(wc), **kw)
            y = cudeconv.conv_transpose2d(xv, wv, backend=backend, **kw)
            y_c = cudeconv.conv_transpose2d(to_backend(xc, backend), to_backend(wc, backend), backend=backend, **kw)
            assert_close(y, ref, np.float32, 2 * 6, scale=scale, name=f"output x={xname} w={wname}")
            assert_close(y, to_numpy(y_c), np.float32, 2 * 6, scale=scale, name=f"view vs copy x={xname} w={wname}")

            rng = np.random.default_rng(12)
            gyc = rng.standard_normal(ref.shape[:3] + (2 * ref.shape[3],)).astype(np.float32)
            gyv = to_backend(gyc, backend)[..., ::-2]  # negatively strided grad_output
            gyc = np.ascontiguousarray(gyc[..., ::-2])
            got = cudeconv.conv_transpose2d_backward(gyv, xv, wv, backend=backend, **kw)
            exp = conv_transpose_backward_ref(gyc, xc, wc, **kw)
            scl = conv_transpose_backward_ref(np.abs(gyc), np.abs(xc), np.abs(wc), **kw)
            terms = (3 * 6, 2 * int(np.prod(xc.shape[2:])), 2 * int(np.prod(gyc.shape[2:])))
            for name, a, e, s, t in zip(("grad_input", "grad_weight", "grad_bias"), got, exp, scl, terms):
                assert_close(a, e, np.float32, t, scale=s, name=f"{name} x={xname} w={wname}")


# ------------------------------------------------------------------------------ NaN locality

def _nan_setup(nd):
    rng = np.random.default_rng(20 + nd)
    sp = {1: (7,), 2: (4, 5), 3: (3, 3, 2)}[nd]
    k = {1: (3,), 2: (3, 2), 3: (2, 2, 2)}[nd]
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=(2,) + (1,) * (nd - 1))
    x = rng.standard_normal((2, 4) + sp).astype(np.float32)
    w = rng.standard_normal((4, 3) + k).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    gy = rng.standard_normal(conv_transpose_ref(x, w, **kw).shape).astype(np.float32)
    return x, w, b, gy, kw


def _indicator(shape, index):
    a = np.zeros(shape)
    a[index] = 1.0
    return a


class _NaNCase:
    """Runs forward/backward with one NaN planted and checks where NaN comes out."""

    def __init__(self, nd, backend):
        self.nd, self.backend = nd, backend
        self.x, self.w, self.b, self.gy, self.kw = _nan_setup(nd)
        self.rng = np.random.default_rng(30 + nd)

    def pick(self, a, reaches):
        """A random index of ``a`` for which ``reaches(index)`` (falls back to the last draw)."""
        for _ in range(50):
            idx = tuple(int(self.rng.integers(s)) for s in a.shape)
            if reaches(idx):
                break
        return idx

    def fwd(self, xx, ww, bb):
        return to_numpy(fwd(self.nd)(*(to_backend(a, self.backend) for a in (xx, ww, bb)),
                                     backend=self.backend, **self.kw))

    def bwd(self, gg, xx, ww):
        return [to_numpy(a) for a in bwd(self.nd)(*(to_backend(a, self.backend) for a in (gg, xx, ww)),
                                                  backend=self.backend, **self.kw)]

    @staticmethod
    def check(got, mask, what):
        assert np.array_equal(np.isnan(got), mask), (
            f"{what}: NaN at {np.argwhere(np.isnan(got) & ~mask)[:3].tolist()} (should not be) / missing at "
            f"{np.argwhere(~np.isnan(got) & mask)[:3].tolist()}")
        assert np.all(np.isfinite(got[~mask])), f"{what}: non-finite values outside the NaN's reach"

    def planted(self, a, idx):
        a = a.copy()
        a[idx] = np.nan
        return a


@pytest.mark.parametrize("nd", (1, 2, 3))
def test_nan_locality_forward(nd, backend):
    """A NaN in x, weight or bias reaches exactly the outputs that element contributes to."""
    t = _NaNCase(nd, backend)
    x, w, b, kw, ones = t.x, t.w, t.b, t.kw, np.ones_like
    # random positions, and corners whose taps padding=1 partly crops
    for ix in (t.pick(x, lambda i: conv_transpose_ref(_indicator(x.shape, i), ones(w), **kw).any()),
               (1, 1) + (0,) * nd, (0, 2) + tuple(m - 1 for m in x.shape[2:])):
        t.check(t.fwd(t.planted(x, ix), w, b),
                conv_transpose_ref(_indicator(x.shape, ix), ones(w), **kw) != 0, f"x NaN at {ix}")
    for iw in (t.pick(w, lambda i: conv_transpose_ref(ones(x), _indicator(w.shape, i), **kw).any()),
               (1, 1) + (0,) * nd, (2, 0) + tuple(m - 1 for m in w.shape[2:])):
        t.check(t.fwd(x, t.planted(w, iw), b),
                conv_transpose_ref(ones(x), _indicator(w.shape, iw), **kw) != 0, f"w NaN at {iw}")
    mask = np.zeros(conv_transpose_ref(x, w, **kw).shape, bool)
    mask[:, 4] = True
    t.check(t.fwd(x, w, t.planted(b, (4,))), mask, "bias NaN at 4")


@pytest.mark.parametrize("nd", (1, 2, 3))
def test_nan_locality_backward_grad_output(nd, backend):
    """A NaN in grad_output reaches exactly the gradient entries it contributes to."""
    t = _NaNCase(nd, backend)
    x, w, gy, kw, ones = t.x, t.w, t.gy, t.kw, np.ones_like
    ig = t.pick(gy, lambda i: conv_transpose_backward_ref(_indicator(gy.shape, i), ones(x), ones(w), **kw)[0].any())
    gx, gw, gb = t.bwd(t.planted(gy, ig), x, w)
    mx, mw, _ = conv_transpose_backward_ref(_indicator(gy.shape, ig), ones(x), ones(w), **kw)
    t.check(gx, mx != 0, f"grad_input, grad_output NaN at {ig}")
    t.check(gw, mw != 0, f"grad_weight, grad_output NaN at {ig}")
    t.check(gb, np.arange(6) == ig[1], f"grad_bias, grad_output NaN at {ig}")


@pytest.mark.parametrize("nd", (1, 2, 3))
def test_nan_locality_backward_x_and_weight(nd, backend):
    """A NaN in x (weight) reaches only the grad_weight (grad_input) entries it contributes to.

    grad_input does not depend on x, nor grad_weight on the weight, so those stay finite; taps
    that are cropped away (padding) contribute nothing. Stricter than PyTorch's CPU path, whose
    zero-padded im2col multiplies 0·NaN; the spec's locality rule asks for it all the same.
    """
    t = _NaNCase(nd, backend)
    x, w, gy, kw, ones = t.x, t.w, t.gy, t.kw, np.ones_like
    # a random position, and the corner where padding=1 crops some of the element's taps
    for ix in (t.pick(x, lambda i: conv_transpose_ref(_indicator(x.shape, i), ones(w), **kw).any()),
               (1, 1) + (0,) * nd):
        gx, gw, gb = t.bwd(gy, t.planted(x, ix), w)
        _, mw, _ = conv_transpose_backward_ref(ones(gy), _indicator(x.shape, ix), ones(w), **kw)
        t.check(gx, np.zeros(x.shape, bool), "grad_input with NaN in x (does not depend on x)")
        t.check(gw, mw != 0, f"grad_weight, x NaN at {ix}")
        t.check(gb, np.zeros(6, bool), "grad_bias with NaN in x")
    # weight tap (.., 0, ..., 0) is cropped at the first input positions by padding=1
    iw = (1, 1) + (0,) * nd
    gx, gw, gb = t.bwd(gy, x, t.planted(w, iw))
    mx, _, _ = conv_transpose_backward_ref(ones(gy), ones(x), _indicator(w.shape, iw), **kw)
    assert not mx.all()
    t.check(gx, mx != 0, f"grad_input, w NaN at {iw}")
    t.check(gw, np.zeros(w.shape, bool), "grad_weight with NaN in w (does not depend on w)")
    t.check(gb, np.zeros(6, bool), "grad_bias with NaN in w")


# ---------------------------------------------------------------------- inputs not modified

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_inputs_not_modified(dtype, backend):
    x, w, b, kw = _base2d(dtype)
    gy = np.random.default_rng(3).standard_normal(conv_transpose_ref(x, w, b, **kw).shape).astype(dtype)
    arrays = [to_backend(a, backend) for a in (x, w, b, gy)]
    before = [to_numpy(a).copy() for a in arrays]
    cudeconv.conv_transpose2d(*arrays[:3], backend=backend, **kw)
    cudeconv.conv_transpose2d_backward(arrays[3], arrays[0], arrays[1], backend=backend, **kw)
    # and a view with negative strides
    cudeconv.conv_transpose2d(arrays[0][:, :, ::-1], arrays[1][:, :, ::-1], arrays[2], backend=backend, **kw)
    for name, a, c in zip(("x", "weight", "bias", "grad_output"), arrays, before):
        assert np.array_equal(to_numpy(a), c), f"{name} was modified"


# ---------------------------------------------------------------------------- backend choice

def test_backend_none_infers_numpy():
    x, w, b, kw = _base2d()
    y = cudeconv.conv_transpose2d(x, w, b, **kw)
    assert isinstance(y, np.ndarray)
    assert np.array_equal(y, cudeconv.conv_transpose2d(x, w, b, backend="numpy", **kw))
    gy = np.ones(y.shape, np.float32)
    for a, e in zip(cudeconv.conv_transpose2d_backward(gy, x, w, **kw),
                    cudeconv.conv_transpose2d_backward(gy, x, w, backend="numpy", **kw)):
        assert isinstance(a, np.ndarray) and np.array_equal(a, e)


@pytest.mark.parametrize("name", ["tpu", "CUDA", "", "numpy "])
def test_unknown_backend_rejected(name):
    x, w, b, kw = _base2d()
    with pytest.raises(ValueError, match="backend"):
        cudeconv.conv_transpose2d(x, w, b, backend=name, **kw)
    with pytest.raises(ValueError, match="backend"):
        cudeconv.conv_transpose2d_backward(np.ones((2, 6, 10, 10), np.float32), x, w, backend=name, **kw)


def test_cuda_unavailable_raises():
    reason = backends.cuda_unavailable_reason()
    if reason is None:
        pytest.skip("CUDA is usable here")
    assert issubclass(cudeconv.BackendUnavailableError, RuntimeError)
    x, w, b, kw = _base2d()
    with pytest.raises(cudeconv.BackendUnavailableError) as info:
        cudeconv.conv_transpose2d(x, w, b, backend="cuda", **kw)
    assert str(info.value).strip(), "BackendUnavailableError without a reason"
    gy = np.ones(cudeconv.conv_transpose2d(x, w, b, **kw).shape, np.float32)
    with pytest.raises(cudeconv.BackendUnavailableError):
        cudeconv.conv_transpose2d_backward(gy, x, w, backend="cuda", **kw)


def test_array_types_follow_backend(backend):
    x, w, b, kw = _base2d()
    y = cudeconv.conv_transpose2d(*(to_backend(a, backend) for a in (x, w, b)), backend=backend, **kw)
    grads = cudeconv.conv_transpose2d_backward(to_backend(np.ones(y.shape, np.float32), backend),
                                               to_backend(x, backend), to_backend(w, backend),
                                               backend=backend, **kw)
    kind = type(to_backend(x, backend))
    assert type(y) is kind
    assert all(type(g) is kind for g in grads)
    if backend == "cuda":
        # CuPy arrays with backend=None run on the GPU and stay there
        y2 = cudeconv.conv_transpose2d(*(to_backend(a, backend) for a in (x, w, b)), **kw)
        assert type(y2) is kind
        assert_close(y2, to_numpy(y), np.float32, 13)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unbatched_input_as_in_pytorch(backend, nd):
    """An unbatched (C_in, *spatial) input gives the batched result of its single sample."""
    rng = np.random.default_rng(40 + nd)
    x = rng.standard_normal((4,) + (3,) * nd)
    w = rng.standard_normal((4, 3) + (2,) * nd)
    b = rng.standard_normal(6)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    xb, wb, bb = (to_backend(a, backend) for a in (x, w, b))
    y = fwd(nd)(xb, wb, bb, backend=backend, **kw)
    y_batched = fwd(nd)(xb[None], wb, bb, backend=backend, **kw)
    assert y.shape == y_batched.shape[1:]
    np.testing.assert_array_equal(to_numpy(y), to_numpy(y_batched)[0])
    gy = to_backend(rng.standard_normal(y.shape), backend)
    grads = bwd(nd)(gy, xb, wb, backend=backend, **kw)
    grads_batched = bwd(nd)(gy[None], xb[None], wb, backend=backend, **kw)
    assert grads[0].shape == x.shape
    np.testing.assert_array_equal(to_numpy(grads[0]), to_numpy(grads_batched[0])[0])
    for got, want in zip(grads[1:], grads_batched[1:]):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
    layer = getattr(cudeconv, f"ConvTranspose{nd}d")(4, 6, 2, groups=2, stride=2, padding=1,
                                                     dtype="float64", backend=backend, seed=0)
    out = layer.forward(xb, output_size=(6,) + (y.shape[1] - 1,) * nd)  # (C, *spatial) form
    assert out.shape == (6,) + (y.shape[1] - 1,) * nd
    assert layer.backward(to_backend(np.ones(out.shape), backend)).shape == x.shape


# Innermost strides of 4 and more, where the NumPy backend lays its scatter buffer out by stride
# phase (PHASE_LAYOUT_MIN_STRIDE): dilations that do and do not divide the stride, output_padding
# up to stride - 1, padding crossing phases.
LARGE_STRIDE_CASES = [
    dict(nd=1, n=2, cin=3, cout=4, groups=1, in_sp=(5,), kernel=(16,), stride=8, padding=4,
         output_padding=0, dilation=1, bias=True, seed=11),
    dict(nd=1, n=1, cin=4, cout=2, groups=2, in_sp=(4,), kernel=(5,), stride=(6,), padding=(3,),
         output_padding=(5,), dilation=(3,), bias=False, seed=12),
    dict(nd=2, n=1, cin=2, cout=3, groups=1, in_sp=(3, 4), kernel=(3, 9), stride=(2, 4), padding=(1, 2),
         output_padding=(1, 3), dilation=(1, 2), bias=True, seed=13),
    dict(nd=3, n=1, cin=2, cout=2, groups=2, in_sp=(2, 2, 3), kernel=(2, 2, 5), stride=(1, 3, 5),
         padding=(0, 1, 6), output_padding=(0, 2, 4), dilation=(1, 1, 2), bias=True, seed=14),
]
_CASE_BY_KEY.update({"stride:" + _case_id(c): c for c in LARGE_STRIDE_CASES})


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case_key", [k for k in _CASE_BY_KEY if k.startswith("stride:")])
def test_matches_oracle_large_strides(case_key, dtype, backend):
    _check_case(case_key, dtype, backend)


def test_remembered_geometries_still_reject_look_alike_arguments():
    """Validated argument sets are cached; 1 == True == 1.0 must not let a bad one through."""
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    cudeconv.conv_transpose2d(x, w, stride=1, groups=1)
    for bad in (dict(stride=True), dict(stride=1.0), dict(stride=(1, True)), dict(groups=True)):
        with pytest.raises(TypeError, match=next(iter(bad))):
            cudeconv.conv_transpose2d(x, w, **bad)
