"""``cudeconv demo``: learn super-resolution with the library's layers and SGD.

The model is a small decoder,

    ConvTranspose2d(3→16 channels, kernel 2·scale, stride scale) → ReLU →
    ConvTranspose2d(16→3 channels, kernel 3, stride 1, padding 1),

trained with ``cudeconv.SGD`` (momentum) to turn images shrunk ``scale``× (by averaging
``scale``×``scale`` blocks) back into the originals. The images are made up on the fly (no
downloads): soft coloured blobs over tilted stripes, with values in [-1, 1]. The loss is the mean
squared error; ReLU, the loss and their gradients are written in the backend's array module, and
the layers' ``backward`` does the rest.

For reference the summary also gives the loss of the simplest upsampler, repeating every pixel
``scale``×``scale`` times, on the same held-out images. With the same ``--seed`` the NumPy backend
gives the same losses, bit for bit.

With ``--distributed``, under ``mpiexec -n N``, N processes train one decoder data-parallel
(:mod:`cudeconv.distributed`: MPI on the CPU backends, NCCL on "cuda", one GPU per process): each
makes the whole batch and keeps its N-th of it, the gradients are averaged across the processes
before every step, and the loss printed (by the first process) is the whole batch's, so it
matches a single process's run with the same seed to float rounding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List

import numpy as np

from . import backends
from .distributed import DataParallel
from .layers import ConvTranspose2d
from .optim import SGD

DEFAULTS = dict(steps=300, batch=16, size=32, scale=2, lr=0.3, momentum=0.9, seed=0)
HIDDEN = 16
HELD_OUT = 16  # images the trained decoder is scored on
EXAMPLES = 4  # of which the picture shows these


def synthetic_images(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """``batch`` RGB images (batch, 3, size, size), float32 in [-1, 1]: three Gaussian blobs of
    random colour, width and place over stripes of random angle, frequency and colour."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    blobs = 3
    centre = rng.uniform(0.1, 0.9, (batch, blobs, 2, 1, 1))
    width = rng.uniform(0.08, 0.25, (batch, blobs, 1, 1))
    shapes = np.exp(-((xx - centre[:, :, 0]) ** 2 + (yy - centre[:, :, 1]) ** 2) / (2 * width**2))
    colours = rng.uniform(-1, 1, (batch, blobs, 3))
    image = np.einsum("bkc,bkhw->bchw", colours, shapes)
    angle = rng.uniform(0, np.pi, (batch, 1, 1))
    cycles = rng.uniform(1.5, 4, (batch, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (batch, 1, 1))
    stripes = np.sin(2 * np.pi * cycles * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    image += 0.4 * rng.uniform(-1, 1, (batch, 3, 1, 1)) * stripes[:, None]
    return np.clip(image, -1, 1).astype(np.float32)


def shrink(images: np.ndarray, scale: int) -> np.ndarray:
    """Average ``scale``×``scale`` blocks: the low-resolution input."""
    b, c, h, w = images.shape
    return images.reshape(b, c, h // scale, scale, w // scale, scale).mean(axis=(3, 5))


def repeat_pixels(images: np.ndarray, scale: int) -> np.ndarray:
    return images.repeat(scale, axis=2).repeat(scale, axis=3)


class Decoder:
    """ConvTranspose2d (×scale) → ReLU → ConvTranspose2d (3×3, same size); backward by hand."""

    def __init__(self, scale: int, backend: str, seed: int):
        self.up = ConvTranspose2d(3, HIDDEN, kernel_size=2 * scale, stride=scale, padding=scale // 2,
                                  backend=backend, seed=seed)
        self.out = ConvTranspose2d(HIDDEN, 3, kernel_size=3, padding=1, backend=backend, seed=seed + 1)

    def parameters(self):
        return self.up.parameters() + self.out.parameters()

    def forward(self, x):
        hidden = self.up(x)
        self._active = hidden > 0
        return self.out(hidden * self._active)

    def backward(self, grad_output):
        self.up.backward(self.out.backward(grad_output) * self._active)


@dataclass
class DemoResult:
    backend: str
    steps: int
    batch: int
    size: int
    scale: int
    lr: float
    momentum: float
    seed: int
    ranks: int  # processes that trained it data-parallel (1: a single process)
    losses: List[float]
    seconds: float
    held_out_loss: float  # the trained decoder on the held-out images
    repeat_pixels_loss: float  # repeating pixels, on the same images
    inputs: np.ndarray  # held-out low-resolution inputs, outputs and targets (NumPy, for the picture)
    outputs: np.ndarray
    targets: np.ndarray

    @property
    def window(self) -> int:
        """Steps averaged for the first and last loss (each step sees fresh random images)."""
        return max(1, min(10, self.steps // 10))

    @property
    def first_loss(self) -> float:
        return float(np.mean(self.losses[: self.window]))

    @property
    def last_loss(self) -> float:
        return float(np.mean(self.losses[-self.window:]))

    @property
    def ratio(self) -> float:
        return self.first_loss / self.last_loss


def train(backend="numpy", steps=DEFAULTS["steps"], batch=DEFAULTS["batch"], size=DEFAULTS["size"],
          scale=DEFAULTS["scale"], lr=DEFAULTS["lr"], momentum=DEFAULTS["momentum"],
          seed=DEFAULTS["seed"], progress=True, comm=None) -> DemoResult:
    """Train the decoder; with ``comm`` (a :class:`cudeconv.distributed.Communicator` for
    ``backend``'s arrays) data-parallel on its ranks, each taking an equal share of every batch
    (``batch`` must be a multiple of ``comm.size``), with rank 0's progress bar only."""
    from tqdm import tqdm

    impl = backends.get(backend)
    xp = impl.xp
    rng = np.random.default_rng(seed)
    model = Decoder(scale, backend, seed)
    parallel = None if comm is None else DataParallel(model, comm)
    optimizer = SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    start = time.perf_counter()
    show_progress = progress and (comm is None or comm.rank == 0)
    # disable=None: no bar where stderr is not a terminal (a log file, a pipe)
    with tqdm(range(steps), desc=f"demo ({backend})", disable=None if show_progress else True,
              leave=False) as bar:
        for _ in bar:
            # every rank makes the whole batch (the same images: the same seed) and keeps its
            # share, so the run sees the images a single process would
            targets = synthetic_images(rng, batch, size)
            if parallel is not None:
                targets = parallel.shard(targets)
            inputs, targets = impl.asarray(shrink(targets, scale)), impl.asarray(targets)
            diff = model.forward(inputs) - targets
            loss = (diff * diff).mean().reshape(1)
            optimizer.zero_grad()
            model.backward(diff * xp.float32(2 / diff.size))  # d(mean of squares)/d(output)
            if parallel is not None:
                parallel.average_gradients()
                comm.allreduce_mean(loss)  # equal shares: the mean of their means is the batch's
            optimizer.step()
            losses.append(float(loss[0]))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    seconds = time.perf_counter() - start

    targets = synthetic_images(np.random.default_rng(seed + 1), HELD_OUT, size)
    inputs = shrink(targets, scale)
    outputs = model.forward(impl.asarray(inputs))
    outputs = outputs.get() if hasattr(outputs, "get") else outputs  # CuPy -> NumPy
    return DemoResult(
        backend=backend, steps=steps, batch=batch, size=size, scale=scale, lr=lr, momentum=momentum,
        seed=seed, ranks=1 if comm is None else comm.size, losses=losses, seconds=seconds,
        held_out_loss=float(np.mean((outputs - targets) ** 2)),
        repeat_pixels_loss=float(np.mean((repeat_pixels(inputs, scale) - targets) ** 2)),
        inputs=inputs[:EXAMPLES], outputs=outputs[:EXAMPLES], targets=targets[:EXAMPLES],
    )


def summary(result: DemoResult) -> str:
    w = result.window
    return "\n".join([
        f"cudeconv demo: {result.scale}× super-resolution of {result.size}×{result.size} synthetic images, "
        f"backend {result.backend!r}, {result.steps} steps of batch {result.batch} in {result.seconds:.1f} s"
        + (f", data-parallel on {result.ranks} processes" if result.ranks > 1 else ""),
        f"loss (mean squared error, mean of the first/last {w} steps): {result.first_loss:.4g} → "
        f"{result.last_loss:.4g}, {result.ratio:.1f}× lower",
        f"held-out images: decoder {result.held_out_loss:.4g}, "
        f"repeating pixels {result.repeat_pixels_loss:.4g}",
    ])


def to_json(result: DemoResult) -> dict:
    keys = ("backend", "steps", "batch", "size", "scale", "lr", "momentum", "seed", "ranks", "losses", "seconds",
            "held_out_loss", "repeat_pixels_loss", "first_loss", "last_loss", "ratio", "window")
    return {key: getattr(result, key) for key in keys}


def plot(result: DemoResult, path) -> None:
    """A PNG: held-out input / output / target rows, and the loss curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = len(result.targets)
    fig = Figure(figsize=(11, 2.6 * rows), constrained_layout=True)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, 5)
    as_rgb = lambda image: np.clip((image.transpose(1, 2, 0) + 1) / 2, 0, 1)  # noqa: E731
    columns = (("input (low resolution)", result.inputs), ("output", result.outputs),
               ("target", result.targets))
    for row in range(rows):
        for col, (title, images) in enumerate(columns):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(as_rgb(images[row]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
    curve = fig.add_subplot(grid[:, 3:])
    curve.plot(np.arange(1, result.steps + 1), result.losses, lw=1, label="training loss")
    curve.axhline(result.repeat_pixels_loss, color="gray", ls="--", label="repeating pixels (held out)")
    curve.axhline(result.held_out_loss, color="C2", ls=":", label="decoder (held out)")
    curve.set_yscale("log")
    curve.set_xlabel("step")
    curve.set_ylabel("mean squared error")
    curve.set_title(f"loss: {result.first_loss:.3g} → {result.last_loss:.3g} ({result.ratio:.1f}× lower)")
    curve.legend(fontsize=8)
    fig.suptitle(f"cudeconv demo: {result.scale}× super-resolution on {result.backend!r}, "
                 f"seed {result.seed}")
    fig.savefig(path, dpi=90)
