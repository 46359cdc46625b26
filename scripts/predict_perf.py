#!/usr/bin/env python3
"""The prediction half of docs/perf.md: each suite case's passes on a GPU, from the heuristic's
choice of kernel (with its K splits) on the GPU's descriptor, the kernels' SASS and the emulator's
memory-traffic profile of the real launches.

    python scripts/predict_perf.py [--gpu h100] [--sms N] [--traffic T.json] [--sass S.json]

``--traffic``: samples written by ``scripts/profile_gemm.py --suite --json T.json`` (without it
they are profiled here, a few minutes); ``--sass``: ``scripts/sass_report.py --json S.json`` of
kernels/deconv_gemm.cu (without it compiled here; needs nvcc).

A GEMM pass (forward, grad_input, grad_weight on kernels/deconv_gemm.cu) is charged the largest of
three times, plus its split reduce and a launch:

- **SM time** = ⌈blocks / SMs⌉ × cycles of one (average) block ÷ clock. The busiest SM runs
  ⌈blocks / SMs⌉ blocks one after the other or side by side — the same time when the SM's pipes are
  the limit; ``waves`` (blocks ÷ (SMs × resident blocks per SM by registers and shared memory,
  device_descriptor.resident_blocks on the descriptor, no cap)) is printed beside it. One block's
  cycles are the largest of four pipes, plus ``BLOCK_FILL_CYCLES``:
  - *issue*: slices × 8 warps × the SASS main loop's instructions (``loop`` of sass_report, one K
    slice per iteration) ÷ 4 schedulers ÷ ``ISSUE_EFFICIENCY[pass]``. The FFMA (f32) are among
    those instructions and a scheduler issues one per cycle to 32 FP32 lanes: no separate term;
  - *tensor*: the block's executed multiply-adds (BM·BN × BK per slice) ÷ the SM's mma.sync rate
    (the math's dense peak ÷ (2 × SMs × clock) × ``MMA_SYNC_FRACTION``);
  - *shared*: the bytes the block moves through shared memory (emulator profile) ÷ 128 B per
    cycle — bytes, not the profile's wavefronts, which count the source's scalar accesses where
    nvcc emits 16-byte LDS;
  - *L1*: the 32-byte sectors its global requests touch (emulator profile) ÷ 4 per cycle.
- **L2 time** = the grid's load sectors × 32 B (every sector a request touches comes from L2: the
  GEMM's reuse of a sector is across K slices, farther apart than L1 keeps it) plus its store
  sectors × 32 B, ÷ ``L2_BANDWIDTH``.
- **DRAM time** = each tensor once (compulsory bytes) plus, split, the partials' write, ÷ (HBM
  bandwidth × ``MEMORY_EFFICIENCY``); the split reduce adds its read of the partials and write of
  the output at the same rate, and ``LAUNCH_FLOOR_MS``.
- **Packing** (``pack ms``, added): each operand the pass packs (``KernelPath.packed``) read once
  and its packed copy written once at the same DRAM rate, each packing at least
  ``LAUNCH_FLOOR_MS`` (a launch of its own); NCHW inputs assumed.

Traffic per pass comes from ``profile_gemm.sampled_pass``: the pass's own launch, real arrays and
channel counts, its grid cut to block (0, 0, 0) (the forward: blocks up to the phase with the most
taps); loads and shared bytes scale to the grid by its K slices, stores by its tiles
(``profile_gemm.scaled_traffic``). Edge tiles request less than block (0, 0, 0), so traffic is an
upper bound there. The profile counts the source as g++ compiles it; ``scripts/ncu_traffic.py``
checks its sectors per request against Nsight Compute on a GPU.

The direct kernels are not modelled; the depthwise, slab and per-channel reductions are charged
twice their memory floor. The per-pass constants below are assumptions until a GPU measures them
(ncu's issue-active and L2 sectors are in scripts/ncu_traffic.py's metrics).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import profile_gemm  # noqa: E402  (a script beside this one)
from cudeconv.backends.device_descriptor import H100_SXM, resident_blocks, with_sm_count  # noqa: E402
from cudeconv.backends.gemm_plan import (  # noqa: E402
    GEMM_OUTPUT_SHAPE, GEMM_SLICE_K, GEMM_THREADS, gemm_resources, packed_tensor_elements, packed_weight_elements,
)  # noqa: E402
from cudeconv.backends.kernel_backend import KernelBackend  # noqa: E402
from cudeconv.cases import SUITE  # noqa: E402

# H100 SXM: dense peaks (TFLOP/s) at the boost clock (GHz) they are quoted at, HBM3 bandwidth
# (TB/s), L2 bandwidth to the SMs (TB/s, an assumption: microbenchmarks report 5.5-7), its descriptor.
GPUS = {"h100": {"fp32": 67.0, "fp64": 34.0, "tf32": 495.0, "f16": 989.0, "bandwidth": 3.35, "l2_bandwidth": 5.5,
                 "clock_ghz": 1.98, "device": H100_SXM}}
PEAK_OF = {"f32": "fp32", "f64": "fp64", "tf32": "tf32", "tf32x3": "tf32", "f16": "f16", "bf16": "f16"}
PRODUCTS = {"tf32x3": 3}  # mma products per multiply-add (the split-TF32 trick)
SCHEDULERS_PER_SM = 4
L1_SECTORS_PER_CYCLE = 4
SHARED_BYTES_PER_CYCLE = 128
# Issue slots used per cycle in the main loop: the forward and grad_input stream their slices with
# cp.async (double-buffered, no dependence between slices); grad_weight's B side advances a cursor
# by carries, a data-dependent branchy chain per element, so it stalls more. Assumed.
ISSUE_EFFICIENCY = {"forward": 0.8, "grad_input": 0.8, "grad_weight": 0.65}
# mma.sync on Hopper runs below the dense peak (quoted for wgmma). Assumed.
MMA_SYNC_FRACTION = 0.6
# Per block: the first slice's global latency before the loop runs, the tap table, the epilogue's
# stores draining. Assumed (~one DRAM round trip and a half).
BLOCK_FILL_CYCLES = 1000
WARPS = GEMM_THREADS // 32
MEMORY_EFFICIENCY = 0.7
LAUNCH_FLOOR_MS = 0.005


def executed_macs(geom, pass_, math_name, tile):
    """Multiply-adds the GEMM executes on ``tile`` (BM, BN), with its tile padding in M, N and K."""
    return sum(tiles * slices for tiles, slices in profile_gemm.tile_work(geom, pass_, math_name, tile)) \
        * tile[0] * tile[1] * GEMM_SLICE_K[math_name]


def compulsory_bytes(geom, pass_, itemsize):
    """Each tensor the pass reads or writes, once."""
    x, y, w = math.prod(geom.input_shape), math.prod(geom.output_shape), math.prod(geom.weight_shape)
    elements = {"forward": x + w + y, "grad_input": y + w + x, "grad_weight": x + y + w,
                "grad_bias": y + geom.out_channels}[pass_]
    return elements * itemsize


def sass_rows(path=None):
    """{entry point: sass_report row} of kernels/deconv_gemm.cu, from ``path`` (sass_report --json)
    or compiled now."""
    if path:
        files = json.loads(Path(path).read_text())["files"]
        return {row["kernel"]: row for rows in files.values() for row in rows}
    import sass_report

    reason = sass_report.tools_unavailable_reason()
    if reason:
        raise RuntimeError(f"no SASS counts: {reason} (pass --sass from sass_report.py --json)")
    return {row["kernel"]: row for row in sass_report.report(sass_report.REPO / "kernels" / "deconv_gemm.cu")}


def packing_ms(spec, geom, pass_, math_name, packed, itemsize):
    """The packing launches before the GEMM (``packed``: KernelPath.packed), each reading its
    tensor once and writing the packed copy once at the DRAM rate, at least LAUNCH_FLOOR_MS. NCHW
    inputs are assumed (a caller's channels-last x or grad_output, read in place, skips its own)."""
    tensors = {"x": math.prod(geom.input_shape), "grad_output": math.prod(geom.output_shape),
               "weight": math.prod(geom.weight_shape)}
    total = 0.0
    for operand in packed:
        written = (packed_weight_elements(geom, pass_, math_name) if operand == "weight"
                   else packed_tensor_elements(geom, operand, math_name))
        moved = (tensors[operand] + written) * itemsize
        total += max(moved / (spec["bandwidth"] * 1e12 * MEMORY_EFFICIENCY) * 1e3, LAUNCH_FLOOR_MS)
    return total


def gemm_terms(spec, device, geom, pass_, math_name, tile, sample, sass, itemsize, packed=()):
    """The model's terms for one GEMM pass (see the module docstring), a dict of ms and counts;
    ``packed``: the operands packed before it (packing_ms, added to the expected time)."""
    clock = spec["clock_ghz"] * 1e9
    operands, shared = profile_gemm.scaled_traffic(sample)
    grid_tiles, grid_slices = sample["grid_work"]
    blocks = math.prod(sample["grid"])
    resident = resident_blocks(device, gemm_resources(math_name, pass_, device, tile))
    slice_k = GEMM_SLICE_K[math_name]
    loads = sum(c["sectors"] for c in operands.values() if c["kind"] == "load")
    stores = sum(c["sectors"] for c in operands.values() if c["kind"] == "store")
    per_block = lambda total: total / grid_tiles  # noqa: E731  (the average working block)
    issue = per_block(grid_slices) * WARPS * sass["loop"] / SCHEDULERS_PER_SM / ISSUE_EFFICIENCY[pass_]
    tensor = 0.0
    if sass.get("HMMA"):
        mma_rate = spec[PEAK_OF[math_name]] * 1e12 / (2 * device.sm_count * clock) * MMA_SYNC_FRACTION
        tensor = per_block(grid_slices) * tile[0] * tile[1] * slice_k * PRODUCTS.get(math_name, 1) / mma_rate
    pipes = {"issue": issue, "tensor": tensor, "shared": per_block(shared["bytes"]) / SHARED_BYTES_PER_CYCLE,
             "L1": per_block(loads + stores) / L1_SECTORS_PER_CYCLE}
    block_cycles = max(pipes.values()) + BLOCK_FILL_CYCLES
    sm_ms = math.ceil(grid_tiles / device.sm_count) * block_cycles / clock * 1e3
    l2_bytes = (loads + stores) * 32
    l2_ms = l2_bytes / (spec["l2_bandwidth"] * 1e12) * 1e3
    partials = sample_workspace_bytes(geom, pass_, sample["parts"])
    dram_bytes = compulsory_bytes(geom, pass_, itemsize) + partials
    dram_ms = dram_bytes / (spec["bandwidth"] * 1e12 * MEMORY_EFFICIENCY) * 1e3
    reduce_ms = 0.0
    if sample["parts"] > 1:  # the reduce reads the partials and writes the output
        output = math.prod(getattr(geom, GEMM_OUTPUT_SHAPE[pass_]))
        reduce_ms = max((partials + output * itemsize) / (spec["bandwidth"] * 1e12 * MEMORY_EFFICIENCY) * 1e3,
                        LAUNCH_FLOOR_MS)
    pack_ms = packing_ms(spec, geom, pass_, math_name, packed, itemsize)
    times = {"SM": sm_ms, "L2": l2_ms, "DRAM": dram_ms}
    bound = max(times, key=times.get)
    pipe = max(pipes, key=pipes.get)
    return dict(blocks=blocks, waves=grid_tiles / (device.sm_count * resident), resident=resident,
                pipes_ms={k: v * math.ceil(grid_tiles / device.sm_count) / clock * 1e3 for k, v in pipes.items()},
                sm_ms=sm_ms, l2_mb=l2_bytes / 1e6, l2_ms=l2_ms, dram_mb=dram_bytes / 1e6, dram_ms=dram_ms,
                reduce_ms=reduce_ms, pack_ms=pack_ms, bound=f"{bound} ({pipe})" if bound == "SM" else bound,
                expected_ms=max(max(times.values()), LAUNCH_FLOOR_MS) + reduce_ms + pack_ms)


def sample_workspace_bytes(geom, pass_, parts):
    """The split partials' bytes (float32 accumulators; none unsplit)."""
    if parts == 1:
        return 0
    return parts * math.prod(getattr(geom, GEMM_OUTPUT_SHAPE[pass_])) * 4


def predict(gpu, dtype, precision, samples, sass, device=None, cases=SUITE):
    """One dict per (case, pass) on ``device`` (default the GPU's own): case, pass, kind, entry,
    parts, gflop, waste (executed / useful multiply-adds), memory floor ms, expected ms (None for
    the direct kernels) and, for a GEMM pass, the terms of gemm_terms. ``samples``:
    profile_gemm.suite_samples (or load_samples); ``sass``: sass_rows."""
    spec = GPUS[gpu]
    device = device or spec["device"]
    backend = KernelBackend("prediction", np, None, lambda: gpu, device=device)
    itemsize = np.dtype(dtype).itemsize
    rows = []
    for case in cases:
        geom = case.geometry()
        useful = geom.flops() // 2
        for pass_, path in backend.kernel_paths(geom, dtype, precision=precision).items():
            memory_ms = compulsory_bytes(geom, pass_, itemsize) / (spec["bandwidth"] * 1e12) * 1e3
            row = dict(case=case.name, pass_=pass_, kind=path.kind, entry=path.entry, parts=path.parts,
                       gflop=0.0 if pass_ == "grad_bias" else 2 * useful / 1e9, memory_ms=memory_ms, waste=None,
                       expected_ms=None)
            if path.kind == "gemm":
                sample = samples.get((case.name, pass_, np.dtype(dtype).name, precision))
                if sample is None or sample["entry"] != path.entry or sample["parts"] != path.parts:
                    raise ValueError(f"no traffic sample of {case.name} {pass_} as {path.entry} in {path.parts} "
                                     f"parts: profile it again (profile_gemm.py --suite)")
                row.update(gemm_terms(spec, device, geom, pass_, path.math, path.tile, sample, sass[path.entry],
                                      itemsize, path.packed))
                row["waste"] = executed_macs(geom, pass_, path.math, path.tile) / useful
            elif path.kind in ("depthwise", "slabs"):
                row["expected_ms"] = max(2 * memory_ms, LAUNCH_FLOOR_MS)
            rows.append(row)
    return rows


HEADER = ("| case | pass | kernel | parts | waves | issue ms | tensor ms | shared ms | L1 ms | L2 MB | L2 ms | "
          "DRAM MB | DRAM ms | bound | pack ms | expected ms |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")


def format_row(row):
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    if row["kind"] != "gemm":
        return (f"| {row['case']} | {row['pass_']} | {row['entry']} | {row['parts']} | "
                f"{' | '.join('—' * 8)} | {row['memory_ms']:.3f} | "
                f"{'memory' if row['expected_ms'] else 'not modelled'} | — | "
                f"{fmt(row['expected_ms'], '.3f')} |")
    pipes = row["pipes_ms"]
    return (f"| {row['case']} | {row['pass_']} | {row['entry']} | {row['parts']} | {row['waves']:.2f} | "
            f"{pipes['issue']:.3f} | {pipes['tensor']:.3f} | {pipes['shared']:.3f} | {pipes['L1']:.3f} | "
            f"{row['l2_mb']:.0f} | "
            f"{row['l2_ms']:.3f} | {row['dram_mb']:.1f} | {row['dram_ms']:.3f} | {row['bound']} | "
            f"{row['pack_ms']:.3f} | {row['expected_ms']:.3f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    parser.add_argument("--sms", type=int, default=None,
                        help="the heuristic's choices for a part with this many SMs (same architecture)")
    parser.add_argument("--traffic", help="samples from profile_gemm.py --suite --json (default: profile now)")
    parser.add_argument("--sass", help="sass_report.py --json of kernels/deconv_gemm.cu (default: compile now)")
    args = parser.parse_args(argv)
    if args.sms is not None and args.sms < 1:
        parser.error(f"--sms must be a positive number of SMs, got {args.sms}")
    device = GPUS[args.gpu]["device"]
    if args.sms is not None:
        device = with_sm_count(device, args.sms)
    samples = profile_gemm.load_samples(args.traffic) if args.traffic else profile_gemm.suite_samples(device=device)
    sass = sass_rows(args.sass)
    for dtype, precision in profile_gemm.MATHS:
        label = "float16" if dtype == np.float16 else f"float32, precision={precision}"
        print(f"\n{device.name} ({device.sm_count} SMs), {label}\n")
        print(HEADER)
        for row in predict(args.gpu, dtype, precision, samples, sass, device):
            print(format_row(row))


if __name__ == "__main__":
    main()
