"""Sector amplification of the implicit-GEMM passes, per operand, from the emulator's profile.

Runs the forward, grad_input and grad_weight GEMMs (kernels/deconv_gemm.cu) in float32 (fp32,
tf32) and float16 on one small but representative layer through the public API, on an emulator
backend whose modules are built with ``profile=True``, and prints a Markdown table per launch and
operand (kernel argument):

- sectors: 32-byte sectors the operand's requests touched (global loads, stores and cp.async),
- distinct: sectors of the operand touched at all (what a perfect cache would fetch once),
- amplification: sectors / distinct, how often each useful sector is requested,
- use: requested bytes / (sectors · 32), how much of each sector touched a request used.

    python3 scripts/profile_gemm.py            # the table docs/perf.md carries

``--suite`` profiles the suite's layers at their real sizes instead: for each GEMM pass of each
case, one block (``sampled_pass``) runs with the real arrays and arguments — the launch's grid cut
to block (0, 0, 0), so its K loop, tile and addresses are the real ones — and the block's counts
scale to the whole grid by the slices of K (loads, shared memory) and blocks (stores) the grid
executes (``scaled_traffic``); scripts/predict_perf.py charges its time from them.

    python3 scripts/profile_gemm.py --suite [--json traffic.json]   # every GEMM pass, 3 maths
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

import cudeconv
from cudeconv import backends, emulator
from cudeconv.backends.device_descriptor import H100_SXM
from cudeconv.backends.gemm_plan import GEMM_SLICE_K, GEMM_TILES, ceil_div
from cudeconv.backends.kernel_backend import KernelBackend, dynamic_shared, entry_module
from cudeconv.cases import SUITE

# DCGAN-like up-sampling layer, small enough for the emulator's traced build: 2 × 32 × 8 × 8 in,
# 32 → 32 channels, 4 × 4 kernel, stride 2, padding 1 → 16 × 16 out.
LAYER = dict(stride=2, padding=1)
X_SHAPE, W_SHAPE = (2, 32, 8, 8), (32, 32, 4, 4)
MATHS = ((np.float32, "fp32"), (np.float32, "tf32"), (np.float16, "fp32"))
# Kernel parameter positions of the GEMM entry points' arrays (kernels/deconv_gemm.cu); on the
# tensor-core maths the forward's and grad_input's w is the weight as deconv_gemm_pack_weight_*
# packed it, and their x / grad_output the activation as deconv_gemm_pack_activation_* did.
OPERANDS = {
    "deconv_gemm_pack_weight": {0: "w", 1: "packed w"},
    "deconv_gemm_pack_activation": {0: "activation", 1: "packed activation"},
    "deconv_forward_gemm": {0: "x", 1: "w", 2: "bias", 4: "y", 5: "workspace"},
    "deconv_grad_input_gemm": {0: "grad_output", 1: "w", 2: "grad_input", 3: "workspace"},
    "deconv_grad_weight_gemm": {0: "x", 1: "grad_output", 2: "grad_weight", 3: "workspace"},
    "deconv_gemm_split_reduce": {0: "workspace", 1: "out", 4: "bias"},
}
GLOBAL_KINDS = ("global_load", "global_store", "cp_async")
LOAD_KINDS = ("global_load", "cp_async")
SHARED_KINDS = ("shared_load", "shared_store")
EPILOGUE_LOADS = {"bias"}  # read once per output tile, after the K loop: scaled by tiles, not slices
# The passes each GEMM entry point serves, and where its launch's output array sits.
GEMM_PASSES = ("forward", "grad_input", "grad_weight")


def operand_name(entry, position):
    for prefix, names in OPERANDS.items():
        if entry.startswith(prefix):
            return names.get(position, f"arg{position}")
    return f"arg{position}"


def run_layer(backend_name):
    """The small layer's forward and backward in each of MATHS on ``backend_name`` (the launches
    profiled here, and what scripts/ncu_traffic.py profiles on a GPU)."""
    to_backend = backends.get(backend_name).asarray if backend_name == "cuda" else np.asarray
    rng = np.random.default_rng(0)
    for dtype, precision in MATHS:
        x, w = (to_backend(rng.standard_normal(s).astype(dtype)) for s in (X_SHAPE, W_SHAPE))
        b = to_backend(rng.standard_normal(W_SHAPE[1]).astype(dtype))
        settings = dict(LAYER, backend=backend_name, algorithm="gemm", precision=precision)
        y = cudeconv.conv_transpose2d(x, w, b, **settings)
        cudeconv.conv_transpose2d_backward(to_backend(np.ones(y.shape, dtype)), x, w, **settings)


class ProfilingBackend(KernelBackend):
    """An emulator backend whose modules count memory traffic; keeps (entry, profile) per launch.
    Its outputs and workspaces start on 256-byte boundaries, as CuPy's allocator gives (sector
    counts of NumPy's 16-byte-aligned arrays would vary by array)."""

    def __init__(self):
        super().__init__("emulator", np, lambda code, options=(): emulator.RawModule(code, options, profile=True),
                         lambda: "cpu-profile", module_per_math=False)
        self.profiles = []

    def _output(self, shape, dtype):
        return aligned_zeros(shape, dtype)

    def _launch(self, path, entry, grid, block, args):
        super()._launch(path, entry, grid, block, args)
        self.profiles.append((entry, self.module(*entry_module(path, entry)).get_function(entry).last_profile))


