"""Layers: ``ConvTranspose{1,2,3}d`` with explicit forward/backward, and ``Parameter``.

A layer keeps its weight ``(C_in, C_out // groups, *kernel_size)`` and bias ``(C_out,)`` as
:class:`Parameter` objects on its backend (CuPy arrays for "cuda", NumPy arrays otherwise).
``forward`` caches the input for ``backward``; ``backward`` returns grad_input and *accumulates*
(+=) into ``weight.grad`` / ``bias.grad``, as PyTorch's autograd does.
"""
from __future__ import annotations

import errno
import math
import os
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from . import backends
from ._dtypes import BFLOAT16, float_dtype
from ._files import write_atomically
from ._geometry import check_hyperparameters, is_int, output_padding_for, spatial_tuple
from ._interop import as_backend_array, take_arrays
from ._precision import ALGORITHMS, backward_algorithm, check_algorithm, check_precision
from .autotune import check_autotune
from .functional import backward as _backward, forward as _forward


class Parameter:
    """A trainable array and its gradient (``grad`` is None until a backward pass sets it)."""

    def __init__(self, data):
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            raise TypeError(f"Parameter data must be an array, got {type(data).__name__}")
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self, set_to_none=True):
        if set_to_none:
            self.grad = None
        elif self.grad is not None:
            self.grad.fill(0)

    def accumulate_grad(self, grad):
        """``grad`` += the given gradient (the first gradient is stored as is)."""
        if self.grad is None:
            self.grad = grad
        else:
            self.grad += grad

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype}, grad={'set' if self.grad is not None else None})"


def _positive_int(value, name):
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {name}={value}")
    return int(value)


def check_state_array(value, what):
    """TypeError unless ``value`` is a NumPy or CuPy array of real numbers (floating or integer),
    which a state loads by casting to its own dtype."""
    if not (isinstance(value, np.ndarray) or backends.infer_name(value) == "cuda"):
        raise TypeError(
            f"{what} must be a NumPy or CuPy array, got {type(value).__module__}.{type(value).__name__}"
        )
    if np.dtype(value.dtype).kind not in "fiu" and np.dtype(value.dtype) != BFLOAT16:
        raise TypeError(f"{what} must hold real numbers, got dtype {value.dtype}")


def _checkpoint_path(path) -> str:
    try:
        return os.fsdecode(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None


# What a damaged or foreign archive raises from zipfile, zlib and numpy's .npy header parser
# (zipfile also raises NotImplementedError for features it lacks and OSError EINVAL for a seek to
# a negative offset read from a damaged directory).
_CORRUPT_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError)


