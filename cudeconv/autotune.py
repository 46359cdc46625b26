"""Autotuning of ``algorithm="auto"``: time the kernels a pass can run, keep the fastest, on disk.

A fixed heuristic (the launch layer's ``kernel_path``) cannot be right on every GPU and shape. With
autotuning on — :func:`set_autotune`, ``autotune=True`` per call or per layer, or
``$CUDECONV_AUTOTUNE=1`` — the first call of a pass (forward, grad_input, grad_weight) for a *key*
times its deterministic candidates (``KernelBackend.candidate_paths``: the GEMM at a few split
counts, the direct kernel, the depthwise kernel where it applies; never the atomic scatter) and
keeps the fastest; every later call with that key runs it. The key is the device (name, compute
capability, SM count), the versions of everything that builds or runs the kernels (driver, CUDA
runtime, NVRTC, CuPy, cudeconv; the host compiler on the emulator), a hash of the kernel sources,
and the call: pass, dtype, precision, memory format, geometry and the operands' alignment.

Timing (:class:`Tuner`): each candidate runs once untimed (compiling its module, which is not
timed), then ``repeats`` times on the clock — CUDA events on the current stream on "cuda", wall
time on the emulator, any object with ``seconds(fn, calls)`` in tests — and its median counts. The
heuristic's kernel is timed first and wins ties; candidates stop once the key's timed calls have
taken its time ``budget`` (compiles do not count), and one whose workspace and output would take
more than ``max_extra_bytes`` is not run. The tuning call returns the winner's own output. No tuning happens while a CUDA graph is being
captured (the cached choice, else the heuristic, serves), and past ``max_keys`` tuned keys in one
process new keys take the heuristic, so a process meeting endless shapes does not tune forever.

The cache (:class:`CacheFile`): one JSON file per device in ``$CUDECONV_AUTOTUNE_CACHE`` (default
``~/.cache/cudeconv/autotune``), changed under an ``fcntl`` lock by read, merge and atomic rename,
so processes tuning different keys all keep theirs; for a key already on disk the file's choice
wins and is adopted. A corrupt or foreign file is ignored with a warning. The choice is a function
of the key and the cache only: two runs sharing a cache run the same kernels and give bitwise the
same results. :func:`choices_to_share` and :func:`adopt_choices` carry one process's choices to
others (``cudeconv.distributed.DataParallel.share_autotune``).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from ._files import write_atomically
from ._loader import kernel_source
from .backends.gemm_plan import GEMM_OUTPUT_SHAPE

try:
    import fcntl
except ImportError:  # Windows: writes are still atomic, but two writers may drop each other's entries
    fcntl = None

ENVIRONMENT_VARIABLE = "CUDECONV_AUTOTUNE"
CACHE_VARIABLE = "CUDECONV_AUTOTUNE_CACHE"
CACHE_FORMAT, CACHE_VERSION = "cudeconv-autotune", 1
PASSES = ("forward", "grad_input", "grad_weight")
MAX_TUNED_KEYS = 64       # keys one process tunes; later new keys take the heuristic
BUDGET_SECONDS = 2.0      # wall time of one key's timed calls (candidates after it are not run)
REPEATS = 3               # timed calls per candidate, after one untimed call
MAX_EXTRA_BYTES = 512 * 2**20  # a candidate's workspace plus the output held while others run
ALIGNMENT_CAP = 16        # bytes: the widest vector load of the kernels


def _parse_switch(text):
    if text in ("", "0", "false", "off"):
        return False
    if text in ("1", "true", "on"):
        return True
    warnings.warn(f"${ENVIRONMENT_VARIABLE}={text!r} is neither 1 nor 0: autotuning stays off", stacklevel=3)
    return False


_enabled = _parse_switch(os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower())


def set_autotune(enabled):
    """Turn autotuning of ``algorithm="auto"`` on or off where ``autotune=None``; returns the previous
    setting. The default is ``$CUDECONV_AUTOTUNE`` (1 on, else off)."""
    global _enabled
    previous, _enabled = _enabled, check_autotune(enabled, allow_none=False)
    return previous


def get_autotune() -> bool:
    return _enabled


def check_autotune(autotune, allow_none=True, arg="autotune"):
    if (autotune is None and allow_none) or isinstance(autotune, bool):
        return autotune
    raise TypeError(f"{arg} must be {'None, ' if allow_none else ''}True or False, got {autotune!r}")


def resolve_autotune(autotune) -> bool:
    """``autotune`` (a per-call or per-layer setting), or the global one for None."""
    return _enabled if check_autotune(autotune) is None else autotune


def cache_dir() -> Path:
    """Where the autotuning cache lives: ``$CUDECONV_AUTOTUNE_CACHE``, else ``~/.cache/cudeconv/autotune``."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "cudeconv" / "autotune")


