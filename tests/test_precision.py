"""``precision`` and ``algorithm`` through the public API: the functional pairs, the layers and the
settable default, on every backend (the kernel backends run the implicit GEMM for these layers);
and the tf32x3 GEMM against a NumPy model of the three products it keeps."""
import numpy as np
import pytest

import cudeconv
from cudeconv._geometry import make_geometry
from cudeconv.functional import ALGORITHMS, BACKWARD_ALGORITHMS

from conftest import assert_close, float64_reference, tf32_round, to_backend, to_numpy
from oracle import conv_transpose_backward_ref_fast, conv_transpose_ref_fast

KW = dict(stride=2, padding=1)


@pytest.fixture
def default_precision():
    """Restores the default precision a test changes."""
    previous = cudeconv.get_default_precision()
    yield
    cudeconv.set_default_precision(previous)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 16, 5, 4)).astype(np.float32)
    w = rng.standard_normal((16, 24, 4, 4)).astype(np.float32)  # wide enough for the GEMM
    b = rng.standard_normal(24).astype(np.float32)
    return x, w, b


def test_precision_values_are_checked(default_precision):
    x, w, b = _arrays()
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'tf32', 'tf32x3'\), got 'fp16'"):
        cudeconv.conv_transpose2d(x, w, b, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        cudeconv.conv_transpose2d_backward(np.zeros((2, 24, 8, 7), np.float32), x, w, precision=32)
    with pytest.raises(ValueError, match="precision must be one of"):
        cudeconv.set_default_precision("TF32")
    with pytest.raises(ValueError, match="precision must be one of"):
        cudeconv.ConvTranspose2d(16, 24, 4, precision="bf16")
    assert cudeconv.set_default_precision("tf32") == "fp32"
    assert cudeconv.get_default_precision() == "tf32"


def test_algorithm_values_are_checked():
    x, w, b = _arrays()
    assert ALGORITHMS == ("auto", "gemm", "gather", "scatter") and BACKWARD_ALGORITHMS == ("auto", "gemm", "gather")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cudeconv.conv_transpose2d(x, w, b, algorithm="implicit")
    y = cudeconv.conv_transpose2d(x, w, b, **KW)
    with pytest.raises(ValueError, match=r"algorithm must be one of \('auto', 'gemm', 'gather'\), got 'scatter'"):
        cudeconv.conv_transpose2d_backward(y, x, w, **KW, algorithm="scatter")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cudeconv.ConvTranspose2d(16, 24, 4, algorithm=None)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "tf32x3"])
def test_functional_precision(backend, precision):
    x, w, b = _arrays(1)
    gy = np.random.default_rng(2).standard_normal((2, 24, 10, 8)).astype(np.float32)
    xb, wb, bb, gyb = (to_backend(a, backend) for a in (x, w, b, gy))
    y = cudeconv.conv_transpose2d(xb, wb, bb, **KW, precision=precision, backend=backend)
    grad_input, grad_weight, grad_bias = cudeconv.conv_transpose2d_backward(gyb, xb, wb, **KW, precision=precision,
                                                                            backend=backend)
    geom = make_geometry(2, x.shape, w.shape, 2, 1, 0, 1, 1)
    (y_ref, gi_ref, gw_ref, _), (y_scale, gi_scale, gw_scale, _) = float64_reference(geom, x, w, b, gy)
    exact = backend == "numpy" or precision == "fp32"
    if precision == "tf32" and backend != "numpy":  # rounded operands, exact products
        (y_ref, gi_ref, gw_ref, _), _ = float64_reference(geom, tf32_round(x), tf32_round(w), b, tf32_round(gy))
    factor = 8.0 if exact or precision == "tf32" else 20.0
    assert_close(y, y_ref, np.float32, terms=16 * 16 + 1, scale=y_scale, factor=factor, name="forward")
    assert_close(grad_input, gi_ref, np.float32, terms=24 * 16, scale=gi_scale, factor=factor, name="grad_input")
    assert_close(grad_weight, gw_ref, np.float32, terms=2 * 20, scale=gw_scale, factor=factor, name="grad_weight")


def test_numpy_backend_is_exact_in_every_precision():
    x, w, b = _arrays(3)
    results = [cudeconv.conv_transpose2d(x, w, b, **KW, precision=p) for p in cudeconv.PRECISIONS]
    assert all(r.tobytes() == results[0].tobytes() for r in results)


