"""Memory formats at the API boundary: results come back in the input's layout, as in PyTorch.

An ``(N, C, *spatial)`` array is *channels-last* when its strides put C innermost, then the
spatial dims from last to first, then N: PyTorch's ``channels_last`` (4-d, NHWC in memory) and
``channels_last_3d`` (5-d, NDHWC), and for 1-d problems an ``(N, C, L)`` array over ``(N, L, C)``
memory. Every other array is *contiguous* here (the NCHW layout). The backends compute in NCHW
(the kernel launch layer copies any other layout to it, except where a tensor-core forward reads a
channels-last x in place as its packed operand: docs/kernels.md); the functional API then gives the
forward's y and the backward's grad_input the memory format of x, on every backend. Where this
differs from PyTorch: only x decides (PyTorch also goes channels-last for a channels-last weight
alone), grad_weight keeps the weight's layout (as ``weight.grad`` does in PyTorch), and PyTorch has no
channels-last format for 3-d tensors (its conv_transpose1d returns contiguous results) — the 1-d
rule lets (N, L, C) data keep its layout.

Where some sizes are 1 (C == 1, or all spatial sizes 1) both layouts describe the same memory
order and PyTorch's ``is_contiguous`` holds for both; PyTorch still tells them apart by the strides
of the size-1 dims (``Tensor.suggest_memory_format``, c10's ``is_channels_last_strides_2d/3d``),
so that a tensor made by ``.to(memory_format=torch.channels_last)`` gives channels-last results and
a C-contiguous one contiguous results. :func:`is_channels_last` is that rule, so the degenerate
sizes behave as in PyTorch too; a zero-size array is contiguous.
"""
from __future__ import annotations

import importlib

CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"


def _is_channels_last_strides(shape, strides) -> bool:
    """c10's ``is_channels_last_strides_2d_s4`` / ``_3d_s5``, for any rank from 3 (the 1-d case
    follows the same pattern): walking C, the spatial dims from last to first, then N, each stride
    is at least the span of the dims walked before it."""
    if strides[1] == 0:  # a broadcast C: NCHW, as in PyTorch
        return False
    span = 0
    for dim in (1, *range(len(shape) - 1, 1, -1), 0):
        if shape[dim] == 0 or strides[dim] < span:
            return False
        # N's stride equal to C's span: the ambiguous N11..1 case, which PyTorch resolves to NCHW
        if dim == 0 and span == strides[1]:
            return False
        span = strides[dim] * shape[dim] if shape[dim] > 1 else strides[dim]
    return True


def is_channels_last(array, *, unbatched: bool = False) -> bool:
    """Whether ``array`` (N, C, *spatial), 3-d to 5-d, is channels-last (see the module docstring);
    any other rank is not.

    With ``unbatched``, ``array`` is (C, *spatial) and is judged as PyTorch judges it: after its
    ``unsqueeze(0)``, whose new leading stride is C's size times C's stride (not NumPy's 0 for
    ``array[None]``). So a usual HWC-backed (C, H, W) gives contiguous results, as in PyTorch.
    """
    shape, strides = tuple(array.shape), tuple(array.strides)
    if unbatched:
        shape, strides = (1,) + shape, (shape[0] * strides[0],) + strides
    if len(shape) not in (3, 4, 5):
        return False
    return _is_channels_last_strides(shape, strides)


def memory_format_of(array, *, unbatched: bool = False) -> str:
    """:data:`CHANNELS_LAST` or :data:`CONTIGUOUS`: the layout results for ``array`` take."""
    return CHANNELS_LAST if is_channels_last(array, unbatched=unbatched) else CONTIGUOUS


def _array_module(array):
    """numpy or cupy: the module whose functions work on ``array``."""
    return importlib.import_module(type(array).__module__.split(".")[0])


def to_memory_format(result, memory_format: str):
    """The NCHW result ``result`` (N, C, *spatial) laid out in ``memory_format``: C-contiguous,
    or channels-last (a copy with C innermost, viewed back to the logical NCHW shape)."""
    xp = _array_module(result)
    if memory_format == CONTIGUOUS:
        return xp.ascontiguousarray(result)
    if memory_format != CHANNELS_LAST:
        raise ValueError(f"memory_format must be {CONTIGUOUS!r} or {CHANNELS_LAST!r}, got {memory_format!r}")
    channels_innermost = xp.moveaxis(result, 1, -1)
    # A fresh array, not ascontiguousarray: where C or the spatial sizes are 1 that would keep the
    # NCHW strides of the size-1 dims, which PyTorch then reads as contiguous.
    copy = xp.empty(channels_innermost.shape, dtype=result.dtype)
    copy[...] = channels_innermost
    return xp.moveaxis(copy, -1, 1)
