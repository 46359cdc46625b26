"""Named real-world transposed-convolution shapes, shared by the benchmarks and the CLI.

Each case is a layer from a published architecture (or a textbook example), with the batch size
people train it with. ``Case.quick(limits)`` shrinks a case (batch, channels, spatial size) within
:class:`QuickLimits` while keeping its kernel/stride/padding/dilation geometry: ``QUICK`` for the
NumPy and CUDA backends, the much smaller ``QUICK_EMULATOR`` for the emulator, which runs every GPU
thread of a kernel as a CPU fiber.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

import numpy as np

from ._geometry import ConvTransposeGeometry, make_geometry


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    batch: int
    in_channels: int
    out_channels: int
    in_size: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    output_padding: Tuple[int, ...] = None
    groups: int = 1
    dilation: Tuple[int, ...] = None
    bias: bool = True
    tags: Tuple[str, ...] = field(default=())
    shrunk_from: Optional["Case"] = None  # the real layer, for a case made by quick()

    def __post_init__(self):
        ndim = len(self.in_size)
        if self.output_padding is None:
            object.__setattr__(self, "output_padding", (0,) * ndim)
        if self.dilation is None:
            object.__setattr__(self, "dilation", (1,) * ndim)

    @property
    def ndim(self) -> int:
        return len(self.in_size)

    def geometry(self) -> ConvTransposeGeometry:
        return make_geometry(
            self.ndim,
            (self.batch, self.in_channels) + self.in_size,
            (self.in_channels, self.out_channels // self.groups) + self.kernel_size,
            self.stride, self.padding, self.output_padding, self.groups, self.dilation,
        )

    def config(self) -> dict:
        """The case's arguments as plain JSON-able values."""
        return {
            "batch": self.batch, "in_channels": self.in_channels, "out_channels": self.out_channels,
            "in_size": list(self.in_size), "kernel_size": list(self.kernel_size),
            "stride": list(self.stride), "padding": list(self.padding),
            "output_padding": list(self.output_padding), "groups": self.groups,
            "dilation": list(self.dilation), "bias": self.bias,
        }

    def kwargs(self) -> dict:
        """Keyword arguments of ``conv_transpose{d}d`` (besides x, weight, bias)."""
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                    groups=self.groups, dilation=self.dilation)

    def with_batch(self, batch: int) -> "Case":
        return replace(self, batch=batch)

    def quick(self, limits: "QuickLimits") -> "Case":
        """A smaller case of the same geometry within ``limits``: the batch is capped, then channels
        are halved (groups first, so depthwise stays depthwise) while above ``limits.channels`` or
        while the weight has more than ``limits.filter_elements`` elements, then the spatial size while above ``limits.positions``, then the spatial size or else the
        channels while a pass costs more than ``limits.flops``. ``source`` says what it was shrunk
        from; a case already within the limits comes back with a ``source`` that says so."""
        case = replace(self, batch=min(self.batch, limits.batch))
        while True:
            smaller = case._halved_channels(limits.channels)
            if smaller is None and case.geometry().taps * case.in_channels * (
                    case.out_channels // case.groups) > limits.filter_elements:
                smaller = case._halved_channels(1)
            if smaller is None and math.prod(case.in_size) > limits.positions:
                smaller = case._halved_spatial()
            if smaller is None and case.geometry().flops() > limits.flops:
                smaller = case._halved_spatial() or case._halved_channels(1)
            if smaller is None:
                break
            case = smaller
        if case.config() == self.config():
            return replace(self, source=f"{self.source} (already within --quick's limits: as is)")
        return replace(case, source=f"shrunk by --quick from: {self.source}", shrunk_from=self)

    def _halved_channels(self, floor: int) -> Optional["Case"]:
        """Channels above ``floor`` halved (not below it); None when none is above it."""
        if max(self.in_channels, self.out_channels) <= floor:
            return None
        if self.groups > 1 and max(self.in_channels, self.out_channels) // self.groups <= floor:
            groups = self.groups // 2  # per-group channels kept: fewer groups
            cin_g, cout_g = self.in_channels // self.groups, self.out_channels // self.groups
            return replace(self, groups=groups, in_channels=groups * cin_g, out_channels=groups * cout_g)
        halve = lambda c: max(c // 2, floor) if c > floor else c  # noqa: E731
        cin_g, cout_g = halve(self.in_channels // self.groups), halve(self.out_channels // self.groups)
        return replace(self, in_channels=self.groups * cin_g, out_channels=self.groups * cout_g)

    def _halved_spatial(self) -> Optional["Case"]:
        """Every spatial size of 4 or more halved; None when none is."""
        in_size = tuple(s // 2 if s >= 4 else s for s in self.in_size)
        return None if in_size == self.in_size else replace(self, in_size=in_size)

    def arrays(self, dtype, seed=0):
        """Random x, weight, bias (None without bias) and grad_output as NumPy arrays."""
        geom = self.geometry()
        rng = np.random.default_rng(seed)
        fan = (self.out_channels // self.groups) * math.prod(self.kernel_size)
        x = rng.standard_normal(geom.input_shape).astype(dtype)
        weight = (rng.uniform(-1, 1, geom.weight_shape) / math.sqrt(fan)).astype(dtype)
        bias = rng.uniform(-1, 1, (self.out_channels,)).astype(dtype) if self.bias else None
        grad_output = rng.standard_normal(geom.output_shape).astype(dtype)
        return x, weight, bias, grad_output


def _case(name, source, batch, cin, cout, in_size, k, s, p, **kw) -> Case:
    ndim = len(in_size)
    as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim
    for key in ("output_padding", "dilation"):
        if key in kw:
            kw[key] = as_tuple(kw[key])
    return Case(name, source, batch, cin, cout, tuple(in_size), as_tuple(k), as_tuple(s), as_tuple(p), **kw)


SUITE = (
    _case("dcgan_g2", "DCGAN generator (Radford et al. 2015), 512→256 channels, 8²→16², k4 s2 p1",
          64, 512, 256, (8, 8), 4, 2, 1),
    _case("dcgan_g3", "DCGAN generator, 256→128 channels, 16²→32², k4 s2 p1",
          64, 256, 128, (16, 16), 4, 2, 1),
    _case("dcgan_g4", "DCGAN generator output layer, 128→3 channels, 32²→64², k4 s2 p1",
          64, 128, 3, (32, 32), 4, 2, 1),
    _case("unet_up", "U-Net up-convolution (Ronneberger et al. 2015), 256→128 channels, 32²→64², k2 s2",
          16, 256, 128, (32, 32), 2, 2, 0),
    _case("fcn8s_up8", "FCN-8s ×8 upsampling (Long et al. 2015), 21 classes, 64²→512², k16 s8 p4",
          1, 21, 21, (64, 64), 16, 8, 4),
    _case("hifigan_up1", "HiFi-GAN V1 first upsampler (Kong et al. 2020), 1-d, 512→256 channels, k16 s8 p4",
          16, 512, 256, (128,), 16, 8, 4),
    _case("vnet_up", "V-Net decoder up-convolution (Milletari et al. 2016), 3-d, 128→64 channels, 16³→32³, k2 s2",
          2, 128, 64, (16, 16, 16), 2, 2, 0),
    _case("depthwise_up", "depthwise ×2 upsampling (groups = channels = 256), 32²→64², k4 s2 p1",
          16, 256, 256, (32, 32), 4, 2, 1, groups=256),
    _case("dilated_op", "dilated, with output_padding: 64→64 channels, 32²→66², k3 s2 p1 op1 d2",
          16, 64, 64, (32, 32), 3, 2, 1, output_padding=1, dilation=2),
    _case("deep_4x4", "DCGAN generator's first stride-2 layer, 1024→512 channels, 4²→8², k4 s2 p1: a deep layer "
          "at small spatial size (few M×N tiles, long K)", 64, 1024, 512, (4, 4), 4, 2, 1),
    _case("hifigan_up4", "HiFi-GAN V1 last upsampler, 1-d, 64→32 channels, 4096→8192 samples, k4 s2 p1: a vocoder "
          "layer on long sequences", 16, 64, 32, (4096,), 4, 2, 1),
    _case("grouped_up3d", "grouped 3-d upsampler (groups 4), 32→32 channels, 16³→32³, k4 s2 p1",
          2, 32, 32, (16, 16, 16), 4, 2, 1, groups=4),
    _case("textbook", "textbook example: 2×2 → 4×4, 3×3 kernel, stride 1, padding 0 (the full "
          "convolution over the input zero-padded by 2)", 1, 1, 1, (2, 2), 3, 1, 0),
)

BY_NAME = {case.name: case for case in SUITE}


@dataclass(frozen=True)
class QuickLimits:
    """Bounds of a case shrunk by ``Case.quick``."""

    batch: int
    channels: int  # per input and per output
    positions: int  # input positions (product of the spatial sizes)
    flops: float  # of one convolution pass, ``ConvTransposeGeometry.flops()``
    filter_elements: int  # of the weight, C_in·C_out/groups·∏kernel_size

    def describe(self) -> str:
        return (f"batch ≤ {self.batch}, ≤ {self.channels} channels, ≤ {self.positions} input positions, "
                f"≤ {self.flops:.0e} flops per pass, ≤ {self.filter_elements} weights")


# The suite in well under a minute on two CPU cores with the NumPy backend and PyTorch.
QUICK = QuickLimits(batch=2, channels=32, positions=4096, flops=2e7, filter_elements=2**17)
# The emulator runs each GPU thread as a fiber and each block's reduction through real barriers;
# its cost grows with threads and barriers, not flops. The weight gradient, one block per 8 filter
# elements, takes about 0.7 ms per block on two cores: a few hundred weights at most.
QUICK_EMULATOR = QuickLimits(batch=2, channels=4, positions=64, flops=1e6, filter_elements=512)
