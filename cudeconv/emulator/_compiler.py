"""Building CUDA C++ source into something the CPU can run.

One module's translation unit is the shim header, the kernel source and one export line per
``extern "C" __global__`` entry point. The entry points are found by preprocessing the unit
once with the ``__global__``/``__launch_bounds__`` keywords turned into markers, so kernels
produced by macros or hidden behind ``#if`` are seen exactly as the compiler sees them.

Builds are cached on disk by a hash of everything that affects the output, each with a record
of its size and SHA-256 that is checked before it is loaded; loaded modules are cached in
memory by their file, and hold their build against eviction (``_cache``).
"""

import ctypes
import dataclasses
import functools
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from . import _cache
from ._cache import cache_dir, record_path
from ._errors import EmulatorCompileError, EmulatorError

PACKAGE_DIR = Path(__file__).resolve().parent
SHIM_HEADER = PACKAGE_DIR / "cudeconv_emu.h"
SANITIZER_RUNNER = PACKAGE_DIR / "cudeconv_emu_runner.cpp"
TRACE_HEADER = PACKAGE_DIR / "cudeconv_emu_trace.h"
TRACE_RUNTIME = PACKAGE_DIR / "cudeconv_emu_trace.cpp"

# A traced build (racecheck/profile) keeps every load and store of the source where the source
# has it: these optimisations would merge, move or drop accesses (a load reused across a
# barrier-free stretch, stores sunk out of loops, per-thread loads combined into vectors).
_TRACE_OPTIMISATIONS_OFF = (
    "-fno-tree-fre", "-fno-tree-pre", "-fno-code-hoisting", "-fno-tree-dse", "-fno-tree-loop-im",
    "-fno-tree-dominator-opts", "-fno-tree-vectorize", "-fno-tree-slp-vectorize",
)
# ThreadSanitizer's instrumentation without its runtime: the hooks are cudeconv_emu_trace.cpp's.
_TRACE_INSTRUMENTATION = (
    "-fsanitize=thread", "-Wno-tsan", "--param=tsan-instrument-func-entry-exit=0", "-fno-exceptions",
    "-DCUDECONV_EMU_TRACE=1",
)

# File name g++ reports for the kernel source unless the source carries its own #line.
SOURCE_NAME = "cudeconv_kernel.cu"
_SOURCE_MARKER = "__cudeconv_emu_source_begins__"
_GLOBAL_MARKER = "__cudeconv_emu_global__"
_LAUNCH_BOUNDS_MARKER = "__cudeconv_emu_launch_bounds__"

# NVRTC options that have no meaning for a host build (architecture, code generation, fast-math
# and diagnostics controls); matched on the part before '='.
_IGNORED_NVRTC_OPTIONS = frozenset(
    """
    -arch --gpu-architecture -use_fast_math --use_fast_math -lineinfo --generate-line-info
    -G --device-debug -rdc --relocatable-device-code -ewp --extensible-whole-program
    -dopt --dopt -ftz --ftz -prec-div --prec-div -prec-sqrt --prec-sqrt -fmad --fmad
    -restrict --restrict -maxrregcount --maxrregcount -default-device
    --device-as-default-execution-space -w --disable-warnings -diag-suppress --diag-suppress
    -diag-error --diag-error -diag-warn --diag-warn --display-error-number
    --no-display-error-number -dlto --dlto -minimal --minimal -split-compile --split-compile
    -builtin-move-forward --builtin-move-forward -builtin-initializer-list
    --builtin-initializer-list --modify-stack-limit -err-no --no-source-include
    -no-source-include --device-int128 -device-int128 -Werror --Werror -jump-table-density
    --jump-table-density -time --time -fdevice-time-trace --fdevice-time-trace
    """.split()
)
_OLDER_STANDARDS = {"c++03", "c++11", "c++14", "c++17", "gnu++11", "gnu++14", "gnu++17"}

_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\b([^;{}]*?)\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")


def compiler_command():
    """The host C++ compiler: ``$CUDECONV_EMULATOR_CXX`` (split like a shell would), else g++."""
    return tuple(shlex.split(os.environ.get("CUDECONV_EMULATOR_CXX", "g++")))


