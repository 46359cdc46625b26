"""The benchmark's cases: one case's arrays, float64 reference results and magnitudes (for the
error bounds of :mod:`.accuracy`), and the bytes each pass moves."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .._dtypes import compute_dtype
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
    _magnitudes: Optional[Dict[str, object]] = field(default=None, repr=False)

    @classmethod
    def make(cls, case: Case, dtype, seed=0) -> "Problem":
        dtype = np.dtype(dtype)
        x, weight, bias, grad_output = case.arrays(dtype, seed)
        rng = np.random.default_rng(seed + 1)
        shape = weight.shape
        problem = cls(case, case.geometry(), dtype, x, weight, bias, grad_output,
                      param=weight.copy(), grad=rng.standard_normal(shape).astype(dtype),
                      momentum=rng.standard_normal(shape).astype(compute_dtype(dtype)))
        problem.reference = problem._float64_results(lambda a: a)
        return problem

    def magnitudes(self) -> Dict[str, object]:
        """Each pass run in float64 on absolute values: Σ|a·b| (plus |bias|) behind every entry of
        its result, the scale of the elementwise error bound (:mod:`.accuracy`). Computed once, on
        first use. The SGD step gets -|grad| and -|momentum|, so that its update adds up
        |param| + lr·(momentum·|momentum| + |grad|)."""
        if self._magnitudes is None:
            self._magnitudes = self._float64_results(np.abs, negate_sgd_terms=True)
        return self._magnitudes

    def _float64_results(self, transform, negate_sgd_terms=False):
        """Every pass's result in float64 on ``transform``-ed inputs, by the NumPy backend."""
        ref = NumpyBackend()
        as64 = lambda a: None if a is None else transform(a.astype(np.float64))  # noqa: E731
        x, weight, bias, grad_output = map(as64, (self.x, self.weight, self.bias, self.grad_output))
        grad_input, grad_weight, grad_bias = ref.backward(grad_output, x, weight, self.geom, bias is not None)
        param, grad, momentum = as64(self.param), as64(self.grad), as64(self.momentum)
        if negate_sgd_terms:
            grad, momentum = -grad, -momentum
        ref.sgd_step(param, grad, momentum, SGD_HYPER, first_step=False)
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

    def _elements(self):
        g = self.geom
        b = g.out_channels if self.bias is not None else 0
        return math.prod(g.input_shape), math.prod(g.weight_shape), math.prod(g.output_shape), b

    def min_bytes(self, name: str) -> int:
        """The fewest bytes pass ``name`` moves: each operand read once, each result written once."""
        x, w, y, b = self._elements()
        item = self.dtype.itemsize
        elements = {
            "forward": x + w + b + y, "grad_input": y + w + x, "grad_weight": y + x + w,
            "grad_bias": y + b, "backward": y + x + w + x + w + b,
        }
        if name == "sgd_step":  # param read + written, grad read; momentum read + written
            return 3 * w * item + 2 * w * compute_dtype(self.dtype).itemsize
        return elements[name] * item

    def input_bytes(self, name: str) -> int:
        """The bytes pass ``name`` reads (its inputs, not its results)."""
        x, w, y, b = self._elements()
        item = self.dtype.itemsize
        elements = {"forward": x + w + b, "grad_input": y + w, "grad_weight": y + x, "grad_bias": y,
                    "backward": y + x + w}
        if name == "sgd_step":  # param and grad; the momentum buffer
            return 2 * w * item + w * compute_dtype(self.dtype).itemsize
        return elements[name] * item

    def copy_bytes(self) -> int:
        """The bytes of one copy of all the arrays the passes read."""
        return sum(a.nbytes for a in (self.x, self.weight, self.bias, self.grad_output, self.param, self.grad,
                                      self.momentum) if a is not None)