@functools.lru_cache(maxsize=None)
def kernel_sources_hash() -> str:
    """SHA-256 of every kernel source (headers inlined) and the launch layer's compile options: a
    changed kernel makes every entry tuned with the old one stale."""
    from .backends.kernel_backend import COMPILE_OPTIONS, SOURCES

    digest = hashlib.sha256(repr(COMPILE_OPTIONS).encode())
    for name in SOURCES:
        digest.update(f"\0{name}\0".encode() + kernel_source(name).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _versions(backend_name: str) -> dict:
    """The versions of what builds and runs the kernels on ``backend_name``."""
    from . import __version__

    if backend_name == "cuda":
        import cupy

        runtime = cupy.cuda.runtime
        return {"cudeconv": __version__, "cupy": cupy.__version__, "driver": runtime.driverGetVersion(),
                "cuda_runtime": runtime.runtimeGetVersion(),
                "nvrtc": ".".join(map(str, cupy.cuda.nvrtc.getVersion()))}
    from .emulator import compiler_description

    return {"cudeconv": __version__, "numpy": np.__version__, "compiler": compiler_description()}


def _alignment(array) -> int:
    """The largest power of two, up to ALIGNMENT_CAP, that divides ``array``'s address."""
    address = array.data.ptr if hasattr(array.data, "ptr") else array.__array_interface__["data"][0]
    return min(ALIGNMENT_CAP, address & -address) if address else ALIGNMENT_CAP


def call_key(pass_: str, geom, dtype, precision: str, memory_format: str, operands) -> dict:
    """The part of a key that a call decides (see the module docstring)."""
    return {"pass": pass_, "dtype": np.dtype(dtype).name, "precision": precision, "memory_format": memory_format,
            "geometry": {field: getattr(geom, field) for field in (
                "batch", "in_channels", "out_channels", "groups", "in_size", "kernel_size", "out_size", "stride",
                "padding", "dilation")},
            "alignment": min((_alignment(a) for a in operands if a is not None), default=ALIGNMENT_CAP)}


def _describe(path) -> dict:
    return {"kind": path.kind, "entry": path.entry, "parts": path.parts}


def _stale(key: str, environment: dict) -> bool:
    """Whether the entry of ``key`` is of ``environment`` but older kernel sources (it can never match
    again) or unreadable."""
    try:
        fields = json.loads(key)
    except ValueError:
        return True
    return isinstance(fields, dict) and fields.get("sources") != environment["sources"] and all(
        fields.get(name) == value for name, value in environment.items() if name != "sources")


class CacheFile:
    """One device's JSON file of choices: ``{"format", "version", "device", "entries": {key: entry}}``,
    each entry ``{"choice": {kind, entry, parts}, "candidates": [...]}``."""

    def __init__(self, path: Path, device: dict):
        self.path = Path(path)
        self.device = device
        self._warned = set()

    def _warn(self, why):
        if why not in self._warned:
            self._warned.add(why)
            warnings.warn(f"autotuning cache {self.path}: {why}; ignoring it", stacklevel=4)

    def read(self) -> dict:
        """The file's entries; {} when it is missing, and with a warning when it is corrupt or foreign."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            self._warn(f"cannot be read ({type(exc).__name__}: {exc})")
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            self._warn(f"not valid JSON ({exc})")
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
            self._warn(f"not a {CACHE_FORMAT} file of version {CACHE_VERSION}")
            return {}
        if data.get("device") != self.device or not isinstance(data.get("entries"), dict):
            self._warn(f"made for another device ({data.get('device')!r}) or without entries")
            return {}
        return {key: entry for key, entry in data["entries"].items()
                if isinstance(entry, dict) and isinstance(entry.get("choice"), dict)}

    @contextlib.contextmanager
    def _locked(self):
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def merge(self, new_entries: dict, stale=lambda key: False) -> dict:
        """Add ``new_entries`` to the file under its lock (entries already there win; ``stale`` keys
        are dropped) and return what it then holds; on an OSError, a warning and the entries alone."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                entries = {key: entry for key, entry in self.read().items() if not stale(key)}
                entries = {**new_entries, **entries}
                text = json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "device": self.device,
                                   "entries": entries}, indent=1)
                write_atomically(self.path, lambda file: file.write(text.encode()))
                return entries
        except OSError as exc:
            self._warn(f"cannot be written ({type(exc).__name__}: {exc}); choices kept in this process only")
            return dict(new_entries)


