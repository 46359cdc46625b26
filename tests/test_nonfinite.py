"""Where a NaN or inf in an operand ends up, per pass and kernel path (README "Semantics",
docs/kernels.md "NaN and inf").

Each test puts a NaN and an inf at random positions of one operand, runs a pass and compares the
set of non-finite results with a prediction made without cudeconv:

- the *exact reach*: the results that have a term containing a non-finite value, read off the
  float64 loop oracle (tests/oracle.py) run on the same operands. With finite values of order one
  nothing overflows, so a result is non-finite exactly when one of its terms is (x·NaN, x·inf and
  0·inf are all non-finite, and a sum with a non-finite term is non-finite);
- plus, on the implicit GEMMs only, the documented *extra reach* of the zero-filled operand
  entries (0·NaN = 0·inf = NaN), computed here from the geometry by :func:`gemm_extra_reach`.

The NumPy backend, the direct, depthwise and scatter kernels and grad_bias keep the exact reach;
PyTorch's CPU path is compared with the NumPy backend where torch is installed.
"""
import itertools
from typing import NamedTuple

import numpy as np
import pytest

import cudeconv
from cudeconv import backends
from cudeconv._dtypes import BFLOAT16
from cudeconv._geometry import make_geometry
from cudeconv._precision import backward_algorithm

from conftest import to_backend, to_numpy
from oracle import conv_transpose_backward_ref, conv_transpose_ref

# NumPy's BLAS products warn on NaN operands; these tests are about the values.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

FORWARD_OPERANDS = ("input", "weight", "bias")
BACKWARD_OPERANDS = ("grad_output", "input", "weight")
RESULTS = ("grad_input", "grad_weight", "grad_bias")


class Problem(NamedTuple):
    """A tiny transposed convolution with cropped pairs (padding), stride phases and groups."""
    name: str
    input_shape: tuple
    weight_shape: tuple
    hyper: dict  # stride, padding, output_padding, groups, dilation

    @property
    def ndim(self):
        return len(self.input_shape) - 2

    def geometry(self):
        h = self.hyper
        return make_geometry(self.ndim, self.input_shape, self.weight_shape, h["stride"], h["padding"],
                             h["output_padding"], h["groups"], h["dilation"])


# Two groups, stride 2 along H (two phases), dilation 2 along W, padding that crops pairs in both
# dims: every pass and operand has results its non-finite values do not touch.
WIDE_2D = Problem("wide2d", (2, 4, 3, 3), (4, 2, 3, 2),
                  dict(stride=(2, 1), padding=(2, 1), output_padding=(1, 0), groups=2, dilation=(1, 2)))
# One input channel per group: the depthwise kernels (channel multiplier 2).
DEPTHWISE_2D = Problem("depthwise2d", (2, 2, 3, 4), (2, 2, 3, 2),
                       dict(stride=(2, 1), padding=(1, 1), output_padding=(0, 0), groups=2, dilation=(1, 2)))
# Three spatial dims with strides 2, 1, 3: the GEMM forward's phases per dim.
WIDE_3D = Problem("wide3d", (1, 2, 2, 3, 2), (2, 3, 2, 2, 3),
                  dict(stride=(2, 1, 3), padding=(1, 1, 2), output_padding=(1, 0, 1), groups=1,
                       dilation=(1, 2, 1)))
# grad_bias over several slabs of N·spatial (the parallel kernel), on a 1×1 kernel.
LONG_2D = Problem("long2d", (1, 1, 64, 130), (1, 2, 1, 1),
                  dict(stride=1, padding=0, output_padding=0, groups=1, dilation=1))


def make_operands(problem: Problem, seed: int):
    """float64 x, weight, bias, grad_output of order one."""
    rng = np.random.default_rng(seed)
    geom = problem.geometry()
    return {"input": rng.standard_normal(problem.input_shape),
            "weight": rng.standard_normal(problem.weight_shape),
            "bias": rng.standard_normal(geom.out_channels),
            "grad_output": rng.standard_normal(geom.output_shape)}


def poison(operands: dict, name: str, seed: int):
    """A copy of ``operands`` with a NaN and a ±inf at two random positions of ``name``."""
    rng = np.random.default_rng(seed)
    poisoned = dict(operands)
    array = operands[name].copy()
    nan_at, inf_at = rng.choice(array.size, size=2, replace=False)
    array.flat[nan_at] = np.nan
    array.flat[inf_at] = rng.choice([-np.inf, np.inf])
    poisoned[name] = array
    return poisoned


