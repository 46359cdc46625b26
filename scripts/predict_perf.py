#!/usr/bin/env python3
"""The prediction half of docs/perf.md: for each suite case and pass, which path the heuristic
takes on the GPU's descriptor (with its K splits), its useful and executed (tile-padded) work, the
two floors on a GPU (FLOPs ÷ peak, compulsory bytes ÷ bandwidth) and the expected time at an
assumed fraction of peak per math, read off the kernels' SASS (see docs/perf.md for the fractions
and why).

    python scripts/predict_perf.py [--gpu h100] [--sms N]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from cudeconv.backends.device_descriptor import H100_SXM, wave, with_sm_count  # noqa: E402
from cudeconv.backends.kernel_backend import (  # noqa: E402
    GEMM_SLICE_K, GEMM_TILE, KernelBackend, ceil_div, gemm_resources,
)
from cudeconv.cases import SUITE  # noqa: E402

# H100 SXM dense peaks (TFLOP/s) and HBM bandwidth (TB/s), and its descriptor (132 SMs).
GPUS = {"h100": {"fp32": 67.0, "fp64": 34.0, "tf32": 495.0, "f16": 989.0, "bandwidth": 3.35, "device": H100_SXM}}
# Fraction of the math's peak the v1 kernels are expected to reach on large layers, from their
# SASS main loops: FFMA 70% of the loop's issue slots, 2 blocks/SM (127 registers) -> ~50%;
# tf32 ~14 issue slots per HMMA (scalar LDS + cvt.rna per fragment element) where ~4 keep the
# tensor core busy -> ~30%; tf32x3 three HMMA per 24 slots -> ~20% of TF32 peak; f16 ~22 slots per
# HMMA (register-staged loads) -> ~20%.
EFFICIENCY = {"f32": 0.5, "f64": 0.5, "tf32": 0.3, "tf32x3": 0.3 / 3 * 2, "f16": 0.2, "bf16": 0.2}
PEAK_OF = {"f32": "fp32", "f64": "fp64", "tf32": "tf32", "tf32x3": "tf32", "f16": "f16", "bf16": "f16"}
MEMORY_EFFICIENCY = 0.7
LAUNCH_FLOOR_MS = 0.005

# A split K adds a write and a read of its partials (splits × the output in float32) and the
# output's write by the reduce: charged at the memory efficiency above.


def executed_macs(geom, pass_, math_name):
    """Multiply-adds the GEMM executes, with its tile padding in M, N and K."""
    tile, slice_k = GEMM_TILE[math_name], GEMM_SLICE_K[math_name]
    pad = lambda n, to: ceil_div(n, to) * to  # noqa: E731
    if pass_ == "grad_weight":
        return (pad(geom.in_channels_per_group, tile) * pad(geom.out_channels_per_group * geom.taps, tile)
                * pad(geom.batch * math.prod(geom.in_size), slice_k) * geom.groups)
    if pass_ == "grad_input":
        rows = geom.batch * math.prod(geom.in_size)
        return (pad(rows, tile) * pad(geom.in_channels_per_group, tile) * geom.taps
                * pad(geom.out_channels_per_group, slice_k) * geom.groups)
    total = 0
    for phase in np.ndindex(*geom.stride):
        q = [max(0, ceil_div(o - r, s)) for o, r, s in zip(geom.out_size, phase, geom.stride)]
        taps = math.prod(sum(1 for k in range(kk) if (r + p - k * d) % s == 0)
                         for kk, r, p, d, s in zip(geom.kernel_size, phase, geom.padding, geom.dilation, geom.stride))
        total += (pad(geom.batch * math.prod(q), tile) * pad(geom.out_channels_per_group, tile)
                  * taps * pad(geom.in_channels_per_group, slice_k))
    return total * geom.groups


def compulsory_bytes(geom, pass_, itemsize):
    """Each tensor the pass reads or writes, once."""
    x, y, w = math.prod(geom.input_shape), math.prod(geom.output_shape), math.prod(geom.weight_shape)
    elements = {"forward": x + w + y, "grad_input": y + w + x, "grad_weight": x + y + w,
                "grad_bias": y + geom.out_channels}[pass_]
    return elements * itemsize


def predict(gpu, dtype, precision, device=None):
    """Rows (case, pass, kind, kernel, parts, GFLOP, executed/useful, compute floor ms, memory
    floor ms, expected ms or None where the kernel is not modelled here: the direct kernels) on
    ``device`` (a DeviceDescriptor; default the GPU's own)."""
    spec = GPUS[gpu]
    device = device or spec["device"]
    backend = KernelBackend("prediction", np, None, lambda: gpu, device=device)
    rows = []
    for case in SUITE:
        geom = case.geometry()
        useful = case.batch * case.in_channels * (case.out_channels // case.groups) * math.prod(case.in_size) * geom.taps
        for pass_, path in backend.kernel_paths(geom, dtype, precision=precision).items():
            memory_ms = compulsory_bytes(geom, pass_, np.dtype(dtype).itemsize) / (spec["bandwidth"] * 1e12) * 1e3
            gflop = 0.0 if pass_ == "grad_bias" else 2 * useful / 1e9
            if path.kind != "gemm":
                # memory-bound kernels aim at twice the memory floor; the direct ones are not modelled
                expected = max(2 * memory_ms, LAUNCH_FLOOR_MS) \
                    if path.kind in ("depthwise", "slabs") else None
                rows.append((case.name, pass_, path.kind, path.entry, path.parts, gflop, None, None, memory_ms,
                             expected))
                continue
            math_name = path.entry.rsplit("_", 1)[1]
            peak = spec[PEAK_OF[math_name]] * 1e12
            compute_floor_ms = 2 * useful / peak * 1e3
            executed = executed_macs(geom, pass_, math_name)
            # blocks run in waves of SMs × resident blocks; a grid short of one wave leaves SMs idle
            waves = math.prod(path.grid) / wave(device, gemm_resources(math_name, pass_, device))
            wave_loss = math.ceil(waves) / waves if waves > 1 else 1 / waves
            split_ms = (2 * path.workspace_bytes + compulsory_bytes(geom, pass_, np.dtype(dtype).itemsize) / 3) \
                / (spec["bandwidth"] * 1e12 * MEMORY_EFFICIENCY) * 1e3 if path.parts > 1 else 0.0
            expected_ms = max(2 * executed / (peak * EFFICIENCY[math_name]) * 1e3 * min(wave_loss, 4.0),
                              memory_ms / MEMORY_EFFICIENCY, LAUNCH_FLOOR_MS) + split_ms
            rows.append((case.name, pass_, "gemm", path.entry, path.parts, gflop, executed / useful, compute_floor_ms,
                         memory_ms, expected_ms))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    parser.add_argument("--sms", type=int, default=None,
                        help="the heuristic's choices for a part with this many SMs (same architecture)")
    args = parser.parse_args(argv)
    if args.sms is not None and args.sms < 1:
        parser.error(f"--sms must be a positive number of SMs, got {args.sms}")
    device = GPUS[args.gpu]["device"]
    if args.sms is not None:
        device = with_sm_count(device, args.sms)
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    for dtype, precision in ((np.float32, "fp32"), (np.float32, "tf32"), (np.float16, "fp32")):
        label = "float16" if dtype == np.float16 else f"float32, precision={precision}"
        print(f"\n{device.name} ({device.sm_count} SMs), {label}\n")
        print("| case | pass | kernel | parts | GFLOP | executed/useful | compute floor ms | memory floor ms | "
              "expected ms |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for name, pass_, kind, entry, parts, gflop, waste, compute_ms, memory_ms, expected in predict(
                args.gpu, dtype, precision, device):
            print(f"| {name} | {pass_} | {entry} | {parts} | {gflop:.2f} | {fmt(waste, '.2f')} | "
                  f"{fmt(compute_ms, '.3f')} | {memory_ms:.3f} | {fmt(expected, '.3f')} |")


if __name__ == "__main__":
    main()
