"""SGD against a plain-Python reference (tests/oracle.sgd_ref) and torch.optim.SGD, plus a short
training run of a ConvTranspose2d."""
import copy
import itertools

import numpy as np
import pytest

import cudeconv
from cudeconv._dtypes import BFLOAT16

from conftest import assert_close, rounding_unit, to_backend, to_numpy
from oracle import sgd_ref

SHAPES = ((3, 4), (5,), (2, 1, 3))
STEPS = 5


def _options():
    out = []
    for momentum, dampening, nesterov, wd, maximize in itertools.product(
            (0.0, 0.9), (0.0, 0.5), (False, True), (0.0, 0.1), (False, True)):
        if nesterov and (momentum == 0 or dampening != 0):
            continue
        out.append(dict(momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=wd, maximize=maximize))
    return out


OPTIONS = _options()


def _opt_id(o):
    return (f"m{o['momentum']}-d{o['dampening']}-{'nest' if o['nesterov'] else 'plain'}"
            f"-wd{o['weight_decay']}-{'max' if o['maximize'] else 'min'}")


def _problem(dtype, seed=0, steps=STEPS, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def _assert_params(actual, expected, dtype, step, name):
    """Compare a parameter after ``step`` + 1 updates with the float64 reference."""
    actual = to_numpy(actual)
    assert actual.dtype == np.dtype(dtype), f"{name}: dtype {actual.dtype} != {np.dtype(dtype)}"
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if np.dtype(dtype) == np.float16:
        # each update rounds the stored value to half: at most one rounding per step adds up
        bound = 2 * (step + 1) * rounding_unit(np.float16) * scale + 1e-3 * rounding_unit(np.float16)
        err = np.abs(actual.astype(np.float64) - expected)
        assert np.all(err <= bound), f"{name}: worst |err| {err.max():.3g} > bound {bound:.3g}"
    else:
        assert_close(actual, expected, dtype, 6 * (step + 1), scale=scale, name=name)


def _run(params0, grads, backend, dtype, lr=0.1, check_grads_unchanged=True, **opts):
    params = [cudeconv.Parameter(to_backend(p.copy(), backend)) for p in params0]
    opt = cudeconv.SGD(params, lr=lr, backend=backend, **opts)
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else to_backend(g.copy(), backend)
        before = [None if p.grad is None else to_numpy(p.grad).copy() for p in params]
        opt.step()
        if check_grads_unchanged:
            for i, (p, b) in enumerate(zip(params, before)):
                if b is not None:
                    assert np.array_equal(to_numpy(p.grad), b), f"step modified params[{i}].grad"
        history.append([to_numpy(p.data).copy() for p in params])
    return history, params, opt


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("opts", OPTIONS, ids=_opt_id)
def test_sgd_matches_reference(opts, dtype, backend):
    params0, grads = _problem(dtype)
    got, _, _ = _run(params0, grads, backend, dtype, lr=0.1, **opts)
    ref = sgd_ref(params0, grads, 0.1, **opts)
    for t, (g_step, r_step) in enumerate(zip(got, ref)):
        for i, (a, e) in enumerate(zip(g_step, r_step)):
            _assert_params(a, e, dtype, t, f"step {t} params[{i}] ({_opt_id(opts)})")


@pytest.mark.parametrize("opts", OPTIONS, ids=_opt_id)
def test_sgd_float16(opts, backend):
    """float16 parameters: the update is done in float32 and stored back to half."""
    params0, grads = _problem(np.float16, seed=1)
    got, _, _ = _run(params0, grads, backend, np.float16, lr=0.1, **opts)
    ref = sgd_ref(params0, grads, 0.1, **opts)
    for t, (g_step, r_step) in enumerate(zip(got, ref)):
        for i, (a, e) in enumerate(zip(g_step, r_step)):
            _assert_params(a, e, np.float16, t, f"step {t} params[{i}]")


def sgd_float32_math(params0, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                     maximize=False):
    """torch.optim.SGD on bfloat16 parameters the way PyTorch's own kernels update them: each step
    in float32 from the stored bfloat16 values, a float32 momentum buffer, one rounding back."""
    params = [p.copy() for p in params0]
    buffers = [None] * len(params)
    f32 = np.float32
    for step in grads:
        for i, g in enumerate(step):
            p, d_p = params[i].astype(f32), g.astype(f32)
            if maximize:
                d_p = -d_p
            if weight_decay:
                d_p = d_p + f32(weight_decay) * p
            if momentum:
                buffers[i] = d_p.copy() if buffers[i] is None else f32(momentum) * buffers[i] + f32(1 - dampening) * d_p
                d_p = d_p + f32(momentum) * buffers[i] if nesterov else buffers[i]
            params[i] = (p - f32(lr) * d_p).astype(BFLOAT16)
        yield [p.copy() for p in params]


@pytest.mark.parametrize("opts", OPTIONS, ids=_opt_id)
def test_sgd_bfloat16_follows_float32_math_step_for_step(opts, backend):
    """bfloat16 parameters follow the float32-math trajectory: each step equal to it, but for the
    last bit where a fused multiply-add on the GPU rounds the float32 result differently."""
    params0, grads = _problem(BFLOAT16, seed=4)
    got, _, _ = _run(params0, grads, backend, BFLOAT16, lr=0.1, **opts)
    for t, (g_step, r_step) in enumerate(zip(got, sgd_float32_math(params0, grads, 0.1, **opts))):
        for i, (a, e) in enumerate(zip(g_step, r_step)):
            a = to_numpy(a)
            assert a.dtype == BFLOAT16
            ulp = np.spacing(np.abs(e.astype(np.float32))).astype(np.float64) * 2.0**16  # bfloat16 spacing
            diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
            assert np.all(diff <= ulp), f"step {t} params[{i}]: {diff.max():.3g} off"
            if backend == "numpy":  # the same float32 operations: bitwise
                assert a.tobytes() == e.tobytes(), f"step {t} params[{i}]"


def test_sgd_float16_single_update_is_rounded_once(backend):
    """One float16 update equals the exact p - lr·g rounded to half (float32 math, one final
    rounding; the slack covers the float32 -> float16 double rounding)."""
    p0 = np.array([1e-4, -2.5e-3, 0.1, 1.0], np.float16)
    g = np.array([3.0, 0.7, 0.01, 0.3], np.float16)
    got, _, _ = _run([p0], [[g]], backend, np.float16, lr=1e-3)
    exact = p0.astype(np.float64) - 1e-3 * g.astype(np.float64)
    # float32 math then one rounding to half: within one half-ulp of the exact value
    err = np.abs(got[0][0].astype(np.float64) - exact)
    ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    assert np.all(err <= 0.5 * ulp + 4 * rounding_unit(np.float32) * np.abs(exact)), (got[0][0], exact)


@pytest.mark.parametrize("momentum", (0.0, 0.9))
def test_sgd_skips_none_grads(momentum, backend):
    """A parameter whose grad is None is untouched (no weight decay, no momentum buffer update);
    its momentum buffer starts at its first real gradient."""
    params0, grads = _problem(np.float64, seed=2, steps=5)
    pattern = [(None, 1, 1), (1, None, 1), (None, 1, None), (1, 1, 1), (None, None, 1)]
    grads = [[g if keep else None for g, keep in zip(step, keep_row)] for step, keep_row in zip(grads, pattern)]
    opts = dict(momentum=momentum, weight_decay=0.1, dampening=0.0)
    got, _, _ = _run(params0, grads, backend, np.float64, lr=0.1, **opts)
    ref = sgd_ref(params0, grads, 0.1, **opts)
    for t in range(len(grads)):
        for i in range(len(params0)):
            if grads[t][i] is None:
                prev = params0[i] if t == 0 else got[t - 1][i]
                assert np.array_equal(got[t][i], prev), f"params[{i}] moved at step {t} without a grad"
            _assert_params(got[t][i], ref[t][i], np.float64, t, f"step {t} params[{i}]")


def test_sgd_reused_grad_array_is_not_aliased(backend):
    """The first momentum buffer is a copy: keeping the same grad array across steps must not let
    the buffer's in-place updates write into it."""
    params0, grads = _problem(np.float32, seed=3, steps=1)
    params = [cudeconv.Parameter(to_backend(p.copy(), backend)) for p in params0]
    for p, g in zip(params, grads[0]):
        p.grad = to_backend(g.copy(), backend)
    opt = cudeconv.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, backend=backend)
    for _ in range(4):
        opt.step()
        for p, g in zip(params, grads[0]):
            assert np.array_equal(to_numpy(p.grad), g), "grad array modified by step()"
    ref = sgd_ref(params0, [grads[0]] * 4, 0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    for i, p in enumerate(params):
        _assert_params(p.data, ref[-1][i], np.float32, 3, f"params[{i}]")


def test_sgd_zero_grad(backend):
    params0, grads = _problem(np.float32, seed=4, steps=1)
    params = [cudeconv.Parameter(to_backend(p.copy(), backend)) for p in params0]
    for p, g in zip(params, grads[0]):
        p.grad = to_backend(g, backend)
    opt = cudeconv.SGD(params, lr=0.1, backend=backend)
    opt.zero_grad()
    for p in params:
        assert p.grad is None or not np.any(to_numpy(p.grad))
    before = [to_numpy(p.data).copy() for p in params]
    opt.step()  # nothing to apply
    for p, b in zip(params, before):
        assert np.array_equal(to_numpy(p.data), b)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(lr=-0.1), r"\blr\b"),
    (dict(momentum=-0.5), "momentum"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(nesterov=True), "(?i)nesterov"),  # momentum 0
    (dict(nesterov=True, momentum=0.9, dampening=0.5), "(?i)nesterov"),
    (dict(backend="tpu"), "backend"),
])
def test_sgd_validation(kwargs, pattern):
    p = cudeconv.Parameter(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=pattern):
        cudeconv.SGD([p], **{"lr": 0.1, **kwargs})