def exact_reach(problem: Problem, operands: dict):
    """{result: mask} of the results with a non-finite term, from the float64 loop oracle."""
    h = problem.hyper
    y = conv_transpose_ref(operands["input"], operands["weight"], operands["bias"], **h)
    grads = conv_transpose_backward_ref(operands["grad_output"], operands["input"], operands["weight"], **h)
    return {"forward": ~np.isfinite(y), **{r: ~np.isfinite(g) for r, g in zip(RESULTS, grads)}}


def gemm_extra_reach(problem: Problem, result: str, operands: dict):
    """The results the implicit GEMM of ``result`` also turns non-finite, beyond the exact reach:
    its K loop multiplies every operand entry of a tile's row or column, the zero-filled ones
    (pairs that land outside the tensor) included, and 0·NaN = 0·inf = NaN. So

    - forward: a non-finite weight[ci, c, k] reaches y[n, group(ci)·C_out/g + c, o] for every n
      and every o in the stride phase of tap k, i.e. (o + padding - k·dilation) % stride == 0 per dim;
    - grad_input: a non-finite weight[ci, c, k] reaches grad_input[n, ci, i] for every n and i;
    - grad_weight: a non-finite x[n, ci, i] reaches grad_weight[ci, c, k] for every c and k.

    grad_output, the bias and the forward's x reach exactly their terms.
    """
    geom = problem.geometry()
    stride, padding, dilation = geom.stride, geom.padding, geom.dilation
    cout_g, cin_g = geom.out_channels_per_group, geom.in_channels_per_group
    if result == "forward":
        extra = np.zeros(geom.output_shape, bool)
        for ci, c, *k in zip(*np.nonzero(~np.isfinite(operands["weight"]))):
            co = ci // cin_g * cout_g + c
            for o in itertools.product(*(range(n) for n in geom.out_size)):
                if all((o[d] + padding[d] - k[d] * dilation[d]) % stride[d] == 0 for d in range(geom.ndim)):
                    extra[(slice(None), co) + o] = True
        return extra
    if result == "grad_input":
        extra = np.zeros(geom.input_shape, bool)
        for ci in np.nonzero(~np.isfinite(operands["weight"]))[0]:
            extra[:, ci] = True
        return extra
    if result == "grad_weight":
        extra = np.zeros(geom.weight_shape, bool)
        for ci in np.nonzero(~np.isfinite(operands["input"]))[1]:
            extra[ci] = True
        return extra
    return np.zeros(geom.out_channels, bool)  # grad_bias: a plain sum


def _as(array, dtype):
    return None if array is None else array.astype(dtype)


def run_passes(backend, problem: Problem, operands: dict, dtype, algorithm, precision, forward: bool):
    """{result: non-finite mask} of the forward (``forward``) or of the three gradients."""
    h = problem.hyper
    conv = {1: cudeconv.conv_transpose1d, 2: cudeconv.conv_transpose2d, 3: cudeconv.conv_transpose3d}
    backward = {1: cudeconv.conv_transpose1d_backward, 2: cudeconv.conv_transpose2d_backward,
                3: cudeconv.conv_transpose3d_backward}
    arrays = {name: to_backend(_as(a, dtype), backend) for name, a in operands.items()}
    if forward:
        y = conv[problem.ndim](arrays["input"], arrays["weight"], arrays["bias"], **h, backend=backend,
                               algorithm=algorithm, precision=precision)
        results = {"forward": y}
    else:
        grads = backward[problem.ndim](arrays["grad_output"], arrays["input"], arrays["weight"], **h,
                                       backend=backend, algorithm=backward_algorithm(algorithm),
                                       precision=precision)
        results = dict(zip(RESULTS, grads))
    return {r: ~np.isfinite(to_numpy(a).astype(np.float64)) for r, a in results.items()}


def assert_same_mask(actual, expected, what):
    differ = np.argwhere(actual != expected)
    assert not differ.size, (
        f"{what}: {len(differ)} results differ from the prediction ({int(expected.sum())} non-finite "
        f"predicted, {int(actual.sum())} found); first: {differ[:4].tolist()}, "
        f"found non-finite there: {[bool(actual[tuple(i)]) for i in differ[:4]]}"
    )


