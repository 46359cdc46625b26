"""NumPy backend vs PyTorch's CPU conv_transpose{1,2,3}d: forward + full backward, same threads.

For every case of ``cudeconv.cases.SUITE`` (batch divided by ``--batch-divisor`` so the CPU run stays
short) it times, after a warm-up, the median of ``--repeat`` runs of

    numpy: conv_transpose{d}d + conv_transpose{d}d_backward (grad_input, grad_weight, grad_bias)
    torch: F.conv_transpose{d}d + autograd backward of (y * grad_output).sum()

and prints the ratio numpy/torch per case and the geometric mean (target: ≤ 1.5). Both sides use
the same thread count (torch.set_num_threads = the BLAS threads NumPy uses, by default all cores).

    python scripts/bench_numpy_vs_torch.py [--dtype float32] [--repeat 5] [--batch-divisor 8]
"""
import argparse
import math
import os
import statistics
import time

import numpy as np

import cudeconv
from cudeconv.cases import SUITE


def median_seconds(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-divisor", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    print(f"numpy {np.__version__}, torch {torch.__version__}, {args.threads} threads, {args.dtype}")
    print(f"{'case':14s} {'numpy ms':>10s} {'torch ms':>10s} {'ratio':>7s}")
    ratios = []
    for case in SUITE:
        case = case.with_batch(max(1, case.batch // args.batch_divisor))
        x, weight, bias, grad_output = case.arrays(args.dtype)
        kw = case.kwargs()
        fwd = getattr(cudeconv, f"conv_transpose{case.ndim}d")
        bwd = getattr(cudeconv, f"conv_transpose{case.ndim}d_backward")

        def run_numpy():
            fwd(x, weight, bias, **kw)
            bwd(grad_output, x, weight, **kw, bias=bias is not None)

        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(weight).requires_grad_()
        tb = None if bias is None else torch.from_numpy(bias).requires_grad_()
        tg = torch.from_numpy(grad_output)
        tfn = getattr(F, f"conv_transpose{case.ndim}d")

        def run_torch():
            for t in (tx, tw, tb):
                if t is not None:
                    t.grad = None
            y = tfn(tx, tw, tb, **kw)
            y.backward(tg)

        t_numpy = median_seconds(run_numpy, args.repeat)
        t_torch = median_seconds(run_torch, args.repeat)
        ratio = t_numpy / t_torch
        ratios.append(ratio)
        print(f"{case.name:14s} {t_numpy * 1e3:10.2f} {t_torch * 1e3:10.2f} {ratio:7.2f}")
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"{'geomean':14s} {'':>10s} {'':>10s} {geomean:7.2f}   (target ≤ 1.5)")


if __name__ == "__main__":
    main()