def test_sgd_nesterov_valid():
    p = cudeconv.Parameter(np.zeros(3, np.float32))
    cudeconv.SGD([p], lr=0.1, momentum=0.9, nesterov=True)  # no error


@pytest.mark.parametrize("opts", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                                  dict(momentum=0.5, dampening=0.3, maximize=True)], ids=str)
def test_sgd_state_dict_round_trip(opts, backend):
    params0, grads = _problem(np.float64, seed=5, steps=6)
    params = [cudeconv.Parameter(to_backend(p.copy(), backend)) for p in params0]
    opt = cudeconv.SGD(params, lr=0.1, backend=backend, **opts)

    def step(o, ps, gs):
        for p, g in zip(ps, gs):
            p.grad = to_backend(g.copy(), backend)
        o.step()

    for t in range(3):
        step(opt, params, grads[t])
    saved = copy.deepcopy(opt.state_dict())
    snapshot = [to_numpy(p.data).copy() for p in params]
    for t in range(3, 6):
        step(opt, params, grads[t])
    expected = [to_numpy(p.data) for p in params]

    params2 = [cudeconv.Parameter(to_backend(s.copy(), backend)) for s in snapshot]
    opt2 = cudeconv.SGD(params2, lr=0.1, backend=backend, **opts)
    opt2.load_state_dict(saved)
    for t in range(3, 6):
        step(opt2, params2, grads[t])
    for i, (p, e) in enumerate(zip(params2, expected)):
        assert_close(p.data, e, np.float64, 4, name=f"params[{i}] after reload")

    # Without the state (fresh momentum buffers) the trajectory differs: the test can fail.
    params3 = [cudeconv.Parameter(to_backend(s.copy(), backend)) for s in snapshot]
    opt3 = cudeconv.SGD(params3, lr=0.1, backend=backend, **opts)
    for t in range(3, 6):
        step(opt3, params3, grads[t])
    assert not all(np.allclose(to_numpy(p.data), e) for p, e in zip(params3, expected))