class KernelCase(NamedTuple):
    """A kernel configuration and the path ``KernelBackend.kernel_path`` must pick for each pass."""
    problem: Problem
    dtype: object
    algorithm: str
    precision: str
    kinds: dict  # pass -> path kind

    @property
    def id(self):
        return f"{self.problem.name}-{np.dtype(self.dtype).name}-{self.algorithm}-{self.precision}"


GEMM = dict(forward="gemm", grad_input="gemm", grad_weight="gemm", grad_bias="per-channel")
DIRECT = dict(forward="direct", grad_input="direct", grad_weight="direct", grad_bias="per-channel")
DEPTHWISE = dict(forward="depthwise", grad_input="depthwise", grad_weight="depthwise", grad_bias="per-channel")
PATHS = [
    KernelCase(WIDE_2D, np.float32, "gemm", "fp32", GEMM),
    KernelCase(WIDE_2D, np.float32, "gemm", "tf32", GEMM),
    KernelCase(WIDE_2D, np.float32, "gemm", "tf32x3", GEMM),
    KernelCase(WIDE_2D, np.float64, "gemm", "fp32", GEMM),
    KernelCase(WIDE_2D, np.float16, "gemm", "fp32", GEMM),
    KernelCase(WIDE_2D, BFLOAT16, "gemm", "fp32", GEMM),
    KernelCase(WIDE_3D, np.float32, "gemm", "fp32", GEMM),
    KernelCase(WIDE_2D, np.float32, "gather", "fp32", DIRECT),
    KernelCase(WIDE_2D, np.float64, "gather", "fp32", DIRECT),
    KernelCase(WIDE_2D, BFLOAT16, "gather", "fp32", DIRECT),
    KernelCase(WIDE_2D, np.float32, "scatter", "fp32", dict(DIRECT, forward="scatter")),
    KernelCase(DEPTHWISE_2D, np.float32, "auto", "fp32", DEPTHWISE),
    KernelCase(DEPTHWISE_2D, np.float64, "auto", "fp32", DEPTHWISE),
    KernelCase(DEPTHWISE_2D, np.float16, "auto", "fp32", DEPTHWISE),
    KernelCase(LONG_2D, np.float32, "auto", "fp32", dict(DEPTHWISE, grad_bias="slabs")),
]


def _check_path_choice(backend, path: KernelCase):
    """The configuration runs the kernels it is meant to test."""
    impl, geom = backends.get(backend), path.problem.geometry()
    for pass_, kind in path.kinds.items():
        algorithm = path.algorithm if pass_ == "forward" else backward_algorithm(path.algorithm)
        chosen = impl.kernel_path(geom, pass_, algorithm, path.dtype, path.precision).kind
        assert chosen == kind, f"{pass_}: {chosen} instead of {kind}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.id)
@pytest.mark.parametrize("stage", ["forward", "backward"])
def test_kernels_reach_what_the_documented_rule_says(kernel_backend, path, stage):
    _check_path_choice(kernel_backend, path)
    operands = make_operands(path.problem, seed=1)
    names = FORWARD_OPERANDS if stage == "forward" else BACKWARD_OPERANDS
    spreads = 0
    for seed, name in enumerate(names):
        poisoned = poison(operands, name, seed=10 + seed)
        found = run_passes(kernel_backend, path.problem, poisoned, path.dtype, path.algorithm,
                           path.precision, forward=stage == "forward")
        exact = exact_reach(path.problem, poisoned)
        for result, mask in found.items():
            expected = exact[result]
            if path.kinds[result] == "gemm":
                extra = gemm_extra_reach(path.problem, result, poisoned) & ~expected
                spreads += int(extra.sum())
                expected = expected | extra
            assert_same_mask(mask, expected, f"{result} with a NaN and an inf in {name} ({path.id})")
    if "gemm" in path.kinds.values():  # the positions drawn show the extra reach, not only the exact one
        assert spreads > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
