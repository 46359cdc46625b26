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
same (rounded) inputs (:mod:`.accuracy`): low-precision arithmetic (TF32, 3×TF32, float16,
bfloat16) entry by entry within ``4·u·Σ|a·b|`` (u: the format's unit roundoff, Σ|a·b| the same
pass run on absolute values), FP32 and FP64 within ``8·sqrt(terms)·u`` of ``max |reference|``.
A wrong implementation is reported, not timed.

Then each pass the benchmarked backend has is timed for it and its baselines together, in
interleaved rounds (:mod:`cudeconv.timing`): at least ``min_samples`` rounds and ``min_seconds`` of
samples, each sample long enough to read (short calls are batched), with CUDA events for work on the
GPU and ``time.perf_counter`` on the CPU; then each alone, a few samples: an interleaved time over
twice its solo time is flagged (interfered) and its speed-ups withheld. On the CPU every library
runs at the same thread count and idle thread pools sleep at once (:mod:`.threads`). On the GPU
each contender's calls rotate through copies of its inputs that add up to more than twice the L2
(else the case is labelled L2-warm). Times are medians with their interquartile range (IQR); a
time whose IQR exceeds 25 % of its median is flagged noisy. A speed-up is the median over rounds
of (baseline's sample / cudeconv's sample of the same round); one whose middle half spans 1 is
flagged unranked: too close or too noisy to say which is faster. TFLOP/s counts the useful
products, 2·N·C_in·(C_out/groups)·∏in·∏kernel per convolution pass (twice that for ``backward``);
GB/s counts the fewest bytes a pass must move (each operand read once, each result written once);
on a GPU, the fraction of the peak of the arithmetic each pass ran (FP32 or FP64 FMA, TF32,
FP16 or BF16 tensor cores) and of the memory bandwidth.

Baselines (:data:`.baselines.BASELINES`, ``--baselines``): PyTorch on the CPU (``torch``) or on
cuDNN with TF32 off or on, each with cuDNN's heuristic algorithm or tuned
(``torch_cudnn[_tf32][_tuned]``), the NumPy backend, and on the GPU cudeconv's direct kernels and a
CuPy GEMM + col2im (Chainer's method). By default those on the benchmarked backend's device; in a
TF32 run the TF32 ones only.

``--json`` writes, after every case (atomically: a run stopped part-way keeps what it measured),
``{"device", "backend", "dtype", "precision", "versions", "quick", "quick_limits" (null for
full-size cases), "timing" (the policy), "timer", "threads", "thread_pools" (each pool's library,
threads and idle wait, while timing), "peaks" (on a GPU: "tflops" per arithmetic, "bandwidth_gbps",
"l2_bytes"), "baselines" (those selected), "compared" (those that could run here),
"cases_planned", "complete" (false until the last case is in), "cases": [{"name", "source",
"config" (what ran: the shrunk shape under --quick), "shrunk_from" (the real layer's config, under
--quick), "status" ("ok", "wrong" or "failed"), "ms": {pass: median ms}, "timing": {pass:
{"median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "samples", "calls_per_sample", "solo_ms",
"interfered"}}, "noisy": [pass, ...], "interfered": [pass, ...], "tflops": {pass: ...}, "gbps":
{pass: ...}, "max_rel_error", "rel_errors" (max|err|/max|ref|), "tolerances" (each bound's limit),
"bounds": {pass: {"form", "constant", "unit", "arithmetic", "floor", "terms", "limit", "rule",
"measured"}}, "settings" (the backend's precision and algorithm), "inputs" ({"state": "rotated",
"cold", "L2-warm" or "warm", "copies", "why", ...}), "paths" (the kernel of each pass),
"arithmetic" ({pass: what it ran on}), "baselines": {name: {"ms", "timing", "interfered", "bounds",
"settings" (PyTorch's TF32, benchmark and thread settings in force)} or {"skipped": reason}},
"speedup": {name: {pass: median ratio}}, "speedup_spread": {name: {pass: {"q1", "q3", "ranked",
"interfered"}}}, and on a GPU "peak_tflops" and "peak_fraction": {"compute", "bandwidth"}}]}``;
numbers that are not finite are written as null.
"""
# What the command line (cudeconv.cli) and the tests use.
from ..cases import SUITE
from ..timing import Timed
from . import baselines
from .accuracy import bound_for, relative_error
from .baselines import (BASELINES, Contender, backend_contender, col2im_forward, col2im_grad_bias, col2im_grad_input,
                        col2im_grad_weight, cupy_col2im_contender, select_baselines)
from .device import gpu_info, versions
from .plot import plot
from .problem import PASSES, Problem, select_cases
from .runner import DEFAULT_MIN_SAMPLES, DEFAULT_MIN_SECONDS, first_line, run
from .table import TableWriter, format_table
from .threads import quiet_idle_pools

__all__ = [
    "SUITE", "Timed", "baselines", "bound_for", "relative_error", "BASELINES", "Contender", "backend_contender",
    "col2im_forward", "col2im_grad_bias", "col2im_grad_input", "col2im_grad_weight", "cupy_col2im_contender",
    "select_baselines", "gpu_info", "versions", "plot", "PASSES", "Problem", "select_cases",
    "DEFAULT_MIN_SAMPLES", "DEFAULT_MIN_SECONDS", "first_line", "run", "TableWriter", "format_table",
    "quiet_idle_pools",
]
