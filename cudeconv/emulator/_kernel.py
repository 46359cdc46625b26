"""``RawModule``/``RawKernel`` with CuPy's interface, running kernels on the CPU."""

import ctypes
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import _compiler, _trace
from ._errors import EmulatorKernelNotFoundError, EmulatorLaunchError

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
# Dynamic shared memory a kernel may launch with until it opts in to more (the default of
# CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
DEFAULT_DYNAMIC_SHARED_BYTES = 48 * 1024
# The most a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin), by compute capability;
# an architecture between two entries has the lower one's. kMaxDynamicShared in cudeconv_emu.h, the
# size of the emulator's buffer, is the largest.
_OPT_IN_SHARED_BYTES = {
    (5, 0): 48 * 1024, (7, 0): 96 * 1024, (7, 5): 64 * 1024, (8, 0): 163 * 1024, (8, 6): 99 * 1024,
    (8, 7): 163 * 1024, (8, 9): 99 * 1024, (9, 0): 227 * 1024, (12, 0): 99 * 1024,
}
DEFAULT_ARCHITECTURE = (9, 0)  # without an -arch option
_ARCH_OPTION = re.compile(r"(?:-arch|--gpu-architecture)=(?:sm|compute)_(\d+?)(\d)[af]?")
_ERROR_BUFFER_BYTES = 8192
# Sanitizer defaults; the caller's own ASAN_OPTIONS/UBSAN_OPTIONS come after and win.
# (No fake stacks: off x86-64 the emulator finds the running thread from a local's address.)
_ASAN_OPTIONS = "detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1:abort_on_error=0:exitcode=86"
_UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1"
_RUNNER_LAUNCH_FAILED = 3  # exit status of cudeconv_emu_runner.cpp for an EmulatorLaunchError
DEFAULT_TIMEOUT_SECONDS = 300.0
# A sanitizer child gets this long beyond the launch's own limit: its watchdog reports first,
# naming the block and thread; the parent's limit catches a child that hangs anywhere else.
_CHILD_TIMEOUT_MARGIN_SECONDS = 10.0


SCHEDULE_VARIABLE = "CUDECONV_EMULATOR_SCHEDULE"
_SCHEDULE_CODES = {"ascending": 0, "descending": 1, "random": 2}  # Schedule in cudeconv_emu.h


def parse_schedule(text, source):
    """``(code, seed)`` for the shim from ``"ascending"``, ``"descending"`` or ``"random:<seed>"``
    (seed a non-negative integer below 2**64); ``source`` names where the text came from."""
    name, colon, seed = text.strip().partition(":")
    if name in ("ascending", "descending") and not colon:
        return _SCHEDULE_CODES[name], 0
    if name == "random" and re.fullmatch(r"[0-9]+", seed) and int(seed) < 2**64:
        return _SCHEDULE_CODES[name], int(seed)
    raise ValueError(
        f"{source} must be 'ascending', 'descending' or 'random:<seed>' (seed an integer 0 <= seed < 2**64), got {text!r}"
    )


def launch_schedule(schedule):
    """The schedule of a launch: the module's ``schedule``, else ``$CUDECONV_EMULATOR_SCHEDULE``
    (read at every launch), else ascending."""
    if schedule is not None:
        return parse_schedule(schedule, "schedule")
    text = os.environ.get(SCHEDULE_VARIABLE, "").strip()
    return parse_schedule(text, SCHEDULE_VARIABLE) if text else (_SCHEDULE_CODES["ascending"], 0)


