#!/usr/bin/env python3
"""What the GPU would run, read without a GPU: compile CUDA sources with nvcc and report, per
entry point, registers, stack, local and static shared memory, spills, and the count of the
instructions that matter for the kernels' speed, from the SASS.

    python scripts/sass_report.py                       # every kernels/*.cu, sm_90
    python scripts/sass_report.py --arch sm_80 FILE.cu  # any file; --json OUT writes the table

Counted opcodes: HMMA (tensor-core mma), LDSM (ldmatrix), LDGSTS (cp.async), FFMA, DFMA, LDG,
LDS, LDL/STL (local memory: spills or stack arrays). The main loop is the loop (a backward branch
and its target) holding the most multiply-adds (FFMA, DFMA, HMMA), the smallest such; its size
and multiply-add count are reported too ("loop", "loop_fma"; issue slots per multiply-add is their
ratio), and its opcodes with their modifiers in the JSON ("loop_opcodes"). Needs nvcc, and cuobjdump + nvdisasm: on
PATH, or from the pip wheels ``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` (the test
extra installs them). Also importable: ``report(path, arch)`` returns the rows (tests use it).

What the GPU actually ran, from the cubins CuPy built there (scripts/gpu_check.sh packs the run's
CuPy cache; packing needs no CUDA tool, reading needs cuobjdump):

    python scripts/sass_report.py --pack-cubins CUPY_CACHE_DIR cubins.tar.gz   # on the GPU machine
    python scripts/sass_report.py --cubins cubins.tar.gz --json sass.json      # anywhere, afterwards

Only cubins that define an entry point of kernels/*.cu are packed, and only those entry points are
reported (``library_entry_points``: the sources run through the C preprocessor). A cubin keeps no
ptxas output, so the spill columns read "-" there (LDL/STL and "local" still show local memory).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
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


def find_preprocessor():
    """A C++ compiler to preprocess with (g++, else c++), or None."""
    return shutil.which("g++") or shutil.which("c++")


_ANGLE_INCLUDE = re.compile(r"^\s*#\s*include\s*<([^>]+)>", re.MULTILINE)
_GLOBAL_MARKER = "__cudeconv_global__"
_PREPROCESSED_ENTRY = re.compile(  # a definition: the parameter list, then the body
    rf'extern\s*"C"\s*{_GLOBAL_MARKER}\s+void\s+(\w+)\s*\((?:[^()]|\([^()]*\))*\)\s*\{{')


def library_entry_points(kernels_dir=REPO / "kernels"):
    """{file name: set of ``extern "C" __global__`` names} for every ``kernels/*.cu``, as the
    preprocessor expands them (macro-built names, per-dtype lists), without any option: every
    entry point of every math (module_select.cuh), not those of one module the launch layer builds.
    System headers are replaced by empty files: only the sources' own macros make entry points."""
    compiler = find_preprocessor()
    if compiler is None:
        raise RuntimeError("no C++ preprocessor (g++ or c++) on PATH: the entry points of kernels/*.cu cannot be listed")
    kernels_dir = Path(kernels_dir)
    sources = sorted(kernels_dir.glob("*.cu"))
    found = {}
    with tempfile.TemporaryDirectory() as stubs:
        for header in {name for path in kernels_dir.iterdir() if path.suffix in (".cu", ".cuh")
                       for name in _ANGLE_INCLUDE.findall(path.read_text())}:
            (Path(stubs) / header).parent.mkdir(parents=True, exist_ok=True)
            (Path(stubs) / header).write_text("")
        for source in sources:
            text = _run([compiler, "-E", "-P", "-x", "c++", "-nostdinc", "-I", stubs, f"-D__global__={_GLOBAL_MARKER}",
                         "-D__launch_bounds__(...)=", str(source)]).stdout
            found[source.name] = set(_PREPROCESSED_ENTRY.findall(text))
    return found


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PTXAS_FRAME = re.compile(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads")
_RES_USAGE = re.compile(r"Function (\S+):\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)")
_SASS_ARCH = re.compile(r"code for (sm_\w+)")
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
    """Rows, one per entry point in the cubin nvcc makes of ``source``: name, registers, stack,
    local and static shared bytes, spill store/load bytes, and the counts of COUNTED opcodes."""
    nvcc = find_nvcc()
    if nvcc is None or find_cuobjdump()[0] is None:
        raise RuntimeError(tools_unavailable_reason())
    with tempfile.TemporaryDirectory() as scratch:
        cubin = Path(scratch) / "module.cubin"
        compiled = _run([nvcc, "-cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v", *extra_options, str(source),
                         "-o", str(cubin)])
        entries = set(name for name, _ in _PTXAS_ENTRY.findall(compiled.stderr))
        _, rows = cubin_rows(cubin, entries)
    by_name = {row["kernel"]: row for row in rows}
    for name, _frame, stores, loads in _PTXAS_FRAME.findall(compiled.stderr):
        if name in by_name:
            by_name[name]["spill_stores"], by_name[name]["spill_loads"] = int(stores), int(loads)
    for row in rows:  # ptxas reports a frame only for functions that have one
        for spill in ("spill_stores", "spill_loads"):
            row[spill] = row[spill] or 0
    return rows


def cubin_rows(cubin, names):
    """(arch, rows) of the functions of ``cubin`` named in ``names``, sorted by name: registers,
    stack, local and static shared bytes and the COUNTED opcodes from cuobjdump; the spill fields
    are None (only ptxas's output has them)."""
    cuobjdump, tool_dir = find_cuobjdump()
    if cuobjdump is None:
        raise RuntimeError(tools_unavailable_reason())
    env = dict(os.environ)
    if tool_dir:
        env["PATH"] = tool_dir + os.pathsep + env.get("PATH", "")
    resources = _run([cuobjdump, "-res-usage", str(cubin)], env).stdout
    sass = _run([cuobjdump, "-sass", str(cubin)], env).stdout
    arch = _SASS_ARCH.search(sass)
    rows = {}
    for name, regs, stack, shared, local in _RES_USAGE.findall(resources):
        if name in names:
            rows[name] = {"kernel": name, "registers": int(regs), "stack": int(stack), "shared": int(shared),
                          "local": int(local), "spill_stores": None, "spill_loads": None,
                          **{op: 0 for op in COUNTED}, "loop": 0, "loop_fma": 0, "loop_opcodes": []}
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
        row["loop"], row["loop_fma"], row["loop_opcodes"] = _main_loop(listing)
    return (arch.group(1) if arch else None), [row for _, row in sorted(rows.items())]


_ELF_MAGIC = b"\x7fELF"
_MD5_HEX_BYTES = 32


def cubin_bytes(data):
    """The cubin in a CuPy cache file (the MD5 of the cubin in hex, then the cubin), or a bare
    cubin; None for anything else (PTX, a torn write whose MD5 does not match)."""
    if data[:4] == _ELF_MAGIC:
        return data
    body = data[_MD5_HEX_BYTES:]
    if body[:4] == _ELF_MAGIC and hashlib.md5(body).hexdigest().encode() == data[:_MD5_HEX_BYTES]:
        return body
    return None


def defines_any(cubin, names):
    """Whether ``cubin``'s symbol names include one of ``names`` (any cubin for None)."""
    return names is None or any(b"\0" + name.encode() + b"\0" in cubin for name in names)


def pack_cubins(cache_dir, archive, names):
    """Write the cubins under ``cache_dir`` that define one of ``names`` (every cubin for None)
    into the tar.gz ``archive`` (bare cubins, under their cache file names); returns the names packed."""
    packed = []
    with tarfile.open(archive, "w:gz", compresslevel=9) as tar:
        for path in sorted(Path(cache_dir).rglob("*")) if Path(cache_dir).is_dir() else []:
            cubin = cubin_bytes(path.read_bytes()) if path.is_file() else None
            if cubin is None or not defines_any(cubin, names):
                continue
            member = tarfile.TarInfo(str(path.relative_to(cache_dir)))
            member.size = len(cubin)
            tar.addfile(member, io.BytesIO(cubin))
            packed.append(member.name)
    return packed


def archive_report(archive, names):
    """{member: {"arch", "rows"}} for each cubin of a tar archive (pack_cubins's), the rows of the
    functions named in ``names`` (cubin_rows)."""
    results = {}
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory() as scratch:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            cubin = cubin_bytes(tar.extractfile(member).read())
            if cubin is None:
                continue
            path = Path(scratch) / "module.cubin"
            path.write_bytes(cubin)
            arch, rows = cubin_rows(path, names)
            results[member.name] = {"arch": arch, "rows": rows}
    return results


def _main_loop(listing):
    """(instructions, multiply-adds, [opcode with its modifiers, e.g. LDGSTS.E.BYPASS.128]) of the
    loop with the most multiply-adds, the smallest such; (0, 0, []) without loops."""
    best = (0, 0, [])
    for address, opcode, operands in listing:
        target = _BRANCH_TARGET.match(operands)
        if opcode != "BRA" or not target or int(target.group(1), 16) > address:
            continue
        body = [(op, rest) for at, op, rest in listing if int(target.group(1), 16) <= at <= address]
        fma = sum(op in _MULTIPLY_ADDS for op, _ in body)
        if fma > best[1] or (fma == best[1] and fma and len(body) < best[0]):
            best = (len(body), fma, [op + rest.split(" ", 1)[0] if rest.startswith(".") else op for op, rest in body])
    return best


def format_table(rows, title):
    columns = ("registers", "stack", "local", "shared", "spill_stores", *COUNTED, "loop", "loop_fma")
    headers = ("regs", "stack", "local", "shared", "spill", *COUNTED, "loop", "l_fma")
    width = max([len("kernel"), *(len(r["kernel"]) for r in rows)])
    lines = [title, f"{'kernel':<{width}} " + " ".join(f"{h:>6}" for h in headers)]
    for row in rows:
        values = [row[c] for c in columns]
        if row["spill_stores"] is not None:
            values[columns.index("spill_stores")] += row["spill_loads"]
        lines.append(f"{row['kernel']:<{width}} " + " ".join(f"{'-' if v is None else v:>6}" for v in values))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="CUDA files (default: kernels/*.cu)")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--json", help="write the rows of every file (or cubin) to this file")
    parser.add_argument("--cubins", metavar="ARCHIVE", help="report the cubins of this tar.gz (from --pack-cubins) "
                        "instead of compiling sources")
    parser.add_argument("--pack-cubins", nargs=2, metavar=("CACHE_DIR", "ARCHIVE"),
                        help="write the cubins of a CuPy cache that hold kernels/*.cu entry points to ARCHIVE, and stop")
    args = parser.parse_args(argv)
    if args.pack_cubins:
        # Without a preprocessor to list the library's entry points, every cubin rather than none.
        names = set().union(*library_entry_points().values()) if find_preprocessor() else None
        packed = pack_cubins(*args.pack_cubins, names=names)
        print(f"sass_report: packed {len(packed)} cubins of {args.pack_cubins[0]} into {args.pack_cubins[1]}"
              + ("" if names else " (no preprocessor to pick the library's: all of them)"))
        return 0
    if args.cubins:
        return _report_archive(args.cubins, args.json)
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


def _report_archive(archive, json_path):
    if find_cuobjdump()[0] is None:
        print(f"sass_report: {tools_unavailable_reason()}", file=sys.stderr)
        return 2
    cubins = archive_report(archive, set().union(*library_entry_points().values()))
    for member, found in cubins.items():
        print(format_table(found["rows"], f"{archive}:{member} ({found['arch']})"), end="\n\n")
    if not cubins:
        print(f"sass_report: {archive} holds no cubins")
    if json_path:
        Path(json_path).write_text(json.dumps({"archive": str(archive), "cubins": cubins}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