def profiled_launches():
    """Runs the small layer on a profiling emulator; returns [(entry, profile)] for each GEMM launch
    (split reduces included), in launch order."""
    with backends.substituted("emulator", ProfilingBackend()) as backend:
        run_layer("emulator")
    return [(entry, profile) for entry, profile in backend.profiles if "gemm" in entry]


def phase_taps(geom, phase):
    """Taps of the forward's stride phase ``phase`` (its output offset r per dim): those k with
    r + padding - k·dilation a multiple of the stride, per dim."""
    return math.prod(sum(1 for k in range(kk) if (r + p - k * d) % s == 0)
                     for kk, r, p, d, s in zip(geom.kernel_size, phase, geom.padding, geom.dilation, geom.stride))


def phase_rows(geom, phase):
    """Rows of the forward's GEMM for stride phase ``phase``: samples × its output positions."""
    return geom.batch * math.prod(max(0, ceil_div(o - r, s)) for o, r, s in zip(geom.out_size, phase, geom.stride))


def split_share(split, slices, splits):
    """Slices of K that split ``split`` of ``splits`` sums: the kernels give it ⌊s·slices/splits⌋ on."""
    return (split + 1) * slices // splits - split * slices // splits


def tile_work(geom, pass_, math_name, tile=None):
    """[(tiles, slices per tile)] of the GEMM's grid on ``tile`` (BM, BN; None: the menu's widest)
    before split K: per stride phase for the forward (a phase's blocks past its rows leave at once),
    one entry for grad_input and grad_weight; slices are the K loop's iterations (taps × channel
    slices, or N·positions / BK)."""
    (rows, columns), bk = tile or GEMM_TILES[math_name][pass_][0], GEMM_SLICE_K[math_name]
    cin, cout = geom.in_channels_per_group, geom.out_channels_per_group
    if pass_ == "grad_weight":
        return [(ceil_div(cin, rows) * ceil_div(cout * geom.taps, columns) * geom.groups,
                 ceil_div(geom.batch * math.prod(geom.in_size), bk))]
    if pass_ == "grad_input":
        return [(ceil_div(geom.batch * math.prod(geom.in_size), rows) * ceil_div(cin, columns) * geom.groups,
                 geom.taps * ceil_div(cout, bk))]
    return [(ceil_div(phase_rows(geom, phase), rows) * ceil_div(cout, columns) * geom.groups,
             phase_taps(geom, phase) * ceil_div(cin, bk)) for phase in np.ndindex(*geom.stride)]


def sample_box(geom, pass_):
    """The grid the sampled launch runs: blocks (0, 0, z) for z below the box's depth — one block
    (split 0, group 0) for grad_input and grad_weight; for the forward, the phases up to the first
    with the most taps (z = phase · groups + group), so the sample holds a block that works."""
    if pass_ != "forward":
        return (1, 1, 1)
    taps = [phase_taps(geom, phase) for phase in np.ndindex(*geom.stride)]
    return (1, 1, taps.index(max(taps)) * geom.groups + 1)


