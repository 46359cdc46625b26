"""The NumPy backend's batch slicing: a batch whose column buffer would exceed COLUMN_BUDGET is
computed a slice of samples at a time (the forward's scatter and the backward's im2col products,
with grad_weight summed over the slices). Real layers reach the budget only at sizes too large for
a test, so here the budget is made tiny and the results are checked against the naive loops of
tests/oracle.py. The NumPy backend is the reference the kernels are checked against, so its
slicing must be right on its own."""
import numpy as np
import pytest

import cudeconv
from cudeconv.backends import numpy_backend

from conftest import assert_close
from oracle import conv_transpose_backward_ref, conv_transpose_ref

BATCH = 5

# (ndim, C_in, C_out, in_size, kernel_size, stride, padding, output_padding, groups, dilation)
GEOMETRIES = {
    # stride-spaced combs of the output itself, two groups
    "2d-comb-groups": (2, 4, 6, (3, 4), 3, 2, 1, 1, 2, 1),
    # innermost stride 4: the stride-phase layout
    "2d-phased": (2, 2, 3, (3, 3), (3, 5), (2, 4), (1, 2), 0, 1, (1, 2)),
    # padding crops most inputs away: x cut to the inputs that reach the output
    "1d-cropped": (1, 3, 2, (7,), 3, 1, 4, 0, 1, 1),
    # one input channel per group: the forward's path without a column buffer
    "2d-depthwise": (2, 3, 6, (3, 3), 2, 2, 0, 1, 3, 1),
    "3d": (3, 2, 4, (2, 2, 3), 2, (1, 2, 2), (0, 1, 0), 0, 2, 1),
}


@pytest.fixture(params=(1, 2, 3), ids=lambda n: f"{n}-per-slice")
def slices_used(request, monkeypatch):
    """Makes COLUMN_BUDGET hold the column buffer of ``request.param`` samples (BATCH = 5: slices
    of 1, 2 or 3 samples, the last one ragged for 2 and 3) and records the slices each pass used."""
    per_slice, used = request.param, []
    batch_slices = numpy_backend._batch_slices

    def budgeted(geom, positions):
        # the column buffer holds C_out·∏kernel values per input position and sample
        monkeypatch.setattr(numpy_backend, "COLUMN_BUDGET", per_slice * geom.out_channels * geom.taps * positions)
        slices = batch_slices(geom, positions)
        used.append(slices)
        return slices

    monkeypatch.setattr(numpy_backend, "_batch_slices", budgeted)
    expected = [slice(start, min(start + per_slice, BATCH)) for start in range(0, BATCH, per_slice)]
    return used, expected


def _problem(ndim, c_in, c_out, in_size, kernel_size, groups, seed):
    rng = np.random.default_rng(seed)
    kernel = (kernel_size,) * ndim if np.ndim(kernel_size) == 0 else tuple(kernel_size)
    x = rng.standard_normal((BATCH, c_in) + tuple(in_size))
    weight = rng.standard_normal((c_in, c_out // groups) + kernel)
    bias = rng.standard_normal(c_out)
    return x, weight, bias


@pytest.mark.parametrize("name", GEOMETRIES)
def test_batch_slices_give_the_oracles_forward_and_gradients(name, slices_used):
    ndim, c_in, c_out, in_size, kernel_size, stride, padding, output_padding, groups, dilation = GEOMETRIES[name]
    used, expected_slices = slices_used
    x, weight, bias = _problem(ndim, c_in, c_out, in_size, kernel_size, groups, seed=len(name))
    options = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    conv = getattr(cudeconv, f"conv_transpose{ndim}d")
    conv_backward = getattr(cudeconv, f"conv_transpose{ndim}d_backward")

    y = conv(x, weight, bias, **options, backend="numpy")
    y_ref = conv_transpose_ref(x, weight, bias, **options)
    grad_output = np.random.default_rng(1).standard_normal(y_ref.shape)
    grads = conv_backward(grad_output, x, weight, **options, backend="numpy")
    refs = conv_transpose_backward_ref(grad_output, x, weight, **options)
    assert used == [expected_slices, expected_slices], "forward and backward must each run in these slices"

    # Σ|a·b| per output (the oracle on absolute values): the scale rounding errors are relative to
    y_scale = conv_transpose_ref(np.abs(x), np.abs(weight), np.abs(bias), **options)
    scales = conv_transpose_backward_ref(np.abs(grad_output), np.abs(x), np.abs(weight), **options)
    taps = weight[0, 0].size
    terms = {"grad_input": (c_out // groups) * taps, "grad_weight": BATCH * x[0, 0].size,
             "grad_bias": BATCH * y_ref[0, 0].size}
    assert_close(y, y_ref, np.float64, (c_in // groups) * taps + 1, scale=y_scale, name="forward")
    for what, got, ref, scale in zip(terms, grads, refs, scales):
        assert_close(got, ref, np.float64, terms[what], scale=scale, name=what)