def test_sgd_load_state_dict_restores_hyperparameters():
    """As in PyTorch, the state_dict carries the hyperparameters (lr here) along."""
    params0, grads = _problem(np.float64, seed=6, steps=2)
    a = [cudeconv.Parameter(p.copy()) for p in params0]
    opt = cudeconv.SGD(a, lr=0.3, momentum=0.9)
    b = [cudeconv.Parameter(p.copy()) for p in params0]
    opt_b = cudeconv.SGD(b, lr=0.01, momentum=0.9)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    for gs in grads:
        for pa, pb, g in zip(a, b, gs):
            pa.grad, pb.grad = g.copy(), g.copy()
        opt.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(pb.data, pa.data, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("opts", [o for o in OPTIONS if o["momentum"] or o["weight_decay"]], ids=_opt_id)
def test_sgd_matches_torch(opts, dtype, backend):
    torch = pytest.importorskip("torch")
    params0, grads = _problem(dtype, seed=7)
    got, _, _ = _run(params0, grads, backend, dtype, lr=0.1, **opts)
    tparams = [torch.tensor(p.copy()) for p in params0]
    topt = torch.optim.SGD(tparams, lr=0.1, **opts)
    for t, step_grads in enumerate(grads):
        for p, g in zip(tparams, step_grads):
            p.grad = torch.tensor(g.copy())
        topt.step()
        for i, (a, p) in enumerate(zip(got[t], tparams)):
            assert_close(a, p.detach().numpy().astype(np.float64), dtype, 12 * (t + 1),
                         scale=max(1.0, float(np.abs(p.detach().numpy()).max())), name=f"step {t} params[{i}] vs torch")


# ------------------------------------------------------------------------------- training

def _regression(backend, dtype="float32", n=8, size=4):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 2, size, size)).astype(dtype)
    teacher = cudeconv.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, seed=1,
                                       dtype=dtype, backend="numpy")
    target = to_numpy(teacher(x))
    student = cudeconv.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, seed=0,
                                       dtype=dtype, backend=backend)
    return x, target, student