def _read_checkpoint(path: str, shapes: dict) -> dict:
    """The arrays ``{name: array}`` of the checkpoint at ``path``, which must hold exactly the
    members ``name.npy`` with the given shapes and real dtypes; ValueError naming ``path`` otherwise."""
    with open(path, "rb") as file:  # a missing or unreadable file raises the OSError as it is
        try:
            with zipfile.ZipFile(file) as archive:
                return _read_members(archive, shapes)
        except (*_CORRUPT_ARCHIVE_ERRORS, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno != errno.EINVAL:
                raise  # a failing disk, not a damaged file
            raise ValueError(f"{path!r} is not a valid checkpoint for this layer: {exc}") from exc


def _read_members(archive: zipfile.ZipFile, shapes: dict) -> dict:
    found = sorted(info.filename for info in archive.infolist())
    expected = sorted(f"{name}.npy" for name in shapes)
    if found != expected:
        raise ValueError(f"it holds the members {found}, expected {expected}")
    arrays = {}
    for name, shape in shapes.items():
        info = archive.getinfo(f"{name}.npy")
        if info.flag_bits & 0x1:
            raise ValueError(f"member {info.filename!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"member {info.filename!r} uses compression method {info.compress_type}")
        with archive.open(info) as member:
            arrays[name] = _read_npy(member, info.filename, shape)
    return arrays


def _read_npy(member, member_name: str, shape) -> np.ndarray:
    """One ``.npy`` member whose header must declare ``shape`` and a real dtype; reads at most the
    bytes such an array takes (plus one, to see that nothing follows)."""
    version = np.lib.format.read_magic(member)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"member {member_name!r} has .npy format version {version}")
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    stored_shape, fortran_order, dtype = read_header(member)
    if tuple(stored_shape) != shape:
        raise ValueError(
            f"member {member_name!r} holds an array of shape {tuple(stored_shape)}, expected {shape}"
        )
    if dtype.kind not in "fiu":
        raise ValueError(f"member {member_name!r} holds dtype {dtype}, expected real numbers")
    size = math.prod(shape) * dtype.itemsize
    data = member.read(size + 1)
    if len(data) < size:
        raise ValueError(f"member {member_name!r} is truncated: {len(data)} of {size} data bytes")
    if len(data) > size:
        raise ValueError(f"member {member_name!r} has data past the {size} bytes of its array")
    if fortran_order:
        return np.frombuffer(data, dtype).reshape(shape[::-1]).T
    return np.frombuffer(data, dtype).reshape(shape)


class _ConvTransposeNd:
    ndim = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, dtype="float32",
                 backend=None, seed=None, algorithm="auto", precision=None, autotune=None):
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        self.kernel_size = spatial_tuple(kernel_size, "kernel_size", self.ndim)
        if any(k <= 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be positive, got kernel_size={self.kernel_size}")
        self.stride, self.padding, self.output_padding, self.dilation = check_hyperparameters(
            self.ndim, stride, padding, output_padding, dilation
        )
        # PyTorch's dtype=None means its default, float32 (np.dtype(None) would be float64).
        self.dtype = float_dtype("float32" if dtype is None else dtype)
        self.algorithm = check_algorithm(algorithm, ALGORITHMS)
        # None follows cudeconv.get_default_precision() at each call
        self.precision = None if precision is None else check_precision(precision)
        # None follows cudeconv.set_autotune at each call; applies to algorithm="auto" only
        self.autotune = check_autotune(autotune)
        self.backend = backends.default_name() if backend is None else backends.check_name(backend)
        self._impl = backends.get(self.backend)

        # PyTorch's reset_parameters: kaiming_uniform_(a=sqrt(5)) gives bound
        # gain·sqrt(3/fan_in) = sqrt(2/(1+5))·sqrt(3/fan_in) = 1/sqrt(fan_in), with fan_in taken from
        # the weight tensor's dim 1 (C_out/groups) times the kernel; the bias uses the same bound.
        weight_shape = (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        fan_in = weight_shape[1] * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        rng = np.random.default_rng(seed)
        self.weight = Parameter(self._to_backend(rng.uniform(-bound, bound, weight_shape)))
        self.bias = (
            Parameter(self._to_backend(rng.uniform(-bound, bound, (self.out_channels,))))
            if bias else None
        )
        self._saved = None

    # -- arrays ---------------------------------------------------------------------------------
    def _to_backend(self, array):
        return self._impl.asarray(np.asarray(array).astype(self.dtype))

    def parameters(self):
        return [p for p in (self.weight, self.bias) if p is not None]

    def zero_grad(self, set_to_none=True):
        """Forget the accumulated gradients: set them to None (PyTorch's default), or with
        ``set_to_none=False`` fill them with zeros in place (keeps their memory, e.g. in a CUDA graph)."""
        for p in self.parameters():
            p.zero_grad(set_to_none)

    def state_dict(self):
        """``{"weight": array, "bias": array}`` (bias only when the layer has one), copies."""
        state = {"weight": self.weight.data.copy()}
        if self.bias is not None:
            state["bias"] = self.bias.data.copy()
        return state

    def _state_shapes(self):
        """The state_dict's names and the shapes their arrays must have."""
        return {name: tuple(getattr(self, name).shape) for name in self._state_names()}

    def _state_names(self):
        return ("weight",) if self.bias is None else ("weight", "bias")

    def load_state_dict(self, state):
        """Load ``{"weight", "bias"}`` arrays (NumPy or CuPy, e.g. from a PyTorch state_dict).

        All or nothing: every key, array type, dtype and shape is checked and every array copied
        to the layer's backend and dtype before any parameter changes, so a refused state leaves
        the layer as it was.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a dict of arrays, got {type(state).__name__}")
        shapes = self._state_shapes()
        if set(state) != set(shapes):
            raise ValueError(
                f"state_dict must have keys {sorted(shapes)}, got {sorted(state, key=repr)}"
            )
        arrays = {}
        for name, shape in shapes.items():
            value = as_backend_array(state[name], f"state_dict[{name!r}]")
            check_state_array(value, f"state_dict[{name!r}]")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {tuple(value.shape)}, the layer's {name} "
                    f"has shape {shape}"
                )
            arrays[name] = self._impl.asarray(value).astype(self.dtype, order="C", copy=True)
        for name, array in arrays.items():
            getattr(self, name).data = array

    def save(self, path):
        """Write the state_dict as an uncompressed ``.npz`` to exactly ``path`` (no suffix is
        added), atomically: into a temporary file beside it, flushed to disk, then renamed over
        ``path``, so a save that fails leaves the previous file intact. bfloat16 arrays are stored
        as float32 (exactly: every bfloat16 is a float32; ``.npy`` has no bfloat16 type) and load
        back bitwise."""
        path = _checkpoint_path(path)
        state = {}
        for name in self._state_names():
            array = backends.get("numpy").asarray(getattr(self, name).data)
            state[name] = array.astype(np.float32) if array.dtype == BFLOAT16 else array
        write_atomically(path, lambda file: np.savez(file, **state))

    def load(self, path):
        """Read a checkpoint written by :meth:`save` from exactly ``path`` (never unpickles).

        The archive's member names and each array's header (shape, dtype) are checked before any
        data is read, and only the expected members are read, each bounded by the size of the
        layer's array. A file that is not such a checkpoint raises ValueError naming it; the layer
        changes only when everything loaded (see :meth:`load_state_dict`).
        """
        path = _checkpoint_path(path)
        self.load_state_dict(_read_checkpoint(path, self._state_shapes()))

    # -- passes ---------------------------------------------------------------------------------
    def _output_padding(self, x, output_size):
        if output_size is None:
            return self.output_padding
        leading_dims = x.ndim - self.ndim
        return output_padding_for(
            output_size, self.ndim, tuple(x.shape[leading_dims:]), self.kernel_size, self.stride,
            self.padding, self.dilation, leading_dims,
        )

    def forward(self, x, output_size=None):
        """y = conv_transpose(x); ``output_size`` (spatial, or full N, C, *spatial) picks among the
        sizes a strided layer can produce, as in PyTorch. Caches x for :meth:`backward`.
        A PyTorch tensor (or another framework's array) in gives one out (:mod:`cudeconv._interop`);
        y, and :meth:`backward`'s grad_input, take x's memory format (:mod:`cudeconv._memory_format`)."""
        (x,), give_back = take_arrays(input=x, required=("input",))
        if x.ndim not in (self.ndim + 1, self.ndim + 2):
            raise ValueError(
                f"input must be {self.ndim + 2}-d (N, C_in, *spatial) or {self.ndim + 1}-d "
                f"(C_in, *spatial), got shape {tuple(x.shape)}"
            )
        output_padding = self._output_padding(x, output_size)
        y = _forward(
            self.ndim, x, self.weight.data, None if self.bias is None else self.bias.data,
            self.stride, self.padding, output_padding, self.groups, self.dilation,
            backend=self.backend, algorithm=self.algorithm, precision=self.precision, autotune=self.autotune,
        )
        self._saved = (x, output_padding)
        return give_back(y)

    __call__ = forward

    def backward(self, grad_output):
        """grad_input for the last forward's input; accumulates into weight.grad and bias.grad."""
        if self._saved is None:
            raise RuntimeError("backward() called before forward()")
        (grad_output,), give_back = take_arrays(grad_output=grad_output, required=("grad_output",))
        x, output_padding = self._saved
        grad_input, grad_weight, grad_bias = _backward(
            self.ndim, grad_output, x, self.weight.data, self.stride, self.padding,
            output_padding, self.groups, self.dilation, bias=self.bias is not None,
            backend=self.backend, precision=self.precision, algorithm=backward_algorithm(self.algorithm),
            autotune=self.autotune,
        )
        self.weight.accumulate_grad(grad_weight)
        if self.bias is not None:
            self.bias.accumulate_grad(grad_bias)
        return give_back(grad_input)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, output_padding={self.output_padding}, "
            f"groups={self.groups}, dilation={self.dilation}, bias={self.bias is not None}, "
            f"dtype={self.dtype}, backend={self.backend!r}, algorithm={self.algorithm!r}, "
            f"precision={self.precision!r}, autotune={self.autotune!r}"
        )

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class ConvTranspose1d(_ConvTransposeNd):
    """1-d transposed convolution layer: x (N, C_in, L) -> (N, C_out, L_out)."""

    ndim = 1


class ConvTranspose2d(_ConvTransposeNd):
    """2-d transposed convolution layer: x (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""

    ndim = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-d transposed convolution layer: x (N, C_in, D, H, W) -> (N, C_out, D_out, H_out, W_out)."""

    ndim = 3
