"""Arrays from any framework at the API boundary, and results handed back in the caller's kind.

The backends compute on NumPy arrays (CPU) and CuPy arrays (GPU). :func:`take_arrays` is the one
place where the public entry points (the functional API, a layer's forward/backward and
``load_state_dict``) accept anything else:

- NumPy arrays pass through; a subclass (``np.matrix``, a masked array, ...) becomes a plain
  ``np.ndarray`` view of the same memory, so NumPy's own operations behave as on an ndarray;
- CuPy arrays pass through;
- any other object implementing ``__dlpack__`` (a PyTorch tensor, a JAX array, ...) is taken
  without copying: ``numpy.from_dlpack`` where it lives in CPU memory, ``cupy.from_dlpack`` where it
  lives on a CUDA device;
- an object with ``__cuda_array_interface__`` only (Numba, PyCUDA, ...) becomes a CuPy array
  without copying;
- anything else (a list, a Python or NumPy scalar, ...) raises ``TypeError`` naming the argument.

Inputs are only read, never written. The function that :func:`take_arrays` returns with them
hands results back as the same kind of object as the first argument that was neither NumPy nor CuPy
(a PyTorch tensor in gives PyTorch tensors out), through that framework's ``from_dlpack`` without
copying, where the framework offers one; otherwise, and for NumPy/CuPy inputs, results stay
NumPy/CuPy arrays. DLPack carries strides both ways, so a channels-last tensor is taken as a
channels-last view and a channels-last result comes back as a channels-last tensor
(:mod:`cudeconv._memory_format`).
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional, Tuple

import numpy as np

from ._dtypes import BFLOAT16
from .backends import _is_cupy_array

# DLPack device types (dlpack.h) whose memory the CPU can read, and those of CUDA devices.
_CPU_DEVICES = {1, 3}  # kDLCPU, kDLCUDAHost (pinned host memory)
_CUDA_DEVICES = {2, 13}  # kDLCUDA, kDLCUDAManaged
# Frameworks whose ``from_dlpack`` is not at the top of the package defining their array type.
_FROM_DLPACK_MODULE = {"jax": "jax.numpy", "jaxlib": "jax.numpy"}

ACCEPTED = ("numpy.ndarray, cupy.ndarray, or an array with __dlpack__ or __cuda_array_interface__ "
            "(a torch.Tensor, a JAX array, ...)")


def _cupy(name: str, value):
    try:
        import cupy
    except ImportError as exc:
        raise TypeError(
            f"{name} is a {_type_name(value)} on a CUDA device; taking it needs CuPy ({exc}): "
            f"install cudeconv[cuda12] or cudeconv[cuda13]"
        ) from exc
    return cupy


def _type_name(value) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _from_dlpack(name: str, value):
    device_type = int(value.__dlpack_device__()[0]) if hasattr(value, "__dlpack_device__") else 1
    if device_type in _CPU_DEVICES:
        convert = np.from_dlpack
    elif device_type in _CUDA_DEVICES:
        convert = _cupy(name, value).from_dlpack
    else:
        raise TypeError(
            f"{name} is a {_type_name(value)} on DLPack device type {device_type}; cudeconv computes "
            f"in CPU memory (NumPy) or on CUDA devices (CuPy)"
        )
    try:
        if str(getattr(value, "dtype", "")).endswith("bfloat16"):
            # DLPack's bfloat16 is not a NumPy/CuPy dtype: take the same memory as int16, then view
            # it as ml_dtypes' bfloat16 (no copy either way)
            return convert(value.view(_namespace(value).int16)).view(BFLOAT16)
        return convert(value)
    except Exception as exc:  # BufferError (a tensor that requires grad), an unsupported dtype, ...
        raise TypeError(
            f"{name}: cannot take a {_type_name(value)} through DLPack ({type(exc).__name__}: {exc})"
        ) from exc


def as_backend_array(value, name: str):
    """``value`` as a NumPy or CuPy array, without copying (see the module docstring); None stays
    None. TypeError, naming ``name``, for what is not an array."""
    if value is None or _is_cupy_array(value):
        return value
    if isinstance(value, np.ndarray):
        return value if type(value) is np.ndarray else np.asarray(value)
    if hasattr(value, "__dlpack__") and not isinstance(value, type):
        return _from_dlpack(name, value)
    if hasattr(value, "__cuda_array_interface__") and not isinstance(value, type):
        return _cupy(name, value).asarray(value)
    raise TypeError(f"{name} must be an array ({ACCEPTED}), got {_type_name(value)}")


def _namespace(value):
    """The module of ``value``'s framework that has its ``from_dlpack`` and dtypes (``torch``,
    ``jax.numpy``, ...); ImportError where there is none."""
    package = type(value).__module__.split(".")[0]
    return importlib.import_module(_FROM_DLPACK_MODULE.get(package, package))


def _returner(value) -> Optional[Callable]:
    """A function giving a NumPy/CuPy result back in the framework ``value`` comes from, through its
    ``from_dlpack`` (bfloat16 as int16, viewed back as the framework's bfloat16); None for NumPy/CuPy
    arrays, None values and frameworks without one."""
    if value is None or isinstance(value, np.ndarray) or _is_cupy_array(value):
        return None
    try:
        namespace = _namespace(value)
    except ImportError:
        return None
    from_dlpack = getattr(namespace, "from_dlpack", None)
    if from_dlpack is None:
        return None

    def give(result):
        if result.dtype == BFLOAT16:
            return from_dlpack(result.view(np.int16)).view(namespace.bfloat16)
        return from_dlpack(result)

    return give


def take_arrays(*, required=(), **arrays) -> Tuple[tuple, Callable]:
    """The named arrays (``input=x, weight=w, ...``) as NumPy/CuPy arrays, in order, and a function
    that gives results back in the kind of the first one from another framework (a result, None,
    or a tuple of them). None stays None, except for the names in ``required``: TypeError naming
    the argument."""
    for name in required:
        if arrays[name] is None:
            raise TypeError(f"{name} must be an array ({ACCEPTED}), got None")
    taken = tuple(as_backend_array(value, name) for name, value in arrays.items())
    from_dlpack = next((f for f in map(_returner, arrays.values()) if f is not None), None)

    def give_back(result):
        if from_dlpack is None or result is None:
            return result
        if isinstance(result, tuple):
            return tuple(give_back(item) for item in result)
        return from_dlpack(result)

    return taken, give_back