def test_layers_follow_their_precision_or_the_default(kernel_backend, default_precision):
    x, _, _ = _arrays(4)
    xb = to_backend(x, kernel_backend)
    explicit = cudeconv.ConvTranspose2d(16, 24, 4, **KW, seed=0, backend=kernel_backend, precision="tf32")
    follows = cudeconv.ConvTranspose2d(16, 24, 4, **KW, seed=0, backend=kernel_backend)
    exact = cudeconv.ConvTranspose2d(16, 24, 4, **KW, seed=0, backend=kernel_backend, precision="fp32")
    assert "precision='tf32'" in repr(explicit) and follows.precision is None
    y_tf32 = to_numpy(explicit(xb))
    y_exact = to_numpy(exact(xb))
    assert to_numpy(follows(xb)).tobytes() == y_exact.tobytes()  # the default is fp32
    assert y_tf32.tobytes() != y_exact.tobytes()  # TF32 rounding shows
    cudeconv.set_default_precision("tf32")
    assert to_numpy(follows(xb)).tobytes() == y_tf32.tobytes()
    assert to_numpy(exact(xb)).tobytes() == y_exact.tobytes()  # an explicit precision stays
    # backward follows the layer's precision too
    gy = to_backend(np.ones(y_tf32.shape, np.float32), kernel_backend)
    assert to_numpy(follows.backward(gy)).tobytes() == to_numpy(explicit.backward(gy)).tobytes()


