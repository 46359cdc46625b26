"""Named real-world transposed-convolution shapes, shared by the benchmarks and the CLI.

Each case is a layer from a published architecture (or a textbook example), with the batch size
people train it with. ``Case.quick()`` shrinks a case (batch, channels, spatial size) so that a whole
suite runs in about a minute on two CPU cores while keeping its kernel/stride/padding geometry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Tuple

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
            "dilation": list(self.dilation), "bias": self.bias, "source": self.source,
        }

    def kwargs(self) -> dict:
        """Keyword arguments of ``conv_transpose{d}d`` (besides x, weight, bias)."""
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                    groups=self.groups, dilation=self.dilation)

    def with_batch(self, batch: int) -> "Case":
        return replace(self, batch=batch)

    def quick(self) -> "Case":
        """A smaller case of the same geometry: batch ≤ 2, channels ≤ 32 (kept divisible by groups),
        ≤ 4096 input positions."""
        shrink = max(1, math.ceil(max(self.in_channels, self.out_channels) / 32))
        # Shrink the number of groups, keeping channels per group (depthwise stays depthwise).
        groups = max(1, self.groups // shrink) if self.groups > 1 else 1
        cin_g, cout_g = self.in_channels // self.groups, self.out_channels // self.groups
        if self.groups == 1:
            cin_g, cout_g = max(1, cin_g // shrink), max(1, cout_g // shrink)
        cin, cout = groups * cin_g, groups * cout_g
        in_size = tuple(self.in_size)
        while math.prod(in_size) > 4096:
            in_size = tuple(max(1, s // 2) for s in in_size)
        return replace(self, batch=min(self.batch, 2), in_channels=cin, out_channels=cout,
                       groups=groups, in_size=in_size)

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
    _case("textbook", "textbook example: 2×2 → 4×4, 3×3 kernel, stride 1, padding 0 (the full "
          "convolution over the input zero-padded by 2)", 1, 1, 1, (2, 2), 3, 1, 0),
)

BY_NAME = {case.name: case for case in SUITE}
