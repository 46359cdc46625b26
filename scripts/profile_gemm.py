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
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import cudeconv
from cudeconv import backends, emulator
from cudeconv.backends import kernel_backend
from cudeconv.backends.kernel_backend import KernelBackend

# DCGAN-like up-sampling layer, small enough for the emulator's traced build: 2 × 32 × 8 × 8 in,
# 32 → 32 channels, 4 × 4 kernel, stride 2, padding 1 → 16 × 16 out.
LAYER = dict(stride=2, padding=1)
X_SHAPE, W_SHAPE = (2, 32, 8, 8), (32, 32, 4, 4)
MATHS = ((np.float32, "fp32"), (np.float32, "tf32"), (np.float16, "fp32"))
# Kernel parameter positions of the GEMM entry points' arrays (kernels/deconv_gemm.cu).
OPERANDS = {
    "deconv_forward_gemm": {0: "x", 1: "w", 2: "bias", 4: "y", 5: "workspace"},
    "deconv_grad_input_gemm": {0: "grad_output", 1: "w", 2: "grad_input", 3: "workspace"},
    "deconv_grad_weight_gemm": {0: "x", 1: "grad_output", 2: "grad_weight", 3: "workspace"},
    "deconv_gemm_split_reduce": {0: "workspace", 1: "out", 4: "bias"},
}
GLOBAL_KINDS = ("global_load", "global_store", "cp_async")


def operand_name(entry, position):
    for prefix, names in OPERANDS.items():
        if entry.startswith(prefix):
            return names.get(position, f"arg{position}")
    return f"arg{position}"


def profiled_launches():
    """Runs the passes; returns [(label, entry, profile)] for each GEMM launch."""
    backend = KernelBackend("emulator", np, lambda code, options=(): emulator.RawModule(code, options, profile=True),
                            lambda: "cpu-profile", module_per_math=False)
    launches = []
    launch = KernelBackend._launch

    def recording(self, path, entry, grid, block, args):
        launch(self, path, entry, grid, block, args)
        if "gemm" in entry:
            launches.append((entry, self.module(path.source, path.math).get_function(entry).last_profile))

    make = kernel_backend.make
    kernel_backend.make = lambda name: backend if name == "emulator" else make(name)
    KernelBackend._launch = recording
    try:
        rng = np.random.default_rng(0)
        for dtype, precision in MATHS:
            x, w = (rng.standard_normal(s).astype(dtype) for s in (X_SHAPE, W_SHAPE))
            b = rng.standard_normal(W_SHAPE[1]).astype(dtype)
            settings = dict(LAYER, backend="emulator", algorithm="gemm", precision=precision)
            y = cudeconv.conv_transpose2d(x, w, b, **settings)
            cudeconv.conv_transpose2d_backward(np.ones_like(y), x, w, **settings)
    finally:
        kernel_backend.make = make
        KernelBackend._launch = launch
    return launches


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
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    reason = backends.emulator_unavailable_reason()
    if reason is not None:
        print(f"profile_gemm: the emulator cannot run here: {reason}", file=sys.stderr)
        return 2
    print(table(profiled_launches()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
