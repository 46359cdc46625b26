"""The one loader of the library's CUDA sources, for CuPy and for the CPU emulator.

It reads ``kernels/<file>.cu`` from the installed package (or the source tree), inlines local
``#include "x.cuh"`` headers — CuPy's disk cache keys on the source text, which would not cover a
header edited on disk — and marks every piece with ``#line`` so compiler errors point at the real
file and line. Modules are memoized per (file, options, device).
"""
from __future__ import annotations

import functools
import os
import re
import threading
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\b")


def kernels_dir() -> Path:
    """Where the ``.cu`` files are: ``cudeconv/kernels`` when installed, ``kernels/`` in a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "kernels", package.parent / "kernels"):
        if candidate.is_dir() and any(candidate.glob("*.cu")):
            return candidate
    raise FileNotFoundError(
        f"cudeconv's CUDA sources were not found in {package / 'kernels'} or {package.parent / 'kernels'}"
    )


def _inline(path: Path, inlined: set) -> str:
    """``path``'s text with each local header inlined once (the headers use ``#pragma once``,
    which means nothing once they are pasted into one file)."""
    inlined.add(path)
    lines = [f'#line 1 "{path.as_posix()}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _INCLUDE.match(line)
        if not match:
            # An inlined header's "#pragma once" would apply to the whole pasted file.
            lines.append("" if _PRAGMA_ONCE.match(line) else line)
            continue
        header = (path.parent / match.group(1)).resolve()
        if not header.is_file():
            raise FileNotFoundError(f"{path}:{number}: included header {header} does not exist")
        if header not in inlined:
            lines.append(_inline(header, inlined))
        lines.append(f'#line {number + 1} "{path.as_posix()}"')
    return "\n".join(lines) + "\n"


def source_with_headers(path) -> str:
    """The text of the CUDA source file ``path`` with its local headers inlined and ``#line``
    marks (also for test kernels outside ``kernels/``)."""
    return _inline(Path(path).resolve(), set())


@functools.lru_cache(maxsize=None)
def kernel_source(filename: str) -> str:
    """The full source of ``kernels/<filename>`` with its local headers inlined and ``#line`` marks."""
    path = kernels_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(f"no kernel source {filename!r} in {kernels_dir()}")
    return source_with_headers(path)


_modules = {}
_lock = threading.Lock()


def load_module(filename: str, module_class, device_key, options=()):
    """``module_class(code=source, options=options)`` for ``kernels/<filename>``, one per
    (file, options, device_key). ``module_class`` is ``cupy.RawModule`` or the emulator's."""
    key = (filename, tuple(options), module_class, device_key)
    with _lock:
        module = _modules.get(key)
        if module is None:
            module = module_class(code=kernel_source(filename), options=tuple(options))
            _modules[key] = module
        return module


def cupy_cache_dir() -> Path:
    """Where CuPy keeps the kernels NVRTC compiled (``$CUPY_CACHE_DIR``, else
    ``~/.cupy/kernel_cache``): a later process loads them instead of compiling again."""
    return Path(os.environ.get("CUPY_CACHE_DIR") or Path.home() / ".cupy" / "kernel_cache")


def directory_bytes(path: Path):
    """(bytes, files) under ``path``; (0, 0) where it does not exist."""
    total = count = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
                count += 1
            except OSError:  # removed while we walk (another process evicting)
                pass
    return total, count
