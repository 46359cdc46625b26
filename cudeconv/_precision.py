"""The ``precision`` and ``algorithm`` options of the convolutions on the kernel backends.

``algorithm``: "auto" (the heuristic of docs/kernels.md), "gemm", "gather" (the direct kernels) or,
for the forward only, "scatter" (atomics). ``precision``, for float32:

- ``"fp32"`` (the default): exact FP32 multiply-adds, no tensor cores — results within FP32
  rounding of the float64 reference.
- ``"tf32"``: TF32 tensor cores with FP32 accumulation, what cuDNN does under PyTorch's default
  for convolutions: operands rounded to 10 mantissa bits, relative errors of order 1e-3.
- ``"tf32x3"``: each operand split into two TF32 parts and three tensor-core products: close to
  FP32 accuracy at tensor-core speed.

float16 and bfloat16 always run on tensor cores with float32 accumulation and float64 on FP64 arithmetic,
whatever the precision. The NumPy backend computes every precision exactly, and the direct
kernels (chosen for narrow layers, see the README) compute in FP32: a precision is the fastest
arithmetic allowed, never a promise of lower accuracy.
"""
from __future__ import annotations

PRECISIONS = ("fp32", "tf32", "tf32x3")
_default = "fp32"
ALGORITHMS = ("auto", "gemm", "gather", "scatter")
BACKWARD_ALGORITHMS = ("auto", "gemm", "gather")


def check_algorithm(algorithm, allowed=ALGORITHMS):
    if not isinstance(algorithm, str) or algorithm not in allowed:
        raise ValueError(f"algorithm must be one of {allowed}, got {algorithm!r}")
    return algorithm


def backward_algorithm(algorithm: str) -> str:
    """The backward's algorithm for a forward ``algorithm``: "scatter" has no backward twin, its
    backward takes the direct kernels."""
    return "gather" if algorithm == "scatter" else algorithm


def check_precision(precision, arg="precision"):
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{arg} must be one of {PRECISIONS}, got {precision!r}")
    return precision


def set_default_precision(precision):
    """Set the precision used where ``precision=None`` (functional API and layers); returns the
    previous one."""
    global _default
    previous, _default = _default, check_precision(precision)
    return previous


def get_default_precision():
    return _default


def resolve_precision(precision):
    """``precision``, or the default for None, validated."""
    return _default if precision is None else check_precision(precision)
