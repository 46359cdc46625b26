"""The ``precision`` option of float32 convolutions on the kernel backends.

- ``"fp32"`` (the default): exact FP32 multiply-adds, no tensor cores — results within FP32
  rounding of the float64 reference.
- ``"tf32"``: TF32 tensor cores with FP32 accumulation, what cuDNN does under PyTorch's default
  for convolutions: operands rounded to 10 mantissa bits, relative errors of order 1e-3.
- ``"tf32x3"``: each operand split into two TF32 parts and three tensor-core products: close to
  FP32 accuracy at tensor-core speed.

float16 always runs on tensor cores with float32 accumulation and float64 on FP64 arithmetic,
whatever the precision. The NumPy backend computes every precision exactly, and the direct
kernels (chosen for narrow layers, see the README) compute in FP32: a precision is the fastest
arithmetic allowed, never a promise of lower accuracy.
"""
from __future__ import annotations

PRECISIONS = ("fp32", "tf32", "tf32x3")
_default = "fp32"


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
