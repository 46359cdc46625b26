#!/usr/bin/env python3
"""What the GPU would run, read without a GPU: compile CUDA sources with nvcc and report, per
entry point, registers, stack, local and static shared memory, spills, and the count of the
instructions that matter for the kernels' speed, from the SASS.

    python scripts/sass_report.py                       # every kernels/*.cu, sm_90
    python scripts/sass_report.py --arch sm_80 FILE.cu  # any file; --json OUT writes the table

Counted opcodes: HMMA (tensor-core mma), LDSM (ldmatrix), LDGSTS (cp.async), FFMA, DFMA, LDG,
LDS, LDL/STL (local memory: spills or stack arrays). The main loop is the loop (a backward branch
and its target) holding the most multiply-adds (FFMA, DFMA, HMMA), the smallest such; its size
and multiply-add count are reported too ("loop", "loop_fma"). Needs nvcc, and cuobjdump + nvdisasm: on
PATH, or from the pip wheels ``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` (the test
extra installs them). Also importable: ``report(path, arch)`` returns the rows (tests use it).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

COUNTED = ("HMMA", "LDSM", "LDGSTS", "FFMA", "DFMA", "LDG", "LDS", "LDL", "STL")
REPO = Path(__file__).resolve().parent.parent


def find_nvcc():
    return shutil.which("nvcc") or ("/usr/local/bin/nvcc" if os.path.exists("/usr/local/bin/nvcc") else None)


def find_cuobjdump():
    """cuobjdump on PATH, else the one in NVIDIA's pip wheel (``nvidia/cu*/bin``), with the
    directory that must be on PATH for it to find nvdisasm; (None, None) if neither."""
    found = shutil.which("cuobjdump")
    if found and shutil.which("nvdisasm"):
        return found, None
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for candidate in sorted(Path(root).glob("cu*/bin/cuobjdump"), reverse=True):
            if (candidate.parent / "nvdisasm").exists():
                return str(candidate), str(candidate.parent)
    return None, None


def tools_unavailable_reason():
    """None when nvcc, cuobjdump and nvdisasm are all here, else what is missing."""
    if not find_nvcc():
        return "nvcc not found on PATH or at /usr/local/bin/nvcc"
    if find_cuobjdump()[0] is None:
        return "cuobjdump/nvdisasm not found on PATH or in the nvidia-cuda-cuobjdump/-nvdisasm wheels"
    return None


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PTXAS_FRAME = re.compile(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads")
_RES_USAGE = re.compile(r"Function (\S+):\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)")
# "@!PT" guards an instruction that never executes (ptxas pads LDGSTS sequences with such LDS).
_SASS_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([^;]*)")
_BRANCH_TARGET = re.compile(r"^\s*(0x[0-9a-f]+)")
_MULTIPLY_ADDS = ("FFMA", "DFMA", "HMMA")


def _run(command, env=None):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr[-4000:]}")
    return result


def report(source, arch="sm_90", extra_options=()):
    """Rows, one per function in the cubin of ``source``: name, registers, stack, local and
    static shared bytes, spill store/load bytes, and the counts of COUNTED opcodes."""
    nvcc = find_nvcc()
    cuobjdump, tool_dir = find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        raise RuntimeError(tools_unavailable_reason())
    env = dict(os.environ)
    if tool_dir:
        env["PATH"] = tool_dir + os.pathsep + env.get("PATH", "")
    with tempfile.TemporaryDirectory() as scratch:
        cubin = Path(scratch) / "module.cubin"
        compiled = _run([nvcc, "-cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v", *extra_options, str(source),
                         "-o", str(cubin)])
        resources = _run([cuobjdump, "-res-usage", str(cubin)], env).stdout
        sass = _run([cuobjdump, "-sass", str(cubin)], env).stdout
    rows = {}
    for name, regs, stack, shared, local in _RES_USAGE.findall(resources):
        rows[name] = {"kernel": name, "registers": int(regs), "stack": int(stack), "shared": int(shared),
                      "local": int(local), "spill_stores": 0, "spill_loads": 0, **{op: 0 for op in COUNTED}}
    for name, _frame, stores, loads in _PTXAS_FRAME.findall(compiled.stderr):
        if name in rows:
            rows[name]["spill_stores"], rows[name]["spill_loads"] = int(stores), int(loads)
    listings = {}  # function -> [(address, opcode, operands)]
    current = None
    for line in sass.splitlines():
        function = _SASS_FUNCTION.match(line)
        if function:
            current = listings.setdefault(function.group(1), []) if function.group(1) in rows else None
            continue
        instruction = _SASS_INSTRUCTION.match(line)
        if current is None or not instruction or (instruction.group(2) or "").strip() == "@!PT":
            continue
        current.append((int(instruction.group(1), 16), instruction.group(3), instruction.group(4)))
    for name, listing in listings.items():
        row = rows[name]
        for _, opcode, _ in listing:
            if opcode in COUNTED:
                row[opcode] += 1
        row["loop"], row["loop_fma"] = _main_loop(listing)
    entries = set(name for name, _ in _PTXAS_ENTRY.findall(compiled.stderr))
    return [row for name, row in sorted(rows.items()) if name in entries]


def _main_loop(listing):
    """(instructions, multiply-adds) of the loop with the most multiply-adds, the smallest such;
    (0, 0) without loops."""
    best = (0, 0)
    for address, opcode, operands in listing:
        target = _BRANCH_TARGET.match(operands)
        if opcode != "BRA" or not target or int(target.group(1), 16) > address:
            continue
        body = [op for at, op, _ in listing if int(target.group(1), 16) <= at <= address]
        fma = sum(op in _MULTIPLY_ADDS for op in body)
        if fma > best[1] or (fma == best[1] and fma and len(body) < best[0]):
            best = (len(body), fma)
    return best


def format_table(rows, title):
    columns = ("registers", "stack", "local", "shared", "spill_stores", *COUNTED, "loop", "loop_fma")
    headers = ("regs", "stack", "local", "shared", "spill", *COUNTED, "loop", "l_fma")
    width = max([len("kernel"), *(len(r["kernel"]) for r in rows)])
    lines = [title, f"{'kernel':<{width}} " + " ".join(f"{h:>6}" for h in headers)]
    for row in rows:
        values = [row[c] + (row["spill_loads"] if c == "spill_stores" else 0) for c in columns]
        lines.append(f"{row['kernel']:<{width}} " + " ".join(f"{v:>6}" for v in values))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="CUDA files (default: kernels/*.cu)")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--json", help="write the rows of every file to this file")
    args = parser.parse_args(argv)
    sources = args.sources or sorted(str(p) for p in (REPO / "kernels").glob("*.cu"))
    reason = tools_unavailable_reason()
    if reason:
        print(f"sass_report: {reason}", file=sys.stderr)
        return 2
    everything = {}
    for source in sources:
        rows = report(source, args.arch)
        everything[str(source)] = rows
        print(format_table(rows, f"{source} ({args.arch})"), end="\n\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "files": everything}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