def test_algorithms_agree(kernel_backend):
    """The GEMM and the direct kernels compute the same forward and grad_input (to rounding)."""
    x, w, b = _arrays(5)
    xb, wb, bb = (to_backend(a, kernel_backend) for a in (x, w, b))
    run = dict(KW, backend=kernel_backend)
    forward = {a: to_numpy(cudeconv.conv_transpose2d(xb, wb, bb, **run, algorithm=a)) for a in ("gemm", "gather")}
    auto = to_numpy(cudeconv.conv_transpose2d(xb, wb, bb, **run))
    assert auto.tobytes() == forward["gemm"].tobytes()  # 16 -> 24 channels: "auto" takes the GEMM
    np.testing.assert_allclose(forward["gemm"], forward["gather"], rtol=1e-5, atol=1e-5)
    gy = to_backend(np.random.default_rng(6).standard_normal(forward["gemm"].shape).astype(np.float32), kernel_backend)
    grads = {a: to_numpy(cudeconv.conv_transpose2d_backward(gy, xb, wb, **run, algorithm=a)[0])
             for a in ("gemm", "gather")}
    np.testing.assert_allclose(grads["gemm"], grads["gather"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- tf32x3 against a model

def tf32x3_parts(a):
    """The two TF32 operands 3xTF32 makes of each float32 (Tf32Math<true>::round in
    kernels/deconv_gemm.cu): big = cvt.rna(x), small = cvt.rna(x - big); x - big is exact in float32."""
    a = np.asarray(a, np.float32)
    big = tf32_round(a)
    return big, tf32_round(a - big)


def tf32x3_model(bilinear, a, b):
    """For a pass ``bilinear(a, b)`` (float64, sums of products of a and b): the exact sum of the
    three products the kernel keeps, small·big + big·small + big·big (small·small dropped), and the
    sums of their absolute values: of the two small products, and of all three."""
    (a_big, a_small), (b_big, b_small) = tf32x3_parts(a), tf32x3_parts(b)
    pairs = ((a_small, b_big), (a_big, b_small), (a_big, b_big))
    exact = sum(bilinear(p.astype(np.float64), q.astype(np.float64)) for p, q in pairs)
    magnitudes = [bilinear(np.abs(p).astype(np.float64), np.abs(q).astype(np.float64)) for p, q in pairs]
    return exact, magnitudes[0] + magnitudes[1], sum(magnitudes)


# A pure GEMM per group (1x1 kernel, stride 1), so that each output's K is known: C_in/groups for
# the forward, C_out/groups for grad_input, N·H·W for grad_weight (one split). 8 = one mma k-step.
TF32X3_PROBLEMS = {"one-k-step": (8, (2, 2)), "five-k-steps": (40, (4, 5))}


@pytest.mark.parametrize("pass_", ["forward", "grad_input", "grad_weight"])
@pytest.mark.parametrize("problem", TF32X3_PROBLEMS)
def test_tf32x3_gemm_follows_a_model_of_its_three_products(kernel_backend, problem, pass_):
    channels, spatial = TF32X3_PROBLEMS[problem]
    groups, batch = 2, 2
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, groups * channels) + spatial).astype(np.float32)
    w = rng.standard_normal((groups * channels, channels, 1, 1)).astype(np.float32)
    gy = rng.standard_normal((batch, groups * channels) + spatial).astype(np.float32)
    geom = make_geometry(2, x.shape, w.shape, 1, 0, 0, groups, 1)
    impl = cudeconv.backends.get(kernel_backend)
    xb, wb, gyb = (to_backend(a, kernel_backend) for a in (x, w, gy))
    # each pass: its result, its two operands, the pass as a float64 bilinear map, its K
    if pass_ == "forward":
        got = impl.forward(xb, wb, None, geom, "gemm", "tf32x3")
        operands, bilinear = (x, w), lambda a, b: conv_transpose_ref_fast(a, b, groups=groups)
        k = channels
    elif pass_ == "grad_input":
        got = impl.grad_input(gyb, wb, geom, "gemm", "tf32x3")
        operands, bilinear = (gy, w), lambda a, b: conv_transpose_backward_ref_fast(a, x, b, groups=groups)[0]
        k = channels
    else:
        got = impl.grad_weight(gyb, xb, geom, "gemm", "tf32x3", splits=1)
        operands, bilinear = (x, gy), lambda a, b: conv_transpose_backward_ref_fast(b, a, w, groups=groups)[1]
        k = batch * int(np.prod(spatial))
    got = to_numpy(got).astype(np.float64)
    kept, small_magnitude, magnitude = tf32x3_model(bilinear, *operands)
    model = kept.astype(np.float32).astype(np.float64)
    exact = bilinear(*(a.astype(np.float64) for a in operands))
    plain_tf32 = bilinear(*(tf32_round(a).astype(np.float64) for a in operands))
    u = 2.0**-24

    # The model: each product off by at most 12u of itself (small·small ≤ 2^-22, and each small
    # part's own rounding ≤ 2^-22 of its operand), then rounded once to float32 — far closer to
    # float64 than TF32's products, each off by up to 2^-10 of itself.
    abs_products = bilinear(*(np.abs(a).astype(np.float64) for a in operands))
    assert np.all(np.abs(model - exact) <= 12 * u * (1 + 2.0**-9) * abs_products + u * np.abs(exact))
    assert 2**6 * np.max(np.abs(model - exact)) < np.max(np.abs(plain_tf32 - exact))

    # The kernel accumulates in float32: per k-step of 8, one mma each for small·big, big·small
    # and big·big, each rounding its sum once. k-step 1's two small mmas round sums of small
    # products; every other rounding but the last is of a partial sum at most `magnitude`; the
    # last is of the result itself; the model adds its own final rounding.
    steps = -(-k // 8)
    if kernel_backend == "emulator":  # its mma rounds its exact sum once to nearest (cudeconv_emu.h)
        bound = u * (3 * (steps - 1) * magnitude + 2 * small_magnitude + 2 * np.abs(kept))
    else:  # a GPU's tensor cores may truncate their sums: 2u at every rounding, of all the magnitude
        bound = 2 * u * 3 * steps * magnitude + u * np.abs(kept)
    bound = bound * (1 + 2.0**-10) + 2.0**-40 * magnitude  # second-order terms; the model's float64 sums
    error = np.abs(got - model)
    assert np.all(error <= bound), (
        f"{pass_}: {int(np.sum(error > bound))} of {error.size} off the model; worst "
        f"{np.max(error / magnitude):.3g}·Σ|a·b| against a bound of {np.min(bound / magnitude):.3g}·Σ|a·b|"
    )
    if kernel_backend == "emulator" and steps == 1:
        # One k-step: the result is kept + δ rounded once, δ the two small mmas' roundings (at most
        # 2u·small_magnitude): bit for bit the model wherever kept is farther than δ from a float32
        # rounding boundary (the order of the mmas shows here)
        delta = 2 * u * (1 + 2.0**-20) * small_magnitude + 2.0**-40 * magnitude
        model32 = kept.astype(np.float32)
        below = (model + np.nextafter(model32, np.float32(-np.inf)).astype(np.float64)) / 2
        above = (model + np.nextafter(model32, np.float32(np.inf)).astype(np.float64)) / 2
        clear = (kept - below > delta) & (above - kept > delta)
        assert clear.mean() > 0.9, clear.mean()
        assert np.array_equal(got[clear], model[clear]), (
            f"{pass_}: {np.sum(got[clear] != model[clear])} of the {clear.sum()} results clear of a rounding "
            f"boundary differ from the model")
