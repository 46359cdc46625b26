"""Python side of a traced build: racecheck's switch and reports, the memory-traffic profile.

The tracer itself is ``cudeconv_emu_trace.cpp``. Before each launch of a traced module the launch
sets the mode and the array arguments' address ranges (``cudeconv_emu_trace_configure``); after
it, the profile's counts are read back as text (``cudeconv_emu_trace_results``) and turned into
``RawKernel.last_profile``. Instruction addresses in reports and counts are offsets in the module,
resolved to source lines with binutils' ``addr2line`` only when a report or profile needs them.
"""

import ctypes
import functools
import os
import re
import subprocess

import numpy as np

RACECHECK_VARIABLE = "CUDECONV_EMULATOR_RACECHECK"
RACECHECK = 1  # modes of cudeconv_emu_trace.h
PROFILE = 2

KINDS = ("global_load", "global_store", "cp_async", "shared_load", "shared_store")
_GLOBAL_KINDS = ("global_load", "global_store", "cp_async")
# Frames of these files are the emulator's own or the wrappers of kernels/mma.cuh: a location is
# the line of kernel code that reached them.
_WRAPPER_FILES = ("cudeconv_emu.h", "cudeconv_emu_trace.h", "mma.cuh")


def racecheck_setting(racecheck):
    """``racecheck`` as given, else ``$CUDECONV_EMULATOR_RACECHECK`` ("1"/"0", unset is off)."""
    if racecheck is not None:
        if not isinstance(racecheck, bool):
            raise TypeError(f"racecheck must be a bool or None, got {racecheck!r}")
        return racecheck
    text = os.environ.get(RACECHECK_VARIABLE, "").strip()
    if text not in ("", "0", "1"):
        raise ValueError(f"{RACECHECK_VARIABLE} must be 0 or 1, got {text!r}")
    return text == "1"


def configure(library, mode, values):
    """Tells the module's tracer the next launch's mode and its array arguments' address ranges."""
    arrays = [v for v in values if isinstance(v, np.ndarray)]
    ranges = np.array([[a.ctypes.data, a.ctypes.data + a.nbytes] for a in arrays] or [[0, 0]], np.uint64)
    library.cudeconv_emu_trace_configure.restype = None
    library.cudeconv_emu_trace_configure.argtypes = [ctypes.c_uint, ctypes.c_void_p, ctypes.c_uint]
    library.cudeconv_emu_trace_configure(mode, ranges.ctypes.data, len(arrays))
    # the index among the kernel's parameters of each array, in the order given to the tracer
    return [i for i, v in enumerate(values) if isinstance(v, np.ndarray)]


@functools.lru_cache(maxsize=64)
def _frames(path, offset):
    return _symbolize(path, (offset,))[offset]


def _symbolize(path, offsets):
    """offset -> [(function, file, line), ...] innermost first, from the build's line tables."""
    command = ["addr2line", "-e", str(path), "-f", "-C", "-i", "-a", *(f"0x{o:x}" for o in offsets)]
    try:
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {o: [("??", "??", 0)] for o in offsets}
    frames, current = {}, None
    lines = output.splitlines()
    i = 0
    while i < len(lines):
        if re.fullmatch(r"0x[0-9a-f]+", lines[i]):
            current = frames.setdefault(int(lines[i], 16), [])
            i += 1
            continue
        function, location = lines[i], lines[i + 1] if i + 1 < len(lines) else "??:0"
        file, _, line = location.rpartition(":")
        line = re.match(r"\d*", line).group(0)
        current.append((function, os.path.basename(file) or "??", int(line or 0)))
        i += 2
    return {o: frames.get(o) or [("??", "??", 0)] for o in offsets}


def _kernel_frame(frames):
    """The innermost frame outside the emulator's headers and the mma.cuh wrappers."""
    return next((f for f in frames if f[1] not in _WRAPPER_FILES), frames[-1])


def source_line(frames):
    function, file, line = _kernel_frame(frames)
    return f"{file}:{line}"


