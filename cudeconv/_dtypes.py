"""The floating-point types cudeconv computes in, in one place.

bfloat16 is NumPy's through ``ml_dtypes`` (the package JAX uses; CuPy accepts its arrays too).
Its NumPy kind is "V" (a void type to NumPy), so code asks these helpers, never ``dtype.kind``.
float16 and bfloat16 are computed in float32 and rounded once at the end.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = (np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64))
NAMES = tuple(d.name for d in FLOAT_DTYPES)  # "float16", "bfloat16", "float32", "float64"
LOW_PRECISION = (np.dtype(np.float16), BFLOAT16)  # stored narrow, computed in float32


def is_float_dtype(dtype) -> bool:
    return np.dtype(dtype) in FLOAT_DTYPES


def compute_dtype(dtype) -> np.dtype:
    """float16 and bfloat16 accumulate in float32; the other dtypes compute in themselves."""
    return np.dtype(np.float32) if np.dtype(dtype) in LOW_PRECISION else np.dtype(dtype)


def unit_roundoff(dtype) -> float:
    """Half the machine epsilon: 2⁻¹¹ (float16), 2⁻⁸ (bfloat16), 2⁻²⁴, 2⁻⁵³."""
    return float(ml_dtypes.finfo(np.dtype(dtype)).eps) / 2