def sampled_work(geom, pass_, math_name, splits):
    """(tiles, slices) the sampled launch (sample_box) runs: tiles that write, and K slices."""
    box = sample_box(geom, pass_)
    if pass_ != "forward":
        (_, slices), = tile_work(geom, pass_, math_name)
        return 1, split_share(0, slices, splits)
    phases = list(np.ndindex(*geom.stride))
    bk = GEMM_SLICE_K[math_name]
    tiles = total = 0
    for z in range(box[2]):
        phase = phases[z // geom.groups]
        if phase_rows(geom, phase):
            tiles += 1
            total += split_share(0, phase_taps(geom, phase) * ceil_div(geom.in_channels_per_group, bk), splits)
    return tiles, total


def aligned_zeros(shape, dtype, alignment=256):
    """Zeros on a ``alignment``-byte boundary, as CuPy's allocator gives (NumPy promises 16 bytes,
    which would add a straddled sector to a run now and then, and make sector counts vary by array)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(count * dtype.itemsize + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


class SampledBackend(KernelBackend):
    """An emulator backend whose GEMM launches (a path's own entry point) run only ``box`` of their
    grid, profiled; its other launches (the split reduce) do not run: addresses, not values, make
    the traffic, and predict_perf charges the reduce from its sizes."""

    def __init__(self, device=H100_SXM):
        super().__init__("emulator", np,
                         lambda code, options=(): emulator.RawModule(code, options, profile=True),
                         lambda: "cpu-profile", module_per_math=False, device=device)
        self.sampled = []  # (path, entry, full grid, profile)
        self.box = None

    def _output(self, shape, dtype):
        return aligned_zeros(shape, dtype)

    def _launch(self, path, entry, grid, block, args):
        if entry != path.entry:
            return
        kernel = self.module(*entry_module(path, entry)).get_function(entry)
        kernel(self.box, block, args, shared_mem=dynamic_shared(kernel, path, entry))
        self.sampled.append((path, entry, tuple(grid), kernel.last_profile))


def operand_counts(counts, kinds):
    """(requests, sectors, bytes) of ``counts`` (a profile or its per-argument entry) over ``kinds``."""
    return tuple(sum(counts.get(kind, {}).get(field, 0) for kind in kinds)
                 for field in ("requests", "sectors", "bytes"))


def sampled_pass(geom, pass_, dtype, precision, device=H100_SXM):
    """Profile of one sampled launch of ``pass_``'s GEMM at ``geom``'s real sizes on ``device``'s
    split choice, or None where the heuristic takes another kernel. A dict: entry, grid, parts,
    sampled (tiles, slices), grid_work (tiles incl. splits, slices), per operand name {kind,
    requests, sectors, bytes, distinct} (kind "load" or "store"), shared {requests, wavefronts,
    bytes}, mma (count by name)."""
    backend = SampledBackend(device)
    path = backend.gemm_plan(geom, pass_, "auto", dtype, precision, device=device)
    if path is None:
        return None
    backend.box = sample_box(geom, pass_)
    arrays = {name: aligned_zeros(getattr(geom, shape), dtype) for name, shape in
              (("x", "input_shape"), ("w", "weight_shape"), ("y", "output_shape"))}
    if pass_ == "forward":
        backend.forward(arrays["x"], arrays["w"], aligned_zeros(geom.out_channels, dtype), geom, "auto", precision)
    elif pass_ == "grad_input":
        backend.grad_input(arrays["y"], arrays["w"], geom, "auto", precision)
    else:
        backend.grad_weight(arrays["y"], arrays["x"], geom, "auto", precision)
    (_, entry, grid, profile), = backend.sampled
    operands = {}
    for position, counts in sorted(profile["per_argument"].items()):
        for kind, kinds in (("load", LOAD_KINDS), ("store", ("global_store",))):
            requests, sectors, nbytes = operand_counts(counts, kinds)
            if sectors:
                name = operand_name(entry, position)
                per = "slice" if kind == "load" and name not in EPILOGUE_LOADS else "tile"
                operands[name] = dict(kind=kind, per=per, requests=requests, sectors=sectors, bytes=nbytes,
                                      distinct=counts.get("dram_sectors", 0))
    requests, wavefronts, nbytes = (sum(profile[k].get(f, 0) for k in SHARED_KINDS)
                                    for f in ("requests", "wavefronts", "bytes"))
    tiles = sum(t for t, _ in tile_work(geom, pass_, path.math, path.tile))
    return dict(entry=entry, grid=list(grid), parts=path.parts,
                sampled=list(sampled_work(geom, pass_, path.math, path.parts)),
                grid_work=[tiles * path.parts, sum(t * s for t, s in tile_work(geom, pass_, path.math, path.tile))],
                operands=operands, shared=dict(requests=requests, wavefronts=wavefronts, bytes=nbytes),
                mma=profile.get("mma", {}))


def scaled_traffic(sample):
    """The whole grid's traffic from a sampled_pass: per operand, the K loop's loads × (grid slices
    / sampled slices), stores and epilogue loads × (grid tiles / sampled tiles); shared memory by
    slices."""
    (tiles, slices), (grid_tiles, grid_slices) = sample["sampled"], sample["grid_work"]
    by = {"slice": grid_slices / slices if slices else 0.0, "tile": grid_tiles / tiles if tiles else 0.0}
    operands = {name: dict(c, **{field: c[field] * by[c["per"]] for field in ("requests", "sectors", "bytes",
                                                                              "distinct")})
                for name, c in sample["operands"].items()}
    shared = {field: value * by["slice"] for field, value in sample["shared"].items()}
    return operands, shared


def suite_samples(maths=MATHS, cases=SUITE, device=H100_SXM, on_progress=lambda *a: None):
    """{(case, pass, dtype name, precision): sampled_pass or None} for the GEMM passes of ``cases``."""
    samples = {}
    for dtype, precision in maths:
        for case in cases:
            geom = case.geometry()
            for pass_ in GEMM_PASSES:
                on_progress(case.name, pass_, np.dtype(dtype).name, precision)
                samples[(case.name, pass_, np.dtype(dtype).name, precision)] = sampled_pass(
                    geom, pass_, dtype, precision, device)
    return samples


def save_samples(samples, path):
    rows = [dict(case=c, pass_=p, dtype=d, precision=pr, sample=s) for (c, p, d, pr), s in samples.items()]
    Path(path).write_text(json.dumps(rows, indent=0) + "\n")


def load_samples(path):
    rows = json.loads(Path(path).read_text())
    return {(r["case"], r["pass_"], r["dtype"], r["precision"]): r["sample"] for r in rows}


def suite_table(samples):
    """One row per GEMM launch at the suite's real sizes (one sampled block): per operand, in the
    kernel's argument order, sectors per request · amplification (sectors / distinct sectors of the
    sampled block) · use (requested bytes / sectors · 32)."""
    rows = ["| case | launch | parts | operands: sectors/request · amplification · use |", "|---|---|---:|---|"]
    for (case, _, _, _), sample in samples.items():
        if sample is None:
            continue
        cells = [f"{name} {c['sectors'] / c['requests']:.1f} · {c['sectors'] / max(c['distinct'], 1):.1f}× · "
                 f"{c['bytes'] / (32 * c['sectors']):.0%}" for name, c in sample["operands"].items()]
        rows.append(f"| {case} | `{sample['entry']}` | {sample['parts']} | {'; '.join(cells)} |")
    return "\n".join(rows)


def table(launches):
    rows = ["| launch | operand | requests | sectors | distinct | amplification | use |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for entry, profile in launches:
        for position, counts in sorted(profile["per_argument"].items()):
            requests = sum(counts.get(k, {}).get("requests", 0) for k in GLOBAL_KINDS)
            sectors = sum(counts.get(k, {}).get("sectors", 0) for k in GLOBAL_KINDS)
            nbytes = sum(counts.get(k, {}).get("bytes", 0) for k in GLOBAL_KINDS)
            distinct = counts.get("dram_sectors", 0)
            if not sectors:
                continue
            rows.append(f"| `{entry}` | {operand_name(entry, position)} | {requests} | {sectors} | {distinct} | "
                        f"{sectors / distinct:.2f} | {nbytes / (32 * sectors):.0%} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", action="store_true", help="every GEMM pass of the suite at its real sizes")
    parser.add_argument("--json", help="with --suite: also write the samples here (predict_perf.py --traffic)")
    args = parser.parse_args(argv)
    reason = backends.emulator_unavailable_reason()
    if reason is not None:
        print(f"profile_gemm: the emulator cannot run here: {reason}", file=sys.stderr)
        return 2
    if not args.suite:
        print(table(profiled_launches()))
        return 0
    samples = suite_samples(on_progress=lambda *what: print("profiling", *what, file=sys.stderr, flush=True))
    if args.json:
        save_samples(samples, args.json)
    print(suite_table(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
