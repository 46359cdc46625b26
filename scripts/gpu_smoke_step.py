"""Every CUDA entry point of kernels/*.cu, launched once through the public API on small shapes:
the target of compute-sanitizer in scripts/gpu_check.sh.

The kernels are driven the way users reach them (functional API and layers, with the algorithm,
precision and dtype that select each path): for float16, bfloat16, float32 and float64 the direct
gather and scatter forwards (with the bias fill), the direct backward (grad_input, grad_weight,
one-block-per-channel grad_bias), the implicit GEMMs of every math (forward, grad_input and a
split-K grad_weight with its reduce), every other tile of the GEMMs' menus (through the launch
layer, which pins a tile where the public API lets the heuristic choose), the depthwise kernels with the slab grad_bias and its
combine, and an SGD step (momentum, Nesterov, weight decay). Every result is compared with the
NumPy backend in float64, so a wrong answer fails the run, not only a memory error.

The launches are recorded (``KernelBackend._launch``) and must be exactly the entry points the
preprocessed sources define (``sass_report.library_entry_points``): a kernel added without a
launch here fails the run (exit status 3) instead of going unchecked. The count goes to the file
$GPU_CHECK_NOTE too, where set (gpu_check.sh's summary).

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/gpu_smoke_step.py
    python3 scripts/gpu_smoke_step.py --backend emulator     # the same on the CPU, no GPU needed
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import cudeconv
from cudeconv import backends
from cudeconv._dtypes import BFLOAT16, LOW_PRECISION, unit_roundoff
from cudeconv._geometry import make_geometry
from cudeconv.backends.kernel_backend import GEMM_PASSES, GEMM_TILES, KernelBackend, gemm_math

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sass_report  # a script beside this one (hence the path above), not part of the package

DTYPES = (np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64))
COVERAGE_FAILED = 3  # exit status when the launched entry points differ from those defined
# Relative error allowed (to max(1, max |reference|)) in float16/bfloat16: the output's rounding,
# and in the scatter forward one more per atomic add; at most 1.4 units were seen on the emulator.
LOW_PRECISION_ROUNDINGS = 8
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
TF32_TOLERANCE = 1e-2  # operands rounded to 10 mantissa bits
# Grouped convolutions: stride 2, padding 1, output_padding 1, groups 2. The 2-d one has
# N·in_positions = 512, so grad_weight's GEMM splits K in two and runs its reduce.
GROUPED = dict(stride=2, padding=1, output_padding=1, groups=2)
GROUPED_SHAPES = {1: ((2, 4, 7), (4, 3, 4)), 2: ((2, 4, 16, 16), (4, 3, 3, 3)), 3: ((1, 4, 3, 4, 3), (4, 3, 2, 3, 2))}
# Depthwise (one input channel per group, multiplier 2): batch 2 × 64² input positions = 8192
# (sample, position) pairs per channel and 4 × as many output values, two slabs' worth or more
# (256 threads × 16 values each), so grad_bias and the depthwise grad_weight run their slabs and
# combine kernels.
DEPTHWISE = dict(stride=2, groups=2)
DEPTHWISE_SHAPES = ((2, 2, 64, 64), (2, 2, 2, 2))


def tolerance(dtype, precision="fp32"):
    dtype = np.dtype(dtype)
    if dtype in LOW_PRECISION:
        return LOW_PRECISION_ROUNDINGS * unit_roundoff(dtype)
    return TF32_TOLERANCE if precision == "tf32" else TOLERANCE[dtype]


def host(array):
    return array.get() if hasattr(array, "get") else np.asarray(array)


def check(name, got, expected, limit):
    got = host(got).astype(np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{name}: shape {got.shape}, expected {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    err = float(np.abs(got - expected).max(initial=0)) / scale
    assert err <= limit, f"{name}: relative error {err:.3g} above {limit:.3g}"
    print(f"ok  {name:48s} rel err {err:.2e}")


def record_launches():
    """The name of every entry point the launch layer launches from now on, in a set."""
    launched = set()
    launch = KernelBackend._launch

    def recording(self, module, entry, *args, **kwargs):  # module: which source (and build) holds entry
        launched.add(entry)
        return launch(self, module, entry, *args, **kwargs)

    KernelBackend._launch = recording
    return launched


def convolutions(backend, ndim, x, w, b, settings, runs, rng):
    """Forward and backward by each (algorithm, precision) of ``runs``, against float64 NumPy."""
    impl = backends.get(backend)
    forward = getattr(cudeconv, f"conv_transpose{ndim}d")
    backward = getattr(cudeconv, f"conv_transpose{ndim}d_backward")
    up = [a.astype(np.float64) for a in (x, w, b)]
    y_ref = forward(*up, **settings, backend="numpy")
    gy = rng.standard_normal(y_ref.shape).astype(x.dtype)
    refs = backward(gy.astype(np.float64), up[0], up[1], **settings, backend="numpy")
    for algorithm, precision, with_backward in runs:
        label = f"{ndim}d {x.dtype.name} {algorithm} {precision}"
        limit = tolerance(x.dtype, precision)
        args = [impl.asarray(a) for a in (x, w, b)]
        y = forward(*args, **settings, backend=backend, algorithm=algorithm, precision=precision)
        check(f"{label} forward", y, y_ref, limit)
        if with_backward:
            grads = backward(impl.asarray(gy), args[0], args[1], **settings, backend=backend,
                             algorithm=algorithm, precision=precision)
            for name, got, ref in zip(("grad_input", "grad_weight", "grad_bias"), grads, refs):
                check(f"{label} {name}", got, ref, limit)


def gemm_tiles(backend, dtype, precisions, rng):
    """Each pass of the GEMM on every tile of its math's menu, split in three, on a grouped 2-d
    problem whose tiles are partial on both sides, against float64 NumPy."""
    impl = backends.get(backend)
    geom = make_geometry(2, (2, 12, 6, 7), (12, 20, 3, 3), (2, 2), (1, 1), (1, 0), 2, (1, 1))
    x, w, b, gy = (rng.standard_normal(shape).astype(dtype) for shape in
                   (geom.input_shape, geom.weight_shape, (geom.out_channels,), geom.output_shape))
    reference = backends.get("numpy")
    up = [a.astype(np.float64) for a in (x, w, b, gy)]
    grad_input, grad_weight, _ = reference.backward(up[3], up[0], up[1], geom, need_bias=False)
    expected = {"forward": reference.forward(up[0], up[1], up[2], geom), "grad_input": grad_input,
                "grad_weight": grad_weight}
    x, w, b, gy = (impl.asarray(a) for a in (x, w, b, gy))
    run = {"forward": lambda **kw: impl.forward(x, w, b, geom, "gemm", **kw),
           "grad_input": lambda **kw: impl.grad_input(gy, w, geom, "gemm", **kw),
           "grad_weight": lambda **kw: impl.grad_weight(gy, x, geom, "gemm", **kw)}
    for precision in precisions:
        for pass_ in GEMM_PASSES:
            for tile in GEMM_TILES[gemm_math(dtype, precision)][pass_]:
                got = run[pass_](precision=precision, splits=3, tile=tile)
                check(f"tile {tile[0]}x{tile[1]} {np.dtype(dtype).name} {precision} {pass_}", got, expected[pass_],
                      tolerance(dtype, precision))


def sgd_steps(backend, dtype, rng):
    """Two training steps of a layer with SGD (momentum, Nesterov, weight decay) against the NumPy backend."""
    layers = [cudeconv.ConvTranspose2d(4, 4, 3, stride=2, dtype=dtype, backend=name, seed=0)
              for name in (backend, "numpy")]
    optimizers = [cudeconv.SGD(layer.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                               backend=layer.backend) for layer in layers]
    x = rng.standard_normal((2, 4, 5, 5)).astype(dtype)
    for _ in range(2):
        for layer, optimizer in zip(layers, optimizers):
            optimizer.zero_grad()
            y = layer(backends.get(layer.backend).asarray(x))
            layer.backward((y * 0.01).astype(dtype))
            optimizer.step()
    for name in ("weight", "bias"):
        check(f"SGD {np.dtype(dtype).name} {name}", getattr(layers[0], name).data, getattr(layers[1], name).data,
              tolerance(dtype))


def run_everything(backend):
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        maths = ("fp32", "tf32", "tf32x3") if dtype == np.float32 else ("fp32",)
        runs = [("gather", "fp32", True), ("scatter", "fp32", False)] + [("gemm", p, True) for p in maths]
        for ndim in (1, 2, 3) if dtype == np.float32 else (2,):
            x_shape, w_shape = GROUPED_SHAPES[ndim]
            x, w = (rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape))
            b = rng.standard_normal(w_shape[1] * GROUPED["groups"]).astype(dtype)
            convolutions(backend, ndim, x, w, b, GROUPED, runs, rng)
        x, w = (rng.standard_normal(s).astype(dtype) for s in DEPTHWISE_SHAPES)
        b = rng.standard_normal(w.shape[1] * DEPTHWISE["groups"]).astype(dtype)
        convolutions(backend, 2, x, w, b, DEPTHWISE, [("auto", "fp32", True)], rng)
        gemm_tiles(backend, dtype, maths, rng)
        sgd_steps(backend, dtype, rng)


def coverage_problems(launched, defined):
    """Lines naming the entry points ``defined`` ({source: names}) but never launched, and those
    launched but defined nowhere; empty when the two sets are equal."""
    source_of = {entry: source for source, entries in defined.items() for entry in entries}
    return ([f"never launched: {entry} ({source_of[entry]})" for entry in sorted(source_of.keys() - launched)]
            + [f"launched but not defined in kernels/*.cu: {entry}" for entry in sorted(launched - source_of.keys())])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("cuda", "emulator"), default="cuda")
    args = parser.parse_args(argv)
    reason = backends.cuda_unavailable_reason() if args.backend == "cuda" else backends.emulator_unavailable_reason()
    if reason is not None:
        print(f"gpu_smoke_step: backend {args.backend!r} unavailable: {reason}", file=sys.stderr)
        return 2
    defined = sass_report.library_entry_points()
    if args.backend == "cuda":
        import cupy

        # Every array its own cudaMalloc: the memory pool would hide overruns inside its larger blocks.
        cupy.cuda.set_allocator(None)
    launched = record_launches()
    run_everything(args.backend)
    if args.backend == "cuda":
        cupy.cuda.get_current_stream().synchronize()
    problems = coverage_problems(launched, defined)
    verdict = (f"entry points: {len(launched)} launched, {sum(map(len, defined.values()))} defined in kernels/*.cu"
               + (f", {len(problems)} differences" if problems else ", the same set"))
    print(verdict, *problems, sep="\n")
    if os.environ.get("GPU_CHECK_NOTE"):
        Path(os.environ["GPU_CHECK_NOTE"]).write_text(verdict)
    return COVERAGE_FAILED if problems else 0


if __name__ == "__main__":
    sys.exit(main())