@functools.lru_cache(maxsize=None)
def _compiler_identity(command):
    try:
        result = subprocess.run([*command, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmulatorCompileError(
            f"the CUDA emulator needs a host C++17 compiler; running {' '.join(command)!r} failed: {exc}"
        ) from exc
    return f"{shutil.which(command[0]) or command[0]}\n{result.stdout}"


def compiler_unavailable_reason():
    """None when the host compiler runs, else why it does not."""
    try:
        _compiler_identity(compiler_command())
    except EmulatorCompileError as exc:
        return str(exc)
    return None


def compiler_description():
    """The compiler and CUDA headers the emulator builds with, in one line."""
    command = compiler_command()
    compiler = compiler_unavailable_reason()
    if compiler is None:
        path, version = _compiler_identity(command).splitlines()[:2]
        compiler = f"{shlex.join([path, *command[1:]])}: {version}"
    return f"{compiler}; CUDA headers: {find_cuda_include() or 'none found (no __half/__nv_bfloat16)'}"


def find_cuda_include():
    """Directory holding the CUDA toolkit's ``cuda_fp16.h``, or None.

    Looked up in order: ``$CUDECONV_EMULATOR_CUDA_INCLUDE`` (set it empty to use no toolkit
    headers), ``$CUDA_PATH``, ``$CUDA_HOME``, the toolkit of the ``nvcc`` on PATH (also when it
    is a small wrapper script that execs the real one), ``/usr/local/cuda``, the newest
    ``/usr/local/cuda-*``, and the headers shipped in NVIDIA's pip wheels (``nvidia.*``).
    """
    explicit = os.environ.get("CUDECONV_EMULATOR_CUDA_INCLUDE")
    if explicit is not None:
        return explicit or None
    candidates = [Path(os.environ[var]) / "include" for var in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(var)]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
        candidates.extend(Path(root) / "include" for root in _wrapped_toolkit_roots(Path(nvcc)))
    candidates.append(Path("/usr/local/cuda/include"))
    candidates.extend(Path(p) for p in sorted(glob.glob("/usr/local/cuda-*/include"), key=_version_key, reverse=True))
    candidates.extend(_wheel_include_dirs())
    for candidate in candidates:
        if (candidate / "cuda_fp16.h").is_file():
            return str(candidate)
    return None


def _wrapped_toolkit_roots(nvcc):
    try:
        if nvcc.stat().st_size > 4096:
            return []
        text = nvcc.read_text(errors="replace")
    except OSError:
        return []
    return re.findall(r"(/\S+)/bin/nvcc\b", text)


def _version_key(path):
    return [int(part) for part in re.findall(r"\d+", path)]


def _wheel_include_dirs():
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for base in spec.submodule_search_locations for p in sorted(glob.glob(f"{base}/*/include"))]


def translate_options(options):
    """Map CuPy/NVRTC-style options to g++ arguments.

    Honoured: ``-D``/``--define-macro``, ``-U``/``--undefine-macro``, ``-I``/``--include-path``
    (each also as two tokens), ``-std``/``--std`` (standards older than C++17 become C++17,
    which the shim needs). NVRTC-only options are dropped; anything else is dropped with a
    warning.
    """
    if isinstance(options, str):
        options = (options,)
    args = []
    standard = "c++17"
    tokens = list(options)
    i = 0
    while i < len(tokens):
        option = tokens[i]
        if not isinstance(option, str):
            raise TypeError(f"compiler options must be strings, got {option!r}")
        i += 1
        matched = re.fullmatch(
            r"(-D|--define-macro|-U|--undefine-macro|-I|--include-path)(?:=?(.*))?", option, re.DOTALL
        )
        if matched:
            flag, value = matched.groups()
            if not value:
                if i == len(tokens):
                    raise ValueError(f"compiler option {option!r} needs a value")
                value = tokens[i]
                i += 1
            args.append({"-D": "-D", "--define-macro": "-D", "-U": "-U", "--undefine-macro": "-U"}.get(flag, "-I") + value)
            continue
        if option.startswith(("-std=", "--std=")):
            requested = option.split("=", 1)[1]
            standard = "c++17" if requested in _OLDER_STANDARDS else requested
            continue
        if option.split("=", 1)[0] in _IGNORED_NVRTC_OPTIONS:
            continue
        warnings.warn(f"cudeconv emulator: ignoring unsupported compiler option {option!r}", stacklevel=4)
    return [f"-std={standard}", *args]


def rewrite_extern_shared(source):
    """``extern __shared__ T name[];`` becomes a declaration of the shim's dynamic shared buffer.

    C++ has no way to express CUDA's unsized shared array, so the declaration is replaced in
    the text (keeping its line count) by a thread-local array of unknown size whose assembler
    name is the buffer's: every such declaration aliases the one per-thread (so per-block)
    buffer, at file scope as well as in a function, and, as in CUDA, all declarations of one
    name must agree on the type. Only the source itself is rewritten, not headers it includes.
    """

    def replace(match):
        text = (
            f'extern thread_local __attribute__((visibility("hidden"))){match.group(1)}{match.group(2)}[]'
            ' __asm__("cudeconv_emu_dynamic_shared");'
        )
        return text + "\n" * (match.group(0).count("\n") - text.count("\n"))

    return _EXTERN_SHARED.sub(replace, source)


@dataclasses.dataclass(frozen=True)
class EntryPoint:
    name: str
    max_threads_expression: str  # first __launch_bounds__ argument, "0" without one


_TOKENS = re.compile(
    r'(?P<extern_c>\bextern\s*"C"\s*(?P<block>\{)?)'
    r'|(?P<literal>"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\')'
    rf"|(?P<global>\b{_GLOBAL_MARKER}\b)"
    r"|(?P<open>\{)|(?P<close>\})|(?P<end>;)"
)


def find_entry_points(preprocessed):
    """``extern "C" __global__`` functions in preprocessor output made with the markers on."""
    start = preprocessed.find(_SOURCE_MARKER)
    text = preprocessed[start:] if start >= 0 else preprocessed
    found = {}
    braces = []  # True for the brace of an extern "C" { ... } block
    pending_extern_c = False
    for token in _TOKENS.finditer(text):
        kind = token.lastgroup if token.lastgroup != "block" else "extern_c"
        if kind == "extern_c":
            if token.group("block"):
                braces.append(True)
            else:
                pending_extern_c = True
        elif kind == "open":
            braces.append(False)
            pending_extern_c = False
        elif kind == "close":
            if braces:
                braces.pop()
            pending_extern_c = False
        elif kind == "end":
            pending_extern_c = False
        elif kind == "global" and (pending_extern_c or any(braces)):
            entry = _parse_kernel_head(text, token.end())
            if entry and (entry.name not in found or entry.max_threads_expression != "0"):
                found[entry.name] = entry
    return list(found.values())


def _balanced(text, open_index):
    """Index just past the parenthesis matching the one at ``open_index``."""
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _parse_kernel_head(text, position):
    head_end = min((i for i in (text.find("{", position), text.find(";", position)) if i >= 0), default=len(text))
    head = text[position:head_end]
    max_threads = "0"
    bounds = head.find(_LAUNCH_BOUNDS_MARKER)
    if bounds >= 0:
        open_paren = head.index("(", bounds)
        close = _balanced(head, open_paren)
        max_threads = _first_argument(head[open_paren + 1 : close - 1])
        head = head[:bounds] + head[close:]
    while (attribute := re.search(r"__attribute__\s*\(", head)) is not None:
        head = head[: attribute.start()] + head[_balanced(head, attribute.end() - 1) :]
    name = re.search(r"([A-Za-z_]\w*)\s*\(", head)
    return EntryPoint(name.group(1), max_threads) if name else None


def _first_argument(arguments):
    depth = 0
    for i, char in enumerate(arguments):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            return arguments[:i].strip()
    return arguments.strip()


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """Everything that determines a build's output."""

    source: str
    user_args: tuple
    sanitize: bool
    compiler: tuple
    cuda_include: str
    trace: bool = False  # instrumented for racecheck and the profile

    def __post_init__(self):
        if self.sanitize and self.trace:
            raise ValueError("sanitize=True cannot be combined with racecheck or profile")

    def key(self):
        digest = hashlib.sha256()
        for part in (
            json.dumps(dataclasses.asdict(self), sort_keys=True),
            _compiler_identity(self.compiler),
            SHIM_HEADER.read_text(),
            SANITIZER_RUNNER.read_text() if self.sanitize else "",
            TRACE_HEADER.read_text() + TRACE_RUNTIME.read_text() if self.trace else "",
            Path(__file__).read_text(),  # generated code and flags live here
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()[:40]

    def flags(self):
        flags = [*self.user_args, "-fno-strict-aliasing", "-fdiagnostics-color=never", "-Wno-unknown-pragmas"]
        flags += ["-fvisibility=hidden", "-pthread", "-I", str(PACKAGE_DIR)]
        if self.cuda_include:
            flags += ["-isystem", self.cuda_include, "-DCUDECONV_EMU_HAVE_CUDA_HEADERS=1"]
        # No contraction of a*b+c into fused multiply-adds (nvcc's default): results stay the same
        # on every host, whatever FMA support it has (see docs/emulator.md, Floating point).
        flags.append("-ffp-contract=off")
        if self.sanitize:
            flags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
        else:
            flags += ["-O2", "-fPIC", "-shared", "-fopenmp", "-Wl,-z,defs"]
        if self.trace:  # line tables for the reports' file:line
            flags += ["-g", *_TRACE_OPTIMISATIONS_OFF]
        return flags

    def build_commands(self, unit, output):
        """Compiler invocations that turn ``unit`` into ``output``, run in the scratch directory.

        A plain build checks the alignment of every access through a pointer as the GPU does
        (UBSan's alignment instrumentation, reported by handlers in the shim header): compiled
        to an object first and linked without the option, so that the module does not need
        UBSan's runtime library. A sanitizer build has that runtime and reports through it.
        """
        compiler = [*self.compiler, *self.flags(), f"-ffile-prefix-map={Path(unit).parent}=."]
        if self.sanitize:
            return [[*compiler, Path(unit).name, "-o", Path(output).name]]
        obj = Path(output).with_suffix(".o").name
        check = ["-fsanitize=alignment", "-fno-sanitize-recover=alignment", "-DCUDECONV_EMU_CHECK_ALIGNMENT=1"]
        if not self.trace:
            return [[*compiler, *check, "-c", Path(unit).name, "-o", obj], [*compiler, obj, "-o", Path(output).name]]
        # The tracer is linked first: where both objects carry a copy of the same template code,
        # the linker keeps the first, uninstrumented one, so the hooks never call back into themselves.
        runtime = "trace_runtime.o"
        return [
            [*compiler, "-c", str(TRACE_RUNTIME), "-o", runtime],
            [*compiler, *check, *_TRACE_INSTRUMENTATION, "-c", Path(unit).name, "-o", obj],
            [*compiler, runtime, obj, "-o", Path(output).name],
        ]

    def translation_unit(self, entry_points):
        """The unit to compile; ``entry_points=None`` gives the discovery variant."""
        parts = ['#include "cudeconv_emu.h"\n']
        if entry_points is None:
            parts.append(f"{_SOURCE_MARKER}\n")
        parts.append(f'#line 1 "{SOURCE_NAME}"\n{rewrite_extern_shared(self.source)}\n')
        if entry_points is not None:
            parts.append('#line 1 "<cudeconv-emulator-entry-points>"\n')
            parts += [f"CUDECONV_EMU_EXPORT_KERNEL({e.name}, ({e.max_threads_expression}))\n" for e in entry_points]
            if self.sanitize:
                parts.append('#include "cudeconv_emu_runner.cpp"\n')
        return "".join(parts)


def _run_compiler(arguments, plan, cwd):
    # C locale: plain ASCII quotes in diagnostics, whatever the user's locale.
    result = subprocess.run(arguments, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}, cwd=cwd)
    if result.returncode != 0:
        message = f"compiling kernel source for the CPU emulator failed:\n{result.stderr.strip()}"
        # A kernel named like a C library function (div, fadd, index, round, ...) either
        # conflicts with its declaration or overloads it, so that no single entry point exists.
        clash = re.search(r"conflicting declaration of C function '[^']*?\b(\w+)\(", result.stderr) or re.search(
            r"unable to deduce 'auto' from '&\s*(\w+)'", result.stderr
        )
        if clash:
            message += (
                f"\n(the kernel name {clash.group(1)!r} is also the name of a C library function, which the "
                "emulator's host build declares; rename the kernel)"
            )
        if not plan.cuda_include and re.search(r"cuda_(fp16|bf16)\.h|vector_types\.h", result.stderr):
            message += (
                "\n(no CUDA toolkit headers were found; set CUDA_PATH or CUDECONV_EMULATOR_CUDA_INCLUDE "
                "to a directory containing cuda_fp16.h)"
            )
        message += f"\ncommand: {shlex.join(arguments)}"
        raise EmulatorCompileError(message)
    return result.stdout


def artifact_path(plan):
    return cache_dir() / (plan.key() + ("-sanitize.bin" if plan.sanitize else "-trace.so" if plan.trace else ".so"))


def _file_record(path):
    """``"<size> <sha256>"`` of a file's contents."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return f"{size} {digest.hexdigest()}\n"


def _intact(artifact):
    try:
        return record_path(artifact).read_text() == _file_record(artifact)
    except OSError:
        return False


def discard(artifact):
    """Removes a cached build and its record."""
    for path in (artifact, record_path(artifact)):
        path.unlink(missing_ok=True)


def build(plan):
    """Path of the built module for ``plan``, compiling it unless the disk cache has it intact.
    The caller holds the build (``_cache.hold``).

    A cached file that does not match its record (truncated, corrupt, or from before records)
    is deleted and built again: loading a truncated shared object can crash the process.
    """
    artifact = artifact_path(plan)
    if _intact(artifact):
        return artifact
    limit = _cache.cache_limit()  # a bad setting fails before the compiler runs
    discard(artifact)
    artifact.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=artifact.parent, prefix=".build-") as scratch:
        # Relative names and the prefix map (for debug information): no build's output depends
        # on where it was made, so concurrent builds of one key write identical files.
        unit = Path(scratch) / "module.cpp"
        unit.write_text(plan.translation_unit(None))
        preprocessed = _run_compiler([*plan.compiler, *plan.flags(), "-E", "-DCUDECONV_EMU_DISCOVER", unit.name], plan, scratch)
        unit.write_text(plan.translation_unit(find_entry_points(preprocessed)))
        output = Path(scratch) / artifact.name
        for command in plan.build_commands(unit, output):
            _run_compiler(command, plan, scratch)
        record = Path(scratch) / record_path(artifact).name
        record.write_text(_file_record(output))
        # Each rename is atomic; the record goes first, so whoever finds the new file finds its record.
        os.replace(record, record_path(artifact))
        os.replace(output, artifact)
    _cache.evict(limit)  # the caller holds this build, so it stays whatever the limit
    return artifact


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One kernel parameter as the compiler deduced it."""

    is_pointer: bool
    pointee_const: bool
    kind: str  # f/i/u: float/signed/unsigned, b: bool, h: __half, B: __nv_bfloat16, v: other
    size: int  # of the scalar, or of the pointee (0 when unknown, e.g. void*)
    c_type: str


@dataclasses.dataclass(frozen=True)
class KernelInfo:
    name: str
    max_threads: int  # from __launch_bounds__, 0 when absent
    parameters: tuple


def parse_description(text):
    kernels = {}
    for line in text.splitlines():
        name, max_threads, signature = line.split("\t")
        parameters = []
        for entry in filter(None, signature.split(";")):
            pointer, constness, kind, size, c_type = entry.split("|", 4)
            parameters.append(Parameter(pointer == "P", constness == "c", kind, int(size), c_type))
        kernels[name] = KernelInfo(name, int(max_threads), tuple(parameters))
    return kernels


@dataclasses.dataclass
class CompiledModule:
    path: Path
    sanitize: bool
    kernels: dict
    library: object  # ctypes.CDLL; None for a sanitizer build, which runs as a child process
    hold: object  # _cache.BuildHold, kept while the module may be used: for the process's life
    traced: bool = False  # racecheck/profile build: one traced launch at a time (trace_lock)
    trace_lock: object = dataclasses.field(default_factory=threading.Lock)


_loaded = {}
_loaded_lock = threading.Lock()


def load(source, options, sanitize, trace=False):
    """The compiled module for ``source``: one object per build file per process. ``trace``
    instruments it for racecheck and the profile."""
    if not isinstance(source, str):
        raise TypeError(f"kernel source must be a str, got {type(source).__name__}")
    plan = BuildPlan(
        source, tuple(translate_options(options)), bool(sanitize), compiler_command(), find_cuda_include() or "", bool(trace)
    )
    with _loaded_lock:
        path = artifact_path(plan)
        module = _loaded.get(path)
        if module is None:
            hold = _cache.hold(path)
            try:
                build(plan)
                _cache.touch(path)
                try:
                    module = _open(path, plan, hold)
                except (OSError, EmulatorError):
                    # It matched its record yet does not load (a record written for a damaged
                    # file, say): build it afresh, once.
                    discard(path)
                    module = _open(build(plan), plan, hold)
            except BaseException:
                hold.release()
                raise
            _loaded[path] = module
        return module


def _open(path, plan, hold):
    if plan.sanitize:
        result = subprocess.run([str(path), "--describe"], capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulatorError(f"sanitizer build {path} did not start:\n{result.stderr}")
        return CompiledModule(path, True, parse_description(result.stdout), None, hold)
    library = ctypes.CDLL(str(path))
    library.cudeconv_emu_describe.restype = ctypes.c_char_p
    kernels = parse_description(library.cudeconv_emu_describe().decode())
    return CompiledModule(path, False, kernels, library, hold, plan.trace)
