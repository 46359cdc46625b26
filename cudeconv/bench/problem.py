"""One case's arrays and float64 reference results, and the error measure and bound they are
checked with."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .._dtypes import LOW_PRECISION, compute_dtype, unit_roundoff
from .._geometry import ConvTransposeGeometry
from ..backends.numpy_backend import NumpyBackend
from ..cases import BY_NAME, SUITE, Case
from ..optim import SGDHyperparameters

PASSES = ("forward", "grad_input", "grad_weight", "grad_bias", "backward", "sgd_step")
# Passes that are convolutions (a TFLOP/s figure makes sense): how many geom.flops() each does.
CONVOLUTIONS = {"forward": 1, "grad_input": 1, "grad_weight": 1, "backward": 2}
SGD_HYPER = SGDHyperparameters(lr=0.01, momentum=0.9, dampening=0.0, weight_decay=0.0,
                               nesterov=False, maximize=False)

def select_cases(patterns) -> List[Case]:
    """The suite's cases matching any of ``patterns`` (names or globs; each entry may hold several,
    comma or space separated), in suite order. ValueError names a pattern that matches nothing."""
    if not patterns:
        return list(SUITE)
    wanted = [p for entry in patterns for p in entry.replace(",", " ").split()]
    chosen = set()
    for pattern in wanted:
        matches = fnmatch.filter(BY_NAME, pattern)
        if not matches:
            raise ValueError(f"unknown case {pattern!r}; known cases: {', '.join(BY_NAME)}")
        chosen.update(matches)
    return [case for case in SUITE if case.name in chosen]


@dataclass
class Problem:
    """One case's arrays (NumPy, in the benchmarked dtype) and the float64 reference results."""

    case: Case
    geom: ConvTransposeGeometry
    dtype: np.dtype
    x: np.ndarray
    weight: np.ndarray
    bias: Optional[np.ndarray]
    grad_output: np.ndarray
    param: np.ndarray  # SGD: parameter, gradient and momentum buffer, weight-shaped
    grad: np.ndarray
    momentum: np.ndarray
    reference: Dict[str, object] = field(default_factory=dict)

    @classmethod
    def make(cls, case: Case, dtype, seed=0) -> "Problem":
        dtype = np.dtype(dtype)
        x, weight, bias, grad_output = case.arrays(dtype, seed)
        rng = np.random.default_rng(seed + 1)
        shape = weight.shape
        problem = cls(case, case.geometry(), dtype, x, weight, bias, grad_output,
                      param=weight.copy(), grad=rng.standard_normal(shape).astype(dtype),
                      momentum=rng.standard_normal(shape).astype(compute_dtype(dtype)))
        problem.reference = problem._reference()
        return problem

    def _reference(self):
        ref = NumpyBackend()
        as64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
        x, weight, bias, grad_output = map(as64, (self.x, self.weight, self.bias, self.grad_output))
        grad_input, grad_weight, grad_bias = ref.backward(grad_output, x, weight, self.geom, bias is not None)
        param = as64(self.param)
        ref.sgd_step(param, as64(self.grad), as64(self.momentum), SGD_HYPER, first_step=False)
        results = {"forward": ref.forward(x, weight, bias, self.geom), "grad_input": grad_input,
                   "grad_weight": grad_weight, "sgd_step": param,
                   "backward": tuple(g for g in (grad_input, grad_weight, grad_bias) if g is not None)}
        if bias is not None:
            results["grad_bias"] = grad_bias
        return results

    def terms(self, name: str) -> int:
        """Length of the sums behind one result of pass ``name`` (for the error bound)."""
        g = self.geom
        terms = {
            "forward": g.in_channels_per_group * g.taps, "grad_input": g.out_channels_per_group * g.taps,
            "grad_weight": g.batch * math.prod(g.in_size), "grad_bias": g.batch * math.prod(g.out_size),
            "sgd_step": 1,
        }
        terms["backward"] = max(terms["grad_input"], terms["grad_weight"], terms["grad_bias"])
        return terms[name]

    def min_bytes(self, name: str) -> int:
        g, item = self.geom, self.dtype.itemsize
        x, w, y = math.prod(g.input_shape), math.prod(g.weight_shape), math.prod(g.output_shape)
        b = g.out_channels if self.bias is not None else 0
        elements = {
            "forward": x + w + b + y, "grad_input": y + w + x, "grad_weight": y + x + w,
            "grad_bias": y + b, "backward": y + x + w + x + w + b,
        }
        if name == "sgd_step":  # param read + written, grad read; momentum read + written
            return 3 * w * item + 2 * w * compute_dtype(self.dtype).itemsize
        return elements[name] * item


def tolerance(dtype, terms: int, unit: Optional[float] = None) -> float:
    """Bound on max|err|/max|ref| for sums of ``terms`` products in the compute precision ``unit``."""
    dtype = np.dtype(dtype)
    if unit is None:
        unit = unit_roundoff(compute_dtype(dtype))
    bound = 8 * math.sqrt(max(terms, 1)) * unit
    # float16 and bfloat16 results also carry their final rounding (twice the unit, for slack)
    return bound + (2 * unit_roundoff(dtype) if dtype in LOW_PRECISION else 0.0)


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch (whose bfloat16 NumPy cannot take: widened, exactly)
        array = array.detach().cpu()
        return (array.float() if str(array.dtype) == "torch.bfloat16" else array).numpy()
    if not isinstance(array, np.ndarray) and hasattr(array, "get"):  # cupy
        return array.get()
    return np.asarray(array)


def relative_error(result, reference) -> float:
    """max |result - reference| / max |reference| (the largest over tuples of results); inf for a
    wrong shape or a NaN."""
    if isinstance(reference, tuple):
        if not isinstance(result, tuple) or len(result) != len(reference):
            return math.inf
        return max(relative_error(r, e) for r, e in zip(result, reference))
    actual = _to_numpy(result).astype(np.float64)
    if actual.shape != reference.shape:
        return math.inf
    scale = max(float(np.max(np.abs(reference), initial=0.0)), np.finfo(np.float64).tiny)
    error = float(np.max(np.abs(actual - reference), initial=0.0)) / scale
    return math.inf if math.isnan(error) else error