def launch_timeout():
    """Seconds one launch may run: ``$CUDECONV_EMULATOR_TIMEOUT``, default 300; 0 means no limit."""
    text = os.environ.get("CUDECONV_EMULATOR_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 <= seconds < math.inf):
        raise ValueError(f"CUDECONV_EMULATOR_TIMEOUT must be a number of seconds (0 for no limit), got {text!r}")
    return seconds


def target_architecture(options):
    """Compute capability named by an ``-arch=sm_XY`` option (the last one), else sm_90."""
    architecture = DEFAULT_ARCHITECTURE
    for option in options:
        matched = _ARCH_OPTION.fullmatch(option) if isinstance(option, str) else None
        if matched:
            architecture = (int(matched.group(1)), int(matched.group(2)))
    return architecture


def opt_in_shared_limit(architecture):
    """Bytes of dynamic shared memory a kernel may opt in to on ``architecture``."""
    known = max((a for a in _OPT_IN_SHARED_BYTES if a <= architecture), default=min(_OPT_IN_SHARED_BYTES))
    return _OPT_IN_SHARED_BYTES[known]


class RawModule:
    """CUDA C++ source compiled for the CPU; mirrors ``cupy.RawModule(code=..., options=...)``.

    The source is compiled when the module is created (``EmulatorCompileError`` on failure),
    or taken from the build cache. With ``sanitize=True`` the build uses AddressSanitizer and
    UndefinedBehaviorSanitizer and every launch runs in a child process. ``schedule``
    (``"ascending"``, ``"descending"``, ``"random:<seed>"``) orders the threads of each block
    between barriers; None takes ``$CUDECONV_EMULATOR_SCHEDULE`` at each launch (default ascending).
    ``racecheck=True`` (None: ``$CUDECONV_EMULATOR_RACECHECK``, read here) fails a launch whose
    threads race on shared memory; ``profile=True`` counts each launch's memory traffic into
    ``kernel.last_profile``. Both use one instrumented build, which ``sanitize`` cannot join.
    """

    def __init__(self, code, options=(), *, sanitize=False, schedule=None, racecheck=None, profile=False):
        self.code = code
        self.options = (options,) if isinstance(options, str) else tuple(options)
        self.sanitize = bool(sanitize)
        self.racecheck = _trace.racecheck_setting(racecheck)
        if not isinstance(profile, bool):
            raise TypeError(f"profile must be a bool, got {_describe(profile)}")
        self.profile = profile
        traced = self.racecheck or self.profile
        if traced and self.sanitize:
            raise ValueError(
                f"sanitize=True cannot be combined with racecheck={self.racecheck} or profile={self.profile} "
                "(set CUDECONV_EMULATOR_RACECHECK=0 for a sanitized module)"
            )
        if schedule is not None:
            if not isinstance(schedule, str):
                raise TypeError(f"schedule must be a str or None, got {_describe(schedule)}")
            parse_schedule(schedule, "schedule")
        self.schedule = schedule
        self.architecture = target_architecture(self.options)  # for the GPU's launch limits
        self._compiled = _compiler.load(code, self.options, self.sanitize, traced)
        self._kernels = {}

    @property
    def kernel_names(self):
        """Names of the module's ``extern "C" __global__`` functions."""
        return tuple(self._compiled.kernels)

    def get_function(self, name):
        """The entry point ``name``; ``EmulatorKernelNotFoundError`` (a ``KeyError``) if absent."""
        kernel = self._kernels.get(name)
        if kernel is None:
            info = self._compiled.kernels.get(name)
            if info is None:
                available = ", ".join(sorted(self._compiled.kernels)) or "none"
                raise EmulatorKernelNotFoundError(
                    f"no extern \"C\" __global__ function named {name!r} in the module (entry points: {available})"
                )
            kernel = self._kernels[name] = RawKernel(self._compiled, info, self.architecture, self.schedule)
            kernel.trace_mode = (_trace.RACECHECK if self.racecheck else 0) | (_trace.PROFILE if self.profile else 0)
        return kernel


class RawKernel:
    """One entry point; call it like ``cupy.RawKernel``: ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, compiled, info, architecture=DEFAULT_ARCHITECTURE, schedule=None):
        self._compiled = compiled
        self.name = info.name
        self.parameters = info.parameters
        self.max_threads_per_block = info.max_threads or MAX_THREADS_PER_BLOCK
        self.architecture = architecture
        self.schedule = schedule
        self.trace_mode = 0  # _trace.RACECHECK | _trace.PROFILE, of a traced build
        self.last_profile = None  # the last launch's memory-traffic profile (profile=True)
        self._max_dynamic_shared_size_bytes = DEFAULT_DYNAMIC_SHARED_BYTES
        if compiled.library is not None:
            self._launch = getattr(compiled.library, f"cudeconv_emu_launch_{info.name}")
            self._launch.restype = ctypes.c_int
            self._launch.argtypes = [
                ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_void_p, ctypes.c_double, ctypes.c_uint, ctypes.c_ulonglong,
                ctypes.c_char_p, ctypes.c_ulonglong,
            ]

    @property
    def max_dynamic_shared_size_bytes(self):
        """The most dynamic shared memory a launch may ask for: 48 KiB until set higher, as
        CuPy's ``Function.max_dynamic_shared_size_bytes`` (``cudaFuncSetAttribute`` with
        ``cudaFuncAttributeMaxDynamicSharedMemorySize``), up to the architecture's opt-in limit."""
        return self._max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"max_dynamic_shared_size_bytes must be an int, got {_describe(value)}")
        limit = opt_in_shared_limit(self.architecture)
        if not 0 <= value <= limit:
            raise ValueError(
                f"max_dynamic_shared_size_bytes={value} for kernel '{self.name}' is outside 0..{limit} bytes, "
                f"the most a block may opt in to on {_architecture_name(self.architecture)} "
                "(the GPU refuses it too: CUDA_ERROR_INVALID_VALUE)"
            )
        self._max_dynamic_shared_size_bytes = int(value)

    def __repr__(self):
        signature = ", ".join(p.c_type for p in self.parameters)
        return f"<emulated kernel {self.name}({signature})>"

    def __call__(self, grid, block, args, shared_mem=0):
        grid = _dimensions(grid, "grid")
        block = _dimensions(block, "block")
        shared_mem = self._check_configuration(grid, block, shared_mem)
        values = self._check_arguments(args)
        timeout = launch_timeout()
        schedule = launch_schedule(self.schedule)
        if self._compiled.sanitize:
            self._launch_in_child(grid, block, shared_mem, values, timeout, schedule)
        elif self._compiled.traced:
            self._launch_traced(grid, block, shared_mem, values, timeout, schedule)
        else:
            self._launch_here(grid, block, shared_mem, values, timeout, schedule)

    def _launch_traced(self, grid, block, shared_mem, values, timeout, schedule):
        library, path = self._compiled.library, self._compiled.path
        with self._compiled.trace_lock:  # the tracer's settings and results are the module's
            array_indices = _trace.configure(library, self.trace_mode, values)
            try:
                self._launch_here(grid, block, shared_mem, values, timeout, schedule)
            except EmulatorLaunchError as error:
                raise EmulatorLaunchError(_trace.symbolize_message(path, str(error))) from None
            if self.trace_mode & _trace.PROFILE:
                self.last_profile = _trace.read_profile(library, path, self.parameters, array_indices)

    def _check_configuration(self, grid, block, shared_mem):
        if isinstance(shared_mem, bool) or not isinstance(shared_mem, (int, np.integer)):
            raise TypeError(f"shared_mem must be an int, got {type(shared_mem).__name__}")
        problems = []
        for axis, (g, b) in enumerate(zip(grid, block)):
            if not 1 <= g <= MAX_GRID_DIM[axis]:
                problems.append(f"grid dimension {'xyz'[axis]}={g} outside 1..{MAX_GRID_DIM[axis]}")
            if not 1 <= b <= MAX_BLOCK_DIM[axis]:
                problems.append(f"block dimension {'xyz'[axis]}={b} outside 1..{MAX_BLOCK_DIM[axis]}")
        threads = block[0] * block[1] * block[2]
        if threads > self.max_threads_per_block:
            problems.append(f"{threads} threads per block exceed the kernel's limit of {self.max_threads_per_block}")
        if shared_mem < 0:
            problems.append(f"shared_mem={shared_mem} is negative")
        if problems:
            raise EmulatorLaunchError(f"invalid launch configuration for kernel '{self.name}': " + "; ".join(problems))
        if shared_mem > self._max_dynamic_shared_size_bytes:
            limit = opt_in_shared_limit(self.architecture)
            fix = (
                f"opt in first, as on the GPU: kernel.max_dynamic_shared_size_bytes = {shared_mem} (CuPy's Function "
                "attribute; cudaFuncAttributeMaxDynamicSharedMemorySize in CUDA C++)"
                if shared_mem <= limit
                else f"that is more than the {limit} bytes a block can have on {_architecture_name(self.architecture)}"
            )
            raise EmulatorLaunchError(
                f"invalid launch configuration for kernel '{self.name}': shared_mem={shared_mem} bytes of dynamic shared "
                f"memory exceed the kernel's max_dynamic_shared_size_bytes of {self._max_dynamic_shared_size_bytes}; {fix}"
            )
        return int(shared_mem)

    def _check_arguments(self, args):
        """Arrays for pointer parameters, raw bytes for scalar ones; TypeError on any mismatch."""
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel '{self.name}': args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.parameters):
            signature = ", ".join(p.c_type for p in self.parameters)
            raise TypeError(
                f"kernel '{self.name}' takes {len(self.parameters)} arguments ({signature}), got {len(args)}"
            )
        values = []
        for index, (parameter, value) in enumerate(zip(self.parameters, args)):
            problem = _pointer_problem(parameter, value) if parameter.is_pointer else _scalar_problem(parameter, value)
            if problem:
                raise TypeError(
                    f"kernel '{self.name}' argument {index}: parameter type is '{parameter.c_type}', {problem}"
                )
            values.append(value if parameter.is_pointer else value.tobytes())
        return values

    def _launch_here(self, grid, block, shared_mem, values, timeout, schedule):
        # Like cuLaunchKernel's kernelParams: params[i] points at argument i's value, a device
        # pointer (the array's address) or the scalar's bytes; slots are 16-byte aligned.
        sizes = [8 if isinstance(v, np.ndarray) else len(v) for v in values]
        offsets = np.cumsum([0] + [(s + 15) // 16 * 16 for s in sizes])
        storage = np.zeros(int(offsets[-1]) // 8 + 2, np.uint64)
        base = (storage.ctypes.data + 15) // 16 * 16
        raw = storage.view(np.uint8)[base - storage.ctypes.data :]
        params = np.empty(max(len(values), 1), np.uint64)
        for i, value in enumerate(values):
            data = struct.pack("=Q", value.ctypes.data) if isinstance(value, np.ndarray) else value
            raw[offsets[i] : offsets[i] + len(data)] = np.frombuffer(data, np.uint8)
            params[i] = base + int(offsets[i])
        dims = (ctypes.c_uint * 6)(*grid, *block)
        error = ctypes.create_string_buffer(_ERROR_BUFFER_BYTES)
        if self._launch(dims, shared_mem, params.ctypes.data, timeout, *schedule, error, _ERROR_BUFFER_BYTES) != 0:
            raise EmulatorLaunchError(f"kernel '{self.name}' failed: {error.value.decode(errors='replace')}")

    def _launch_in_child(self, grid, block, shared_mem, values, timeout, schedule):
        arrays = [v for v in values if isinstance(v, np.ndarray)]
        regions = _memory_regions(arrays)
        request = [b"CDEMREQ3", struct.pack("=I", len(self.name)), self.name.encode()]
        request += [struct.pack("=6I", *grid, *block), struct.pack("=Q", shared_mem), struct.pack("=d", timeout)]
        request.append(struct.pack("=IQ", *schedule))
        request.append(struct.pack("=I", len(regions)))
        for start, end in regions:
            # Every byte of a region belongs to one of the arrays that make it up.
            request += [struct.pack("=Q", end - start), ctypes.string_at(start, end - start)]
        request.append(struct.pack("=I", len(values)))
        for value in values:
            if isinstance(value, np.ndarray):
                region = _region_of(regions, value)
                request.append(struct.pack("=IIQ", 0, region, value.ctypes.data - regions[region][0]))
            else:
                request += [struct.pack("=II", 1, len(value)), value]
        with tempfile.TemporaryDirectory(prefix="cudeconv-emu-") as scratch:
            request_path = Path(scratch) / "request"
            response_path = Path(scratch) / "response"
            request_path.write_bytes(b"".join(request))
            env = dict(os.environ)
            env["ASAN_OPTIONS"] = ":".join(filter(None, [_ASAN_OPTIONS, os.environ.get("ASAN_OPTIONS")]))
            env["UBSAN_OPTIONS"] = ":".join(filter(None, [_UBSAN_OPTIONS, os.environ.get("UBSAN_OPTIONS")]))
            sys.stdout.flush()  # kernel printf output goes straight to our stdout
            child_timeout = timeout + _CHILD_TIMEOUT_MARGIN_SECONDS if timeout else None
            try:
                result = subprocess.run(
                    [str(self._compiled.path), str(request_path), str(response_path)],
                    stderr=subprocess.PIPE,
                    env=env,
                    timeout=child_timeout,
                )
            except subprocess.TimeoutExpired as exc:  # subprocess.run has killed the child
                report = (exc.stderr or b"").decode(errors="replace")
                raise EmulatorLaunchError(
                    f"kernel '{self.name}' timed out under the sanitizer: its child process did not finish within "
                    f"{child_timeout:g} s (CUDECONV_EMULATOR_TIMEOUT plus {_CHILD_TIMEOUT_MARGIN_SECONDS:g} s) and was "
                    "killed; likely a deadlock or a spin-wait between threads of a block, which the emulator cannot "
                    "run (it runs the threads of a block one at a time between barriers)"
                    + (f":\n{report}" if report else ""),
                    report,
                ) from None
            report = result.stderr.decode(errors="replace")
            if result.returncode == _RUNNER_LAUNCH_FAILED:
                raise EmulatorLaunchError(f"kernel '{self.name}' failed: {report.strip()}", report)
            if result.returncode != 0:
                raise EmulatorLaunchError(
                    f"kernel '{self.name}' failed under the sanitizer (exit status {result.returncode}):\n{report}", report
                )
            if report:
                sys.stderr.write(report)
            response = np.frombuffer(response_path.read_bytes(), np.uint8)
        offsets = np.cumsum([0] + [end - start for start, end in regions])
        # Writable arrays get their bytes back; where arrays alias, each writable one gets the
        # same bytes, and read-only ones are only ever read through const pointers.
        for array in arrays:
            if array.flags.writeable and array.nbytes:
                region = _region_of(regions, array)
                offset = int(offsets[region]) + array.ctypes.data - regions[region][0]
                np.copyto(array.reshape(-1).view(np.uint8), response[offset : offset + array.nbytes])


def _architecture_name(architecture):
    return f"sm_{architecture[0]}{architecture[1]}"


def _dimensions(value, what):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if (
        not isinstance(value, (tuple, list))
        or not 1 <= len(value) <= 3
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in value)
    ):
        raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    return tuple(int(v) for v in value) + (1,) * (3 - len(value))


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"a numpy array (dtype {value.dtype}, shape {value.shape})"
    if isinstance(value, np.generic):
        return f"a numpy.{type(value).__name__} scalar"
    return f"a Python {type(value).__name__} ({value!r})"


_CHECKED_POINTEE_KINDS = set("fiubhB")


def _pointer_problem(parameter, value):
    if not isinstance(value, np.ndarray):
        return f"which takes a C-contiguous numpy array; got {_describe(value)}"
    if value.dtype.hasobject:
        return f"which takes an array of plain data; got {_describe(value)}, which holds Python object references"
    if not value.flags.c_contiguous:
        return f"which takes a C-contiguous numpy array; got a non-contiguous array (strides {value.strides}); use numpy.ascontiguousarray"
    if not parameter.pointee_const and not value.flags.writeable:
        return "which the kernel may write through; got a read-only array"
    # 1-byte pointees (char*, unsigned char*) are raw byte buffers and take any array.
    if parameter.kind in _CHECKED_POINTEE_KINDS and parameter.size > 1 and value.itemsize != parameter.size:
        return f"whose elements are {parameter.size} bytes; got {_describe(value)} with {value.itemsize}-byte elements"
    return None


def _scalar_problem(parameter, value):
    kind, size = parameter.kind, parameter.size
    if kind in "fiu":
        wanted = f"numpy.{np.dtype(f'{kind}{size}').name}"
    elif kind == "b":
        wanted = "numpy.bool_"
    elif kind == "h":
        wanted = "numpy.float16"
    elif kind == "B":
        wanted = "a 2-byte numpy.void holding bfloat16 bits"
    else:
        wanted = f"a {size}-byte numpy.void (structured scalar)"
    if isinstance(value, np.generic):
        dtype = value.dtype
        if kind in "fiu" and dtype.kind == kind and dtype.itemsize == size:
            return None
        if (kind, dtype.kind) in {("b", "b"), ("h", "f")} and dtype.itemsize == size:
            return None
        if kind in "Bv" and dtype.itemsize == size and (dtype.kind in "Vc" or dtype.name == "bfloat16"):
            return None
    return f"which takes {wanted} (passed by value); got {_describe(value)}"


def _memory_regions(arrays):
    """Sorted, disjoint ``(start, end)`` address ranges covering the arrays, merging those that
    share memory (the same array twice, a view inside another, overlapping views): the child
    gets one buffer per region, so writes through one alias are seen through the others."""
    regions = []
    for start, end in sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays):
        if regions and start < regions[-1][1]:
            regions[-1] = (regions[-1][0], max(end, regions[-1][1]))
        else:
            regions.append((start, end))
    return regions


def _region_of(regions, array):
    start = array.ctypes.data
    return next(i for i, (begin, end) in enumerate(regions) if begin <= start and start + array.nbytes <= end)
