"""The floating-point types cudeconv computes in, in one place.

bfloat16 is NumPy's through ``ml_dtypes`` (the package JAX uses; CuPy accepts its arrays too).
Its NumPy kind is "V" (a void type to NumPy), so code asks these helpers, never ``dtype.kind``.
float16 and bfloat16 are computed in float32 and rounded once at the end. :func:`float_dtype` is the
one place a dtype argument is read.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = (np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64))
NAMES = tuple(d.name for d in FLOAT_DTYPES)  # "float16", "bfloat16", "float32", "float64"
LOW_PRECISION = (np.dtype(np.float16), BFLOAT16)  # stored narrow, computed in float32


DTYPE_FORMS = "a NumPy dtype or scalar type, its name, ml_dtypes.bfloat16 or a torch dtype"


def float_dtype(value, arg: str = "dtype") -> np.dtype:
    """The floating dtype ``value`` stands for: a ``np.dtype``, a NumPy scalar type (``np.float32``,
    ``ml_dtypes.bfloat16``), a name NumPy reads (``"float32"``, ``"f4"``, ``"bfloat16"``) or a torch
    dtype (``torch.float32``, ...; recognised by its type, so torch is never imported). TypeError
    naming ``arg``, the value and the choices for anything else, including the other dtypes."""
    dtype = _numpy_dtype(value)
    if dtype is None or dtype not in FLOAT_DTYPES:
        raise TypeError(f"{arg} must be one of {', '.join(NAMES)} ({DTYPE_FORMS}), got {value!r}")
    return dtype


def _numpy_dtype(value):
    """``value`` as a NumPy dtype where it is one of the accepted forms, else None."""
    if isinstance(value, np.dtype):
        return value
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value)
    if isinstance(value, str):
        try:
            return np.dtype(value)
        except (TypeError, ValueError, SyntaxError):  # what NumPy raises for strings it cannot read
            return None
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        name = str(value).rpartition(".")[2]  # "torch.float16" (torch.half prints so too)
        return np.dtype(name) if name in NAMES else None
    return None


def compute_dtype(dtype) -> np.dtype:
    """float16 and bfloat16 accumulate in float32; the other dtypes compute in themselves."""
    return np.dtype(np.float32) if np.dtype(dtype) in LOW_PRECISION else np.dtype(dtype)


def unit_roundoff(dtype) -> float:
    """Half the machine epsilon: 2⁻¹¹ (float16), 2⁻⁸ (bfloat16), 2⁻²⁴, 2⁻⁵³."""
    return float(ml_dtypes.finfo(np.dtype(dtype)).eps) / 2
