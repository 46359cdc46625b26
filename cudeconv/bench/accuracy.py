"""How far a result may be from the float64 reference: the error bound of each arithmetic.

Every pass's result is compared with a float64 run of the NumPy backend on the same (rounded)
inputs, under one of two bounds:

- **elementwise**, for the low-precision arithmetics (TF32, 3×TF32, float16, bfloat16):
  ``|result - reference| <= c·u·m + η`` entry by entry, where ``m`` is the same pass run in float64
  on absolute values (``|x| ⊛ |w| + |b|`` for the forward, ``|grad_output| ⊛ |w|``,
  ``|grad_output| ⊛ |x|``, ``Σ|grad_output|`` for the gradients: Σ|a·b| of each sum), ``u`` the
  format's unit roundoff, ``c`` = :data:`ELEMENTWISE_CONSTANT` and ``η`` half the storage format's
  smallest subnormal (the absolute error of an underflow). Rounding each operand to the format
  (2u per product), accumulating in FP32 and rounding the result once all stay within a few
  ``u·m``, however long the sums: the bound does not grow with them, so a wrong tap, or a few
  percent off in some entries, fails it.
- **normwise**, for FP32 and FP64 arithmetic: ``max|result - reference| / max|reference| <=
  8·√terms·u``, terms being the length of the pass's sums (FP32's unit is small enough that this
  still catches any wrong kernel).

:func:`bound_for` picks the bound, :meth:`Bound.measure` gives the error in the bound's own terms
(compared with :attr:`Bound.limit`) and :meth:`Bound.describe` what the JSON records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import ml_dtypes
import numpy as np

from .._dtypes import BFLOAT16

# The arithmetic a contender computes in: its unit roundoff. tf32x3 carries each product as three
# TF32 products, exact to about 2⁻²¹ (the dropped small·small part and the rounding of the parts).
ARITHMETIC_UNITS = {"fp64": 2.0**-53, "fp32": 2.0**-24, "tf32": 2.0**-11, "tf32x3": 2.0**-21,
                    "fp16": 2.0**-11, "bf16": 2.0**-8}
ARITHMETICS = tuple(ARITHMETIC_UNITS)
LOW_PRECISION_ARITHMETICS = ("tf32", "tf32x3", "fp16", "bf16")
ELEMENTWISE_CONSTANT = 4
NORMWISE_CONSTANT = 8


def arithmetic(dtype, precision: str) -> str:
    """The arithmetic of a GEMM-like pass on ``dtype`` at float32 ``precision`` ("fp32", "tf32",
    "tf32x3"): float16 and bfloat16 round to their own format (computed on their tensor cores or
    in FP32 and rounded once), float64 computes in FP64, float32 in ``precision``."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return "fp64"
    if dtype == np.float16:
        return "fp16"
    if dtype == BFLOAT16:
        return "bf16"
    return precision


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch (whose bfloat16 NumPy cannot take: widened, exactly)
        array = array.detach().cpu()
        return (array.float() if str(array.dtype) == "torch.bfloat16" else array).numpy()
    if not isinstance(array, np.ndarray) and hasattr(array, "get"):  # cupy
        return array.get()
    return np.asarray(array)


def _pairs(result, reference):
    """(result as float64 NumPy, reference) for each array of a result; None for a wrong
    structure (count or shape)."""
    if isinstance(reference, tuple):
        if not isinstance(result, tuple) or len(result) != len(reference):
            return None
        pairs = [_pairs(r, e) for r, e in zip(result, reference)]
        return None if any(p is None for p in pairs) else [pair for p in pairs for pair in p]
    actual = _to_numpy(result).astype(np.float64)
    return None if actual.shape != reference.shape else [(actual, reference)]


def relative_error(result, reference) -> float:
    """max |result - reference| / max |reference| (the largest over tuples of results); inf for a
    wrong shape or a NaN."""
    pairs = _pairs(result, reference)
    if pairs is None:
        return math.inf
    worst = 0.0
    for actual, expected in pairs:
        scale = max(float(np.max(np.abs(expected), initial=0.0)), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(actual - expected), initial=0.0)) / scale)
    return math.inf if math.isnan(worst) else worst


def elementwise_error(result, reference, magnitude, floor: float = 0.0) -> float:
    """max over entries of (|result - reference| - floor) / magnitude (0 where the error is within
    ``floor``; inf where it is not and the magnitude is 0, for a wrong shape or a NaN)."""
    pairs = _pairs(result, reference)
    if pairs is None:
        return math.inf
    magnitudes = magnitude if isinstance(magnitude, tuple) else (magnitude,)
    worst = 0.0
    for (actual, expected), scale in zip(pairs, magnitudes):
        excess = np.abs(actual - expected) - floor
        if np.isnan(excess).any():
            return math.inf
        over = excess > 0
        if not over.any():
            continue
        with np.errstate(divide="ignore"):
            worst = max(worst, float(np.max(excess[over] / scale[over])))
    return worst


@dataclass(frozen=True)
class Bound:
    """An error bound: ``measure(...) <= limit`` (see the module docstring)."""

    form: str  # "elementwise" or "normwise"
    constant: float
    arithmetic: str
    unit: float
    floor: float = 0.0  # elementwise: the absolute error an underflow may add
    terms: Optional[int] = None  # normwise: the length of the sums the constant grows with

    @property
    def limit(self) -> float:
        return self.constant * self.unit

    @property
    def needs_magnitude(self) -> bool:
        return self.form == "elementwise"

    def measure(self, result, reference, magnitude=None) -> float:
        if self.form == "elementwise":
            return elementwise_error(result, reference, magnitude, self.floor)
        return relative_error(result, reference)

    def describe(self) -> dict:
        if self.form == "elementwise":
            rule = (f"|result - reference| <= {self.constant:g}·u·(Σ|a·b| of each entry) + {self.floor:.3g}, "
                    f"u = 2^{math.log2(self.unit):g} ({self.arithmetic})")
        else:
            rule = (f"max|result - reference| / max|reference| <= {NORMWISE_CONSTANT}·√{self.terms}·u, "
                    f"u = 2^{math.log2(self.unit):g} ({self.arithmetic})")
        return {"form": self.form, "constant": self.constant, "unit": self.unit, "arithmetic": self.arithmetic,
                "floor": self.floor, "terms": self.terms, "limit": self.limit, "rule": rule}


def bound_for(dtype, arithmetic_name: str, terms: int) -> Bound:
    """The bound of a pass on ``dtype`` computed in ``arithmetic_name`` with sums of ``terms``."""
    if arithmetic_name not in ARITHMETIC_UNITS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic_name!r}")
    unit = ARITHMETIC_UNITS[arithmetic_name]
    if arithmetic_name in LOW_PRECISION_ARITHMETICS:
        floor = float(ml_dtypes.finfo(np.dtype(dtype)).smallest_subnormal) / 2
        return Bound("elementwise", ELEMENTWISE_CONSTANT, arithmetic_name, unit, floor=floor)
    return Bound("normwise", NORMWISE_CONSTANT * math.sqrt(max(terms, 1)), arithmetic_name, unit, terms=terms)
