"""Capture a whole training step (zero_grad, forward, loss gradient, backward, SGD step) in a CUDA
graph and replay it: it must give bitwise the same parameters as running the steps eagerly.

Stream capture fails on any host synchronization or device-to-host copy, so a successful capture
also shows that forward, backward and step() stay on the device.
"""
import cupy
import numpy as np

import cudeconv

STEPS = 5


def make(seed=0):
    layer = cudeconv.ConvTranspose2d(16, 8, 4, stride=2, padding=1, backend="cuda", seed=seed)
    opt = cudeconv.SGD(layer.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return layer, opt


def train_step(layer, opt, x, target, keep):
    layer.zero_grad(set_to_none=False)
    y = layer(x)
    grad = 2.0 * (y - target) / y.size
    grad_input = layer.backward(grad)
    opt.step()
    keep[:] = [y, grad, grad_input]  # the graph's temporaries stay allocated between replays


def main():
    rng = np.random.default_rng(1)
    x = cupy.asarray(rng.standard_normal((4, 16, 8, 8)).astype(np.float32))
    target = cupy.asarray(rng.standard_normal((4, 8, 16, 16)).astype(np.float32))

    eager_layer, eager_opt = make()
    keep = []
    for _ in range(1 + STEPS):
        train_step(eager_layer, eager_opt, x, target, keep)

    layer, opt = make()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        train_step(layer, opt, x, target, keep)  # warm-up: compiles kernels, creates grads and buffers
        stream.synchronize()
        stream.begin_capture()
        train_step(layer, opt, x, target, keep)
        graph = stream.end_capture()
        for _ in range(STEPS):
            graph.launch(stream)
        stream.synchronize()
    for name in ("weight", "bias"):
        got = cupy.asnumpy(getattr(layer, name).data)
        want = cupy.asnumpy(getattr(eager_layer, name).data)
        assert got.tobytes() == want.tobytes(), f"{name}: graph replay differs by {np.abs(got - want).max()}"
    print(f"ok  CUDA graph: {STEPS} replays of a captured training step match eager steps bitwise")


if __name__ == "__main__":
    main()