def _default_is_capturing(backend_name):
    if backend_name != "cuda":
        return lambda: False

    def is_capturing():
        import cupy

        try:
            return bool(cupy.cuda.get_current_stream().is_capturing())
        except Exception:  # the query itself fails inside some captures: do not tune
            return True
    return is_capturing


def _default_clock(backend_name):
    from .timing import CpuClock, CudaEventClock

    return CudaEventClock() if backend_name == "cuda" else CpuClock()


class Tuner:
    """Chooses, tunes and remembers the kernel of each key (see the module docstring).

    ``clock``: an object with ``seconds(fn, calls)`` (None: CUDA events on "cuda", wall time on the
    emulator); ``now``: the wall clock the ``budget`` (seconds per key, of timed calls: compiles
    and untimed first calls not counted) is counted on; ``repeats``:
    timed calls per candidate; ``max_keys``: keys tuned per process; ``max_extra_bytes``: the most
    memory a candidate besides the heuristic may take; ``is_capturing``: a function saying whether a
    CUDA graph is being captured (None: CuPy's current stream on "cuda", never on the emulator);
    ``candidates``: a function (impl, geom, pass_, dtype, precision) -> KernelPaths, heuristic
    first (None: ``impl.candidate_paths``); ``sources_hash``: the kernels' hash (None: computed)."""

    def __init__(self, *, cache_dir=None, clock=None, now=time.perf_counter, budget=BUDGET_SECONDS,
                 repeats=REPEATS, max_keys=MAX_TUNED_KEYS, max_extra_bytes=MAX_EXTRA_BYTES, is_capturing=None,
                 candidates=None, sources_hash=None):
        if not (isinstance(repeats, int) and repeats >= 1):
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        if not (isinstance(max_keys, int) and max_keys >= 0):
            raise ValueError(f"max_keys must be a non-negative int, got {max_keys!r}")
        if not budget >= 0:
            raise ValueError(f"budget must be zero or more seconds, got {budget!r}")
        self._cache_dir, self.clock, self.now, self.budget = cache_dir, clock, now, budget
        self.repeats, self.max_keys, self.max_extra_bytes = repeats, max_keys, max_extra_bytes
        self.is_capturing, self.candidates, self._sources_hash = is_capturing, candidates, sources_hash
        self.tuned_keys = 0
        self.choices = {}   # (file name, key) -> choice, from the files and from tuning
        self.pinned = {}    # (file name, key) -> choice adopted from another process: wins over the file
        self.records = {}   # (file name, key) -> the entry this process tuned (candidates and times)
        self._files = {}
        self._resolved = {}  # (backend, device, pass, geometry, dtype, ...) -> KernelPath

    # -- keys and files -------------------------------------------------------------------------
    def environment(self, impl, device) -> dict:
        """The device and versions part of a key."""
        return {"backend": impl.name, "device": device.name, "compute_capability": list(device.compute_capability),
                "sm_count": device.sm_count, "versions": _versions(impl.name),
                "sources": self._sources_hash or kernel_sources_hash()}

    def cache_file(self, environment) -> CacheFile:
        device = {field: environment[field] for field in ("backend", "device", "compute_capability", "sm_count")}
        slug = re.sub(r"[^A-Za-z0-9.]+", "_", device["device"]).strip("_")
        name = (f"{device['backend']}-{slug}-sm{''.join(map(str, device['compute_capability']))}"
                f"-{device['sm_count']}sms.json")
        path = Path(self._cache_dir or cache_dir()) / name
        cache = self._files.get(path)
        if cache is None:
            cache = self._files[path] = CacheFile(path, device)
            for key, entry in cache.read().items():
                self.choices.setdefault((name, key), entry["choice"])
        return cache

    # -- running a pass -------------------------------------------------------------------------
    def run(self, impl, pass_, operands, geom, precision, memory_format="contiguous"):
        """``pass_`` on ``operands`` (as ``KernelBackend.run_path`` takes them) by the key's choice:
        adopted, cached, or tuned now; else (no tuning allowed now) the heuristic's."""
        with impl.on_device(operand=operands[0]):
            device, call, resolved = self._call(impl, pass_, operands, geom, precision, memory_format)
            path = self._resolved.get(resolved)
            if path is None:
                path, output = self._resolve(impl, device, pass_, operands, geom, precision, call, resolved)
                if output is not None:  # tuned just now: the winner's own output
                    return output
            return impl.run_path(path, pass_, operands, geom, precision)

    @staticmethod
    def _call(impl, pass_, operands, geom, precision, memory_format):
        """(device, call_key, the in-process key of the call's resolved kernel): that key finds a known
        choice without building the full key, so a call's own overhead stays small."""
        device, dtype = impl.device_descriptor(operands[0]), operands[1].dtype
        call = call_key(pass_, geom, dtype, precision, memory_format, operands)
        return device, call, (impl.name, device, pass_, geom, dtype, precision, memory_format, call["alignment"])

    def tune(self, impl, pass_, operands, geom, precision, memory_format="contiguous") -> dict:
        """Run ``pass_`` once as :meth:`run` does and say how its kernel was chosen (for ``cudeconv
        tune``): ``{"choice": {kind, entry, parts}, "candidates": their times or why not run, or
        None when the choice was not tuned now}``."""
        before = set(self.records)
        self.run(impl, pass_, operands, geom, precision, memory_format)
        tuned = [slot for slot in self.records if slot not in before]
        if tuned:
            return {"choice": self.choices[tuned[0]], "candidates": self.records[tuned[0]]["candidates"]}
        path = (self._resolved.get(self._call(impl, pass_, operands, geom, precision, memory_format)[2])
                or impl.kernel_path(geom, pass_, "auto", operands[1].dtype, precision))
        return {"choice": _describe(path), "candidates": None}

    def _resolve(self, impl, device, pass_, operands, geom, precision, call, resolved):
        """(KernelPath, None) of the key's adopted or cached choice, or of the heuristic where tuning
        is not allowed now; (the winner's KernelPath, its output) when tuned now."""
        environment = self.environment(impl, device)
        file = self.cache_file(environment)
        slot = (file.path.name, json.dumps({**environment, **call}, sort_keys=True))
        paths = (self.candidates or (lambda impl, *args: impl.candidate_paths(*args)))(
            impl, geom, pass_, operands[1].dtype, precision)
        choice = self.pinned.get(slot) or self.choices.get(slot)
        if choice is not None:
            path = next((p for p in paths if _describe(p) == choice), None)
            if path is not None:
                self._resolved[resolved] = path
                return path, None
            warnings.warn(f"the autotuned {pass_} kernel {choice} cannot run this problem any more; "
                          f"the heuristic's runs", stacklevel=4)
        elif self.tuned_keys >= self.max_keys:
            self._resolved[resolved] = paths[0]  # for good: the count of tuned keys never falls
        elif not (self.is_capturing or _default_is_capturing(impl.name))():
            output, winner = self._tune(impl, pass_, operands, geom, precision, paths, file, slot, environment)
            self._resolved[resolved] = winner
            return winner, output
        return paths[0], None

    def _tune(self, impl, pass_, operands, geom, precision, paths, file, slot, environment):
        clock = self.clock or _default_clock(impl.name)
        output_bytes = math.prod(getattr(geom, GEMM_OUTPUT_SHAPE[pass_])) * operands[1].dtype.itemsize
        spent, leader, leader_output, report = 0.0, None, None, []
        for index, path in enumerate(paths):
            described = _describe(path)
            if index and spent > self.budget:
                report.append({**described, "skipped": "time budget spent"})
                continue
            if index and path.workspace_bytes + output_bytes > self.max_extra_bytes:
                report.append({**described, "skipped": f"needs {path.workspace_bytes + output_bytes} bytes"})
                continue
            run = lambda path=path: impl.run_path(path, pass_, operands, geom, precision)  # noqa: E731
            try:
                output = run()  # compiles its module: neither timed nor counted in the budget
                start = self.now()
                seconds = statistics.median(clock.seconds(run, 1) for _ in range(self.repeats))
                spent += self.now() - start
            except Exception as exc:
                if not index:
                    raise  # the heuristic's own failure is the call's
                report.append({**described, "skipped": f"{type(exc).__name__}: {exc}"})
                continue
            report.append({**described, "seconds": seconds})
            if leader is None or seconds < leader[1]:
                leader, leader_output = (path, seconds), output
            del output
        self.tuned_keys += 1
        entry = {"choice": _describe(leader[0]), "candidates": report}
        self.records[slot] = entry
        merged = file.merge({slot[1]: entry}, lambda key: _stale(key, environment))
        self.choices[slot] = merged.get(slot[1], entry)["choice"]
        # another process's choice for this key, on disk first, is the one run from now on
        winner = next((p for p in paths if _describe(p) == self.choices[slot]), leader[0])
        return leader_output, winner

    # -- sharing between processes --------------------------------------------------------------
    def shareable(self) -> dict:
        """Every choice this process knows, adopted ones winning: ``{file name: {key: choice}}``."""
        shared = {}
        for (name, key), choice in {**self.choices, **self.pinned}.items():
            shared.setdefault(name, {})[key] = choice
        return shared

    def adopt(self, shared: dict):
        """Run ``shared``'s choices (from :meth:`shareable` of another process) from now on, over this
        process's own and its cache's."""
        for name, choices in shared.items():
            for key, choice in choices.items():
                self.pinned[(name, key)] = choice
        self._resolved.clear()