def _train(layer, x, target, backend, steps, lr=0.5, momentum=0.9):
    opt = cudeconv.SGD(layer.parameters(), lr=lr, momentum=momentum, backend=backend)
    xb = to_backend(x, backend)
    losses, weights = [], []
    for _ in range(steps):
        y = to_numpy(layer(xb)).astype(np.float64)
        diff = y - target
        losses.append(float(np.mean(diff ** 2)))
        opt.zero_grad()
        layer.backward(to_backend((2 * diff / diff.size).astype(x.dtype), backend))
        opt.step()
        weights.append((to_numpy(layer.weight.data).copy(), to_numpy(layer.bias.data).copy()))
    return losses, weights


def test_training_reduces_loss():
    x, target, student = _regression("numpy")
    losses, _ = _train(student, x, target, "numpy", steps=60)
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])
    assert all(np.isfinite(losses))


def test_training_on_kernel_backend_follows_numpy(kernel_backend):
    x, target, ref_layer = _regression("numpy", n=2, size=3)
    layer = cudeconv.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, seed=0,
                                     backend=kernel_backend)
    layer.load_state_dict({k: to_numpy(v) for k, v in ref_layer.state_dict().items()})
    steps = 6
    ref_losses, ref_weights = _train(ref_layer, x, target, "numpy", steps)
    losses, weights = _train(layer, x, target, kernel_backend, steps)
    assert losses[-1] < losses[0]
    terms = x.shape[0] * x[0, 0].size
    for t in range(steps):
        np.testing.assert_allclose(losses[t], ref_losses[t], rtol=1e-4 * (t + 1))
        scale = max(1.0, float(np.abs(ref_weights[t][0]).max()))
        assert_close(weights[t][0], ref_weights[t][0].astype(np.float64), np.float32, terms * (t + 1),
                     scale=scale, factor=16, name=f"weight after step {t}")
        assert_close(weights[t][1], ref_weights[t][1].astype(np.float64), np.float32, 18 * (t + 1),
                     scale=scale, factor=16, name=f"bias after step {t}")


