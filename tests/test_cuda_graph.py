"""A whole training step on the "cuda" backend captured in a CUDA graph and replayed.

Stream capture fails on any host synchronization or device-to-host copy, so a successful capture
shows that forward, backward and SGD.step() stay on the device; replays must give bitwise the same
parameters as the same steps run eagerly. Needs a GPU (skips with the reason elsewhere: the
emulator has no streams or graphs).
"""
import numpy as np
import pytest

import cudeconv
from conftest import require_cuda

STEPS = 5


@pytest.fixture
def cupy():
    require_cuda()
    import cupy

    return cupy


def _train_step(layer, opt, x, target, keep):
    layer.zero_grad(set_to_none=False)  # keeps the gradient arrays the graph writes into
    y = layer(x)
    grad_input = layer.backward(2.0 * (y - target) / y.size)
    opt.step()
    keep[:] = [y, grad_input]  # the graph's temporaries stay allocated between replays


@pytest.mark.parametrize("algorithm", ["auto", "gemm", "gather", "scatter"])
def test_cuda_graph_replays_a_training_step(cupy, algorithm):
    rng = np.random.default_rng(1)
    x = cupy.asarray(rng.standard_normal((4, 16, 8, 8)).astype(np.float32))
    target = cupy.asarray(rng.standard_normal((4, 8, 16, 16)).astype(np.float32))

    def make():
        layer = cudeconv.ConvTranspose2d(16, 8, 4, stride=2, padding=1, backend="cuda", seed=0,
                                         algorithm=algorithm)
        return layer, cudeconv.SGD(layer.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    keep = []
    eager_layer, eager_opt = make()
    for _ in range(1 + STEPS):
        _train_step(eager_layer, eager_opt, x, target, keep)

    layer, opt = make()
    # The layer's weights were uploaded on the legacy default stream, which a non-blocking
    # stream does not wait for.
    cupy.cuda.Stream.null.synchronize()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        _train_step(layer, opt, x, target, keep)  # warm-up: compiles, creates grads and buffers
        stream.synchronize()
        stream.begin_capture()
        _train_step(layer, opt, x, target, keep)
        graph = stream.end_capture()
        for _ in range(STEPS):
            graph.launch(stream)
        stream.synchronize()
    for name in ("weight", "bias"):
        got = cupy.asnumpy(getattr(layer, name).data)
        want = cupy.asnumpy(getattr(eager_layer, name).data)
        if algorithm != "scatter":  # deterministic kernels: replay is bitwise the eager run
            assert got.tobytes() == want.tobytes(), f"{name} differs by {np.abs(got - want).max()}"
        else:  # atomics: the order of the adds may differ between runs
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
