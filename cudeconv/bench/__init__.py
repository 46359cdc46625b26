"""``cudeconv bench``: every pass of the named cases (:mod:`cudeconv.cases`), checked, then timed.

Passes, per case:

``forward``
    ``y = conv_transpose(x, weight, bias)``.
``grad_input``, ``grad_weight``, ``grad_bias``
    Each gradient alone, where the implementation can compute it alone: the kernel backends'
    ``grad_input``/``grad_weight``/``grad_bias`` methods, PyTorch's ``aten.convolution_backward``
    with one output selected (but ``grad_output.sum`` for the bias gradient: on the CPU that entry
    point computes the weight gradient along with it), the CuPy baseline's steps. The NumPy backend
    computes the three together, so it has no figures for them: their cost is inside ``backward``.
``backward``
    All gradients in one call (grad_input, grad_weight and grad_bias: what a layer's backward runs).
``sgd_step``
    One SGD update with momentum 0.9 on a weight-sized parameter (after the first step).

Every implementation's results are first compared with a float64 run of the NumPy backend on the
same (rounded) inputs: the error is ``max |result - reference| / max |reference|`` per pass, and must
stay within ``8·sqrt(terms)·u`` (u: unit roundoff of the compute precision, terms: the length of the
pass's sums; plus 2⁻¹⁰ for float16's rounding). A wrong implementation is reported, not timed.

Then each pass the benchmarked backend has is timed for it and its baselines together, in
interleaved rounds (:mod:`cudeconv.timing`): at least ``min_samples`` rounds and ``min_seconds`` of
samples, each sample long enough to read (short calls are batched), with CUDA events for work on the
GPU and ``time.perf_counter`` on the CPU. Times are medians with their interquartile range (IQR);
a time whose IQR exceeds 25 % of its median is flagged noisy. A speed-up is the median over rounds
of (baseline's sample / cudeconv's sample of the same round); one whose middle half spans 1 is
flagged unranked: too close or too noisy to say which is faster. TFLOP/s counts the useful
products, 2·N·C_in·(C_out/groups)·∏in·∏kernel per convolution pass (twice that for ``backward``);
GB/s counts the fewest bytes a pass must move (each operand read once, each result written once).

Baselines, each where present (the reason is printed where not): PyTorch's
``conv_transpose{1,2,3}d`` on the benchmarked backend's device (on the GPU twice, cuDNN with TF32
off and on; on the CPU with the same thread count), the NumPy backend (when another backend is
benchmarked), and on the GPU a CuPy GEMM + col2im implementation (Chainer's method).

``--json`` writes ``{"device", "backend", "dtype", "precision", "versions", "quick",
"quick_limits" (null for full-size cases), "timing" (the policy), "timer", "threads", "peaks",
"cases": [{"name", "source", "config" (what ran: the shrunk shape under --quick), "shrunk_from"
(the real layer's config, under --quick), "status" ("ok", "wrong" or "failed"), "ms": {pass: median
ms}, "timing": {pass: {"median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "samples",
"calls_per_sample"}}, "noisy": [pass, ...], "tflops": {pass: ...}, "gbps": {pass: ...},
"max_rel_error", "rel_errors", "tolerances", "baselines": {name: {"ms", "timing"} or {"skipped":
reason}}, "speedup": {name: {pass: median ratio}}, "speedup_spread": {name: {pass: {"q1", "q3",
"ranked"}}}, and on a GPU "peak_fraction"}]}``; numbers that are not finite are written as null.
"""
# What the command line (cudeconv.cli) and the tests use.
from ..cases import SUITE
from ..timing import Timed
from .baselines import (Contender, backend_contender, col2im_forward, col2im_grad_bias, col2im_grad_input,
                        col2im_grad_weight, cupy_col2im_contender, torch_contenders)
from .device import gpu_info, versions
from .plot import plot
from .problem import PASSES, Problem, relative_error, select_cases, tolerance
from .runner import DEFAULT_MIN_SAMPLES, DEFAULT_MIN_SECONDS, first_line, run
from .table import format_table

__all__ = [
    "SUITE", "Timed", "Contender", "backend_contender", "col2im_forward", "col2im_grad_bias",
    "col2im_grad_input", "col2im_grad_weight", "cupy_col2im_contender", "torch_contenders", "gpu_info",
    "versions", "plot", "PASSES", "Problem", "relative_error", "select_cases", "tolerance",
    "DEFAULT_MIN_SAMPLES", "DEFAULT_MIN_SECONDS", "first_line", "run", "format_table",
]