def test_state_dict_keys_out_of_range_are_refused_and_change_nothing():
    p = cudeconv.Parameter(np.ones(3))
    opt = cudeconv.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(3)
    opt.step()
    saved = opt.state_dict()
    for bad_key in (-1, 5):
        bad = {"state": {bad_key: {"momentum_buffer": np.zeros(3)}},
               "param_groups": [{**saved["param_groups"][0], "lr": 0.5}]}
        with pytest.raises(ValueError, match="parameter"):
            opt.load_state_dict(bad)
        assert opt.param_groups[0]["lr"] == 0.1  # a refused load leaves the optimizer as it was
        np.testing.assert_array_equal(opt.state_dict()["state"][0]["momentum_buffer"],
                                      saved["state"][0]["momentum_buffer"])


def test_param_group_with_a_single_parameter_and_single_parameter_refused():
    p, q = cudeconv.Parameter(np.ones(2)), cudeconv.Parameter(np.ones(2))
    opt = cudeconv.SGD([{"params": p}, {"params": [q], "lr": 0.5}], lr=0.1)
    p.grad, q.grad = np.ones(2), np.ones(2)
    opt.step()
    np.testing.assert_allclose(p.data, 0.9)
    np.testing.assert_allclose(q.data, 0.5)
    with pytest.raises(TypeError, match="iterable"):
        cudeconv.SGD(p, lr=0.1)


# ------------------------------------------------------------------------- PyTorch interop

# Three groups numbered on across groups: ids 0-1, 2, 3-5; the middle one without momentum.
GROUP_SIZES = (2, 1, 3)
GROUP_OPTIONS = (dict(lr=0.1, momentum=0.9, weight_decay=0.01),
                 dict(lr=0.05, momentum=0.0),
                 dict(lr=0.2, momentum=0.5, dampening=0.25, maximize=True))
GROUP_SHAPES = ((3, 4), (5,), (2, 3), (4,), (1, 2, 2), (3,))


def _grouped(params):
    """``params`` split into GROUP_SIZES groups, each with its GROUP_OPTIONS."""
    groups, start = [], 0
    for size, options in zip(GROUP_SIZES, GROUP_OPTIONS):
        groups.append({"params": params[start:start + size], **options})
        start += size
    return groups


def _torch_sgd(torch, arrays, **defaults):
    tensors = [torch.tensor(a.copy()) for a in arrays]
    return tensors, torch.optim.SGD(_grouped(tensors), **{"lr": 0.1, **defaults})


def _cudeconv_sgd(arrays, backend, **defaults):
    params = [cudeconv.Parameter(to_backend(a.copy(), backend)) for a in arrays]
    return params, cudeconv.SGD(_grouped(params), **{"lr": 0.1, **defaults}, backend=backend)


def _torch_step(torch, tensors, opt, grads):
    for p, g in zip(tensors, grads):
        p.grad = torch.tensor(g.copy())
    opt.step()


def _cudeconv_step(params, opt, grads, backend):
    for p, g in zip(params, grads):
        p.grad = to_backend(g.copy(), backend)
    opt.step()