_tuner = Tuner()


def default_tuner() -> Tuner:
    return _tuner


def set_tuner(tuner: Tuner) -> Tuner:
    """Make ``tuner`` the one the functional API and layers use; returns the previous one."""
    global _tuner
    if not isinstance(tuner, Tuner):
        raise TypeError(f"tuner must be a cudeconv.autotune.Tuner, got {type(tuner).__name__}")
    previous, _tuner = _tuner, tuner
    return previous


def _tunes(impl, algorithm, autotune) -> bool:
    return algorithm == "auto" and resolve_autotune(autotune) and hasattr(impl, "candidate_paths")


def forward(impl, x, weight, bias, geom, algorithm, precision, memory_format, autotune):
    """``impl.forward``, by the tuned kernel where autotuning applies (``algorithm="auto"`` on a
    kernel backend, ``autotune`` or the global setting on)."""
    if not _tunes(impl, algorithm, autotune):
        return impl.forward(x, weight, bias, geom, algorithm, precision)
    return _tuner.run(impl, "forward", (x, weight, bias), geom, precision, memory_format)


def backward(impl, grad_output, x, weight, geom, need_bias, algorithm, precision, memory_format, autotune):
    """``impl.backward``, grad_input and grad_weight by their tuned kernels where autotuning applies."""
    if not _tunes(impl, algorithm, autotune):
        return impl.backward(grad_output, x, weight, geom, need_bias, algorithm, precision)
    grad_input = _tuner.run(impl, "grad_input", (grad_output, weight), geom, precision, memory_format)
    grad_weight = _tuner.run(impl, "grad_weight", (grad_output, x), geom, precision, memory_format)
    return grad_input, grad_weight, impl.grad_bias(grad_output, geom, algorithm) if need_bias else None


def choices_to_share() -> bytes:
    """This process's choices as bytes, for :func:`adopt_choices` in another process."""
    return json.dumps(_tuner.shareable(), sort_keys=True).encode()


def adopt_choices(data: bytes):
    """Run the choices of :func:`choices_to_share` (another process's) from now on."""
    shared = json.loads(bytes(data).decode())
    if not isinstance(shared, dict):
        raise ValueError(f"autotuning choices must be a JSON object, got {type(shared).__name__}")
    _tuner.adopt(shared)
