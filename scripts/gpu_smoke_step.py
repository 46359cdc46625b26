"""A small run of every CUDA entry point on the "cuda" backend, for compute-sanitizer.

Forward (implicit GEMM, gather, scatter) and backward (GEMM and direct grad_input) for 1-d, 2-d
and 3-d in float16/32/64 and every float32 precision (fp32, tf32, tf32x3), then a
ConvTranspose2d + SGD (momentum, nesterov, weight decay) training step; each result is checked
against the NumPy backend so a wrong answer fails the run, not only a memory error.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/gpu_smoke_step.py
"""
import cupy
import numpy as np

import cudeconv

TOLERANCE = {np.float16: 2e-2, np.float32: 1e-4, np.float64: 1e-10}
TF32_TOLERANCE = 1e-2  # operands rounded to 10 mantissa bits


def check(name, got, expected, dtype, tolerance=None):
    got = cupy.asnumpy(got).astype(np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    err = float(np.abs(got - expected).max(initial=0)) / scale
    assert err <= (tolerance or TOLERANCE[dtype]), f"{name}: relative error {err:.3g}"
    print(f"ok  {name:40s} rel err {err:.2e}")


def main():
    # Every array its own cudaMalloc: the memory pool would hide overruns inside its larger blocks.
    cupy.cuda.set_allocator(None)
    rng = np.random.default_rng(0)
    shapes = {1: ((2, 4, 7), (4, 3, 4)), 2: ((2, 4, 5, 6), (4, 3, 4, 3)), 3: ((1, 4, 3, 4, 3), (4, 3, 2, 3, 2))}
    for ndim, (x_shape, w_shape) in shapes.items():
        for dtype in (np.float16, np.float32, np.float64):
            x = rng.standard_normal(x_shape).astype(dtype)
            w = rng.standard_normal(w_shape).astype(dtype)
            b = rng.standard_normal(w_shape[1] * 2).astype(dtype)
            kw = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
            fwd = getattr(cudeconv, f"conv_transpose{ndim}d")
            bwd = getattr(cudeconv, f"conv_transpose{ndim}d_backward")
            y_ref = fwd(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
            gy = rng.standard_normal(y_ref.shape).astype(dtype)
            refs = bwd(gy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **kw)
            precisions = ("fp32", "tf32", "tf32x3") if dtype == np.float32 else ("fp32",)
            for algorithm, precision in [("gather", "fp32"), ("scatter", "fp32")] + [("gemm", p) for p in precisions]:
                label = f"{ndim}d {np.dtype(dtype).name} {algorithm} {precision}"
                tolerance = TF32_TOLERANCE if precision == "tf32" else None
                y = fwd(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), **kw, algorithm=algorithm,
                        precision=precision)
                check(f"{label} forward", y, y_ref, dtype, tolerance)
                if algorithm == "scatter":
                    continue
                grads = bwd(cupy.asarray(gy), cupy.asarray(x), cupy.asarray(w), **kw, algorithm=algorithm,
                            precision=precision)
                for name, got, ref in zip(("grad_input", "grad_weight", "grad_bias"), grads, refs):
                    check(f"{label} {name}", got, ref, dtype, tolerance)

    layer = cudeconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1, backend="cuda", seed=0)
    reference = cudeconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1, backend="numpy", seed=0)
    opts = [cudeconv.SGD(l.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
            for l in (layer, reference)]
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    for step in range(2):
        for l, opt, xs in ((layer, opts[0], cupy.asarray(x)), (reference, opts[1], x)):
            opt.zero_grad()
            y = l(xs)
            l.backward(y * 0.01)
            opt.step()
    check("SGD training step (weight)", layer.weight.data, reference.weight.data, np.float32)
    cupy.cuda.get_current_stream().synchronize()


if __name__ == "__main__":
    main()