def _assert_same_trajectory_step(params, tensors, step, dtype):
    for i, (p, t) in enumerate(zip(params, tensors)):
        expected = t.detach().numpy().astype(np.float64)
        _assert_params(p.data, expected, dtype, step, f"step {step} params[{i}] vs torch")


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
def test_torch_sgd_state_dict_loads_whole_and_both_continue_alike(dtype, backend):
    """torch.optim.SGD trains 3 steps; its state_dict() as it is (tensors, PyTorch's group keys
    foreach/differentiable/fused, ids running on across groups) loads into a cudeconv SGD holding
    other hyperparameters; then both take the same 4 steps and agree after each."""
    torch = pytest.importorskip("torch")
    params0, grads = _problem(dtype, seed=8, steps=7, shapes=GROUP_SHAPES)
    tensors, topt = _torch_sgd(torch, params0)
    for t in range(3):
        _torch_step(torch, tensors, topt, grads[t])
    saved = topt.state_dict()
    assert {"foreach", "differentiable", "fused"} <= set(saved["param_groups"][0])

    params, opt = _cudeconv_sgd([t.detach().numpy() for t in tensors], backend)
    for group in opt.param_groups:  # wrong on purpose: the load must restore torch's values
        group.update(lr=1.0, momentum=0.7, dampening=0.0, weight_decay=0.0, maximize=False)
    opt.load_state_dict(saved)
    mine = opt.state_dict()
    assert mine["param_groups"] == [
        {k: g[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "params")}
        for g in saved["param_groups"]
    ]
    assert sorted(mine["state"]) == sorted(saved["state"]) == [0, 1, 3, 4, 5]
    for i, entry in saved["state"].items():
        np.testing.assert_array_equal(to_numpy(mine["state"][i]["momentum_buffer"]),
                                      entry["momentum_buffer"].numpy(), err_msg=f"buffer {i}")
    for t in range(3, 7):
        _torch_step(torch, tensors, topt, grads[t])
        _cudeconv_step(params, opt, grads[t], backend)
        _assert_same_trajectory_step(params, tensors, t - 3, dtype)


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
def test_sgd_state_dict_loads_into_torch_and_both_continue_alike(dtype, backend):
    """The other way: cudeconv trains 3 steps, torch.optim.SGD loads its state_dict once each
    buffer is a tensor (the only conversion), and both agree step for step afterwards."""
    torch = pytest.importorskip("torch")
    params0, grads = _problem(dtype, seed=9, steps=7, shapes=GROUP_SHAPES)
    params, opt = _cudeconv_sgd(params0, backend)
    for t in range(3):
        _cudeconv_step(params, opt, grads[t], backend)
    saved = opt.state_dict()
    as_tensors = {"state": {i: {"momentum_buffer": torch.from_numpy(to_numpy(entry["momentum_buffer"]))}
                            for i, entry in saved["state"].items()},
                  "param_groups": saved["param_groups"]}
    tensors, topt = _torch_sgd(torch, [to_numpy(p.data) for p in params], lr=1.0)
    topt.load_state_dict(as_tensors)
    assert [g["lr"] for g in topt.param_groups] == [o["lr"] for o in GROUP_OPTIONS]
    for i, entry in saved["state"].items():
        buffer = topt.state[tensors[i]]["momentum_buffer"]
        np.testing.assert_array_equal(buffer.numpy(), to_numpy(entry["momentum_buffer"]), err_msg=f"buffer {i}")
    for t in range(3, 7):
        _torch_step(torch, tensors, topt, grads[t])
        _cudeconv_step(params, opt, grads[t], backend)
        _assert_same_trajectory_step(params, tensors, t - 3, dtype)


def test_state_dict_numbers_parameters_on_across_groups_as_torch(backend):
    """Same groups, same steps: cudeconv's state_dict has torch's ids in every group's "params",
    torch's state keys (none for the group without momentum) and its buffers."""
    torch = pytest.importorskip("torch")
    params0, grads = _problem(np.float64, seed=10, steps=2, shapes=GROUP_SHAPES)
    tensors, topt = _torch_sgd(torch, params0)
    params, opt = _cudeconv_sgd(params0, backend)
    for step_grads in grads:
        _torch_step(torch, tensors, topt, step_grads)
        _cudeconv_step(params, opt, step_grads, backend)
    theirs, mine = topt.state_dict(), opt.state_dict()
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in theirs["param_groups"]] \
        == [[0, 1], [2], [3, 4, 5]]
    torch_buffers = {i: e["momentum_buffer"] for i, e in theirs["state"].items()
                     if e.get("momentum_buffer") is not None}
    assert sorted(mine["state"]) == sorted(torch_buffers) == [0, 1, 3, 4, 5]
    for i, buffer in torch_buffers.items():
        assert_close(mine["state"][i]["momentum_buffer"], buffer.numpy(), np.float64, 8, name=f"buffer {i}")


