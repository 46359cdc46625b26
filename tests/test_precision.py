"""``precision`` and ``algorithm`` through the public API: the functional pairs, the layers and the
settable default, on every backend (the kernel backends run the implicit GEMM for these layers)."""
import numpy as np
import pytest

import cudeconv
from cudeconv.functional import ALGORITHMS, BACKWARD_ALGORITHMS

from conftest import assert_close, float64_reference, tf32_round, to_backend, to_numpy

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
    from cudeconv._geometry import make_geometry

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