def test_split_k_grad_weight_reaches_what_the_documented_rule_says(kernel_backend, dtype):
    """grad_weight's GEMM with K split in three (partials in a workspace, added by the reduce
    kernel): the same rule as one split."""
    impl, geom = backends.get(kernel_backend), WIDE_2D.geometry()
    operands = make_operands(WIDE_2D, seed=2)
    for offset, name in enumerate(("input", "grad_output")):
        poisoned = poison(operands, name, seed=20 + offset)
        grad_weight = impl.grad_weight(to_backend(poisoned["grad_output"].astype(dtype), kernel_backend),
                                       to_backend(poisoned["input"].astype(dtype), kernel_backend),
                                       geom, "gemm", "fp32", splits=3)
        expected = exact_reach(WIDE_2D, poisoned)["grad_weight"] | gemm_extra_reach(WIDE_2D, "grad_weight", poisoned)
        found = ~np.isfinite(to_numpy(grad_weight).astype(np.float64))
        assert_same_mask(found, expected, f"grad_weight split in 3 with {name} poisoned")


NUMPY_DTYPES = (np.float64, np.float32, np.float16, BFLOAT16)


@pytest.mark.parametrize("problem", [WIDE_2D, DEPTHWISE_2D, WIDE_3D], ids=lambda p: p.name)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("seed", range(3))
def test_numpy_backend_reaches_exactly_the_terms(problem, dtype, seed):
    operands = make_operands(problem, seed)
    for stage, names in (("forward", FORWARD_OPERANDS), ("backward", BACKWARD_OPERANDS)):
        for offset, name in enumerate(names):
            poisoned = poison(operands, name, seed=100 * seed + offset)
            exact = exact_reach(problem, poisoned)
            found = run_passes("numpy", problem, poisoned, dtype, "auto", "fp32", forward=stage == "forward")
            for result, mask in found.items():
                assert_same_mask(mask, exact[result], f"numpy {result} with a NaN and an inf in {name}")


def test_exact_reach_oracle_is_not_everything():
    """The prediction is not trivial: every operand reaches some results but not all of them."""
    operands = make_operands(WIDE_2D, seed=1)
    for name, result in [("input", "forward"), ("weight", "forward"), ("input", "grad_weight"),
                         ("weight", "grad_input"), ("grad_output", "grad_input"),
                         ("grad_output", "grad_weight")]:
        mask = exact_reach(WIDE_2D, poison(operands, name, seed=3))[result]
        assert 0 < mask.sum() < mask.size, (name, result)


def _torch_masks(torch, problem: Problem, operands: dict, dtype):
    conv = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
            3: torch.nn.functional.conv_transpose3d}[problem.ndim]
    x, weight, bias = (torch.tensor(operands[n], dtype=dtype, requires_grad=True)
                       for n in ("input", "weight", "bias"))
    y = conv(x, weight, bias, **problem.hyper)
    y.backward(torch.tensor(operands["grad_output"], dtype=dtype))
    tensors = {"forward": y, "grad_input": x.grad, "grad_weight": weight.grad, "grad_bias": bias.grad}
    return {r: ~torch.isfinite(t.detach()).numpy() for r, t in tensors.items()}


@pytest.mark.parametrize("problem", [WIDE_2D, DEPTHWISE_2D, WIDE_3D], ids=lambda p: p.name)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_numpy_backend_against_pytorch_cpu(problem, dtype):
    """PyTorch's CPU path never misses a term either, and reaches exactly the terms in the forward,
    in grad_bias and from grad_output. A weight's non-finite value in grad_input and an input's in
    grad_weight it may spread further, as the GEMMs here do (its backward is a GEMM over zero-padded
    columns on some paths: which, depends on the shapes and the dtype), where the NumPy backend
    stays exact."""
    torch = pytest.importorskip("torch", reason="the comparison needs torch (installed in the dev venv)")
    operands = make_operands(problem, seed=5)
    for offset, name in enumerate(("input", "weight", "bias", "grad_output")):
        poisoned = poison(operands, name, seed=50 + offset)
        ours = run_passes("numpy", problem, poisoned, dtype, "auto", "fp32", forward=True)
        ours.update(run_passes("numpy", problem, poisoned, dtype, "auto", "fp32", forward=False))
        theirs = _torch_masks(torch, problem, poisoned, {np.float64: torch.float64, np.float32: torch.float32}[dtype])
        for result in ours:
            if (name, result) in (("weight", "grad_input"), ("input", "grad_weight")):
                missed = ours[result] & ~theirs[result]
                assert not missed.any(), f"{result} with {name} poisoned: PyTorch finite at {np.argwhere(missed)[:4]}"
            else:
                assert_same_mask(ours[result], theirs[result], f"numpy vs PyTorch: {result} with {name} poisoned")