def test_no_momentum_buffer_while_momentum_is_zero(backend):
    """momentum=0 keeps no buffer (torch neither: no entry, or None); turning momentum on later
    starts the buffer at that step's gradient, as in torch."""
    torch = pytest.importorskip("torch")
    params0, grads = _problem(np.float64, seed=11, steps=4)
    params = [cudeconv.Parameter(to_backend(p.copy(), backend)) for p in params0]
    opt = cudeconv.SGD(params, lr=0.1, momentum=0, weight_decay=0.1, backend=backend)
    tensors = [torch.tensor(p.copy()) for p in params0]
    topt = torch.optim.SGD(tensors, lr=0.1, momentum=0, weight_decay=0.1)
    for t in range(2):
        _cudeconv_step(params, opt, grads[t], backend)
        _torch_step(torch, tensors, topt, grads[t])
    assert all(e.get("momentum_buffer") is None for e in topt.state_dict()["state"].values())
    assert opt.state_dict()["state"] == {}
    assert not any("momentum_buffer" in s for s in opt.state.values())
    opt.param_groups[0]["momentum"] = topt.param_groups[0]["momentum"] = 0.9
    for t in range(2, 4):
        _cudeconv_step(params, opt, grads[t], backend)
        _torch_step(torch, tensors, topt, grads[t])
        _assert_same_trajectory_step(params, tensors, t, np.float64)


def test_torch_bfloat16_buffers_load_into_float32_buffers(backend):
    """torch keeps a bfloat16 parameter's buffer in bfloat16; cudeconv's float32 buffer takes its
    values exactly."""
    torch = pytest.importorskip("torch")
    params0, grads = _problem(np.float32, seed=12, steps=2)
    tensors = [torch.tensor(p).to(torch.bfloat16) for p in params0]
    topt = torch.optim.SGD(tensors, lr=0.1, momentum=0.9)
    for step_grads in grads:
        for p, g in zip(tensors, step_grads):
            p.grad = torch.tensor(g).to(torch.bfloat16)
        topt.step()
    params = [cudeconv.Parameter(to_backend(t.float().numpy().astype(BFLOAT16), backend)) for t in tensors]
    opt = cudeconv.SGD(params, lr=0.1, momentum=0.9, backend=backend)
    opt.load_state_dict(topt.state_dict())
    for i, t in enumerate(tensors):
        buffer = to_numpy(opt.state_dict()["state"][i]["momentum_buffer"])
        assert buffer.dtype == np.float32
        np.testing.assert_array_equal(buffer, topt.state[t]["momentum_buffer"].float().numpy())


@pytest.mark.parametrize("change, error, pattern", [
    (lambda g, s: g.update(differentiable=True), ValueError, r"param_groups'\]\[0\] has differentiable=True"),
    (lambda g, s: g.update(betas=(0.9, 0.99)), ValueError, r"param_groups'\]\[0\] has option\(s\) \['betas'\]"),
    (lambda g, s: s.update({0: {"momentum_buffer": [1.0, 2.0, 3.0]}}), TypeError,
     r"state_dict\['state'\]\[0\]\['momentum_buffer'\] must be an array"),
], ids=("differentiable", "another-optimizers-option", "buffer-not-an-array"))
def test_torch_state_dict_refusals_name_the_problem_and_change_nothing(change, error, pattern):
    torch = pytest.importorskip("torch")
    tensor = torch.zeros(3)
    topt = torch.optim.SGD([tensor], lr=0.5, momentum=0.9)
    tensor.grad = torch.ones(3)
    topt.step()
    saved = topt.state_dict()
    change(saved["param_groups"][0], saved["state"])
    p = cudeconv.Parameter(np.zeros(3, np.float32))
    opt = cudeconv.SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(error, match=pattern):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.state == {}


def test_torch_implementation_options_are_accepted():
    """foreach, fused (any value) and a scheduler's initial_lr choose only how torch runs the
    same update: a state_dict with them loads."""
    p = cudeconv.Parameter(np.zeros(3, np.float32))
    opt = cudeconv.SGD([p], lr=0.1)
    group = {**opt.state_dict()["param_groups"][0], "lr": 0.3, "foreach": True, "fused": False,
             "differentiable": False, "initial_lr": 0.5}
    opt.load_state_dict({"state": {}, "param_groups": [group]})
    assert opt.param_groups[0]["lr"] == 0.3