def describe_location(path, offset):
    """``file:line (in function)`` of an instruction, plus the calls it was inlined into."""
    frames = _frames(path, offset)
    function, file, line = _kernel_frame(frames)
    text = f"{file}:{line} (in {function})"
    outer = [f"{f}:{n}" for _, f, n in frames[frames.index((function, file, line)) + 1 :]]
    return text + (f", inlined into {' <- '.join(outer)}" if outer else "")


@functools.lru_cache(maxsize=16)
def _shared_symbols(path):
    """[(offset, size, name)] of the module's thread-local symbols: its static __shared__ variables."""
    try:
        output = subprocess.run(["readelf", "-sW", "-C", str(path)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    symbols = []
    for line in output.splitlines():
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[3] == "TLS" and fields[6] != "UND":
            symbols.append((int(fields[1], 16), int(fields[2], 0), fields[7]))
    return symbols


def describe_shared(path, offset):
    for start, size, name in _shared_symbols(path):
        if start <= offset < start + size:
            if "cudeconv_emu_dynamic_shared" in name:
                return f"byte {offset - start} of the dynamic shared memory (extern __shared__)"
            return f"byte {offset - start} of __shared__ {name}"
    return f"shared-memory byte {offset}"


def symbolize_message(path, message):
    """Replaces the tracer's {pc:HEX} and {shared:OFFSET} fields with source lines and names."""
    message = re.sub(r"\{pc:([0-9a-f]+)\}", lambda m: describe_location(path, int(m.group(1), 16)), message)
    return re.sub(r"\{shared:(\d+)\}", lambda m: describe_shared(path, int(m.group(1))), message)


def read_profile(library, path, parameters, array_indices):
    """The last launch's profile as a dict (see docs/emulator.md, *Memory-traffic profile*)."""
    library.cudeconv_emu_trace_results.restype = ctypes.c_char_p
    rows = [line.split("\t") for line in library.cudeconv_emu_trace_results().decode().splitlines()]
    counts = [r for r in rows if r[0] == "C"]
    # cp.async calls, named by the line that made them (the tracer's "L" rows), not by line tables
    call_sites = {int(r[1], 16): f"{r[2]}:{int(r[3])}" for r in rows if r[0] == "L"}
    pcs = sorted({int(r[2], 16) for r in counts} - set(call_sites))
    frames = _symbolize(path, pcs) if pcs else {}

    def empty(kind):
        fields = ("requests", "sectors", "bytes") if kind in _GLOBAL_KINDS else ("requests", "wavefronts", "bytes")
        return dict.fromkeys(fields, 0)

    def argument_name(index):  # the kernel parameter's position
        return array_indices[index]

    profile = {kind: empty(kind) for kind in KINDS}
    profile["per_argument"] = {}
    profile["per_line"] = {}
    for _, kind, pc, argument, requests, sectors, nbytes, wavefronts in counts:
        values = {"requests": int(requests), "sectors": int(sectors), "bytes": int(nbytes), "wavefronts": int(wavefronts)}
        line = call_sites.get(int(pc, 16)) or source_line(frames[int(pc, 16)])
        targets = [profile[kind], profile["per_line"].setdefault(line, {}).setdefault(kind, empty(kind))]
        if int(argument) >= 0:
            entry = profile["per_argument"].setdefault(argument_name(int(argument)), {})
            targets.append(entry.setdefault(kind, empty(kind)))
        for target in targets:
            for field in target:
                target[field] += values[field]
    for _, argument, distinct in (r for r in rows if r[0] == "S"):
        if int(argument) < 0:
            profile["dram_sectors"] = int(distinct)
        elif int(distinct):
            profile["per_argument"].setdefault(argument_name(int(argument)), {})["dram_sectors"] = int(distinct)
    profile["mma"] = {name: int(count) for _, name, count in (r for r in rows if r[0] == "M")}
    for name, entry in profile["per_argument"].items():
        entry["parameter"] = parameters[name].c_type
    return profile
