"""cudeconv: transposed convolution ("deconvolution") layers as hand-written CUDA kernels.

Functional API (PyTorch's semantics), layers with explicit backward, and an SGD optimizer, on three
backends: "numpy" (vectorized reference, CPU), "cuda" (the kernels through CuPy) and "emulator" (the
same kernels compiled for the CPU, for testing without a GPU).
"""
from .backends import BackendUnavailableError
from .functional import (
    conv_transpose1d,
    conv_transpose1d_backward,
    conv_transpose2d,
    conv_transpose2d_backward,
    conv_transpose3d,
    conv_transpose3d_backward,
)
from ._precision import PRECISIONS, get_default_precision, set_default_precision
from .autotune import get_autotune, set_autotune
from .layers import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, Parameter
from .optim import SGD

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "conv_transpose1d",
    "conv_transpose1d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "conv_transpose3d",
    "conv_transpose3d_backward",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Parameter",
    "PRECISIONS",
    "SGD",
    "get_autotune",
    "get_default_precision",
    "set_autotune",
    "set_default_precision",
    "__version__",
]
