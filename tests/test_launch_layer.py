"""The launch layer's plumbing that a GPU run depends on, checked without a GPU: each call runs on
the device its arrays live on (and refuses arrays on different devices), modules are compiled per
math with the same results as one module per source, and `cudeconv warmup` / `cudeconv info`."""
import contextlib

import numpy as np
import pytest

from conftest import require_cuda, skip_unless_kernel_checks_can_run
from cudeconv import ConvTranspose2d, backends, cli, emulator
from cudeconv._geometry import make_geometry
from cudeconv.backends.kernel_backend import (GEMM_PASSES, GEMM_SUPPORT, GEMM_TILES, SOURCES, KernelBackend,
                                              entry_module)
from cudeconv.optim import SGDHyperparameters


def _require_emulator():
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())


class FakeDevices:
    """Arrays "living" on numbered devices, a current device, and a record of which device was
    current each time the launch layer looked a module up (i.e. launched)."""

    def __init__(self):
        self.where = {}
        self.current = 0
        self.launched_on = []
        self.entered = []

    def put(self, array, device):
        self.where[id(array)] = device
        return array

    def device_of(self, array):
        return self.where.get(id(array), 0)

    @contextlib.contextmanager
    def use(self, device):
        self.entered.append(device)
        previous, self.current = self.current, (self.current if device is None else device)
        try:
            yield
        finally:
            self.current = previous

    def device_key(self):
        self.launched_on.append(self.current)
        return "cpu"  # one set of emulator modules serves every fake device


def _fake_backend(devices):
    return KernelBackend("emulator", np, emulator.RawModule, devices.device_key, device_of=devices.device_of,
                         use_device=devices.use, module_per_math=False)


def _problem(rng, dtype=np.float32):
    x = rng.standard_normal((2, 16, 5, 5)).astype(dtype)
    weight = rng.standard_normal((16, 16, 3, 3)).astype(dtype)
    bias = rng.standard_normal(16).astype(dtype)
    geom = make_geometry(2, x.shape, weight.shape, stride=2, padding=1, output_padding=1, groups=1, dilation=1,
                         bias_shape=bias.shape)
    return x, weight, bias, geom


def test_every_launch_of_a_call_goes_to_the_arrays_device_not_the_current_one():
    _require_emulator()
    devices = FakeDevices()
    impl = _fake_backend(devices)
    rng = np.random.default_rng(0)
    x, weight, bias, geom = _problem(rng)
    for array in (x, weight, bias):
        devices.put(array, 1)
    devices.current = 0
    y = impl.forward(x, weight, bias, geom)
    grad_output = devices.put(rng.standard_normal(y.shape).astype(np.float32), 1)
    impl.backward(grad_output, x, weight, geom, need_bias=True)
    assert devices.launched_on and set(devices.launched_on) == {1}
    assert devices.current == 0  # the caller's current device is restored
    reference = backends.get("emulator").forward(x, weight, bias, geom)
    np.testing.assert_array_equal(y, reference)


def test_arrays_on_different_devices_are_refused_naming_them():
    devices = FakeDevices()
    impl = _fake_backend(devices)
    x, weight, bias, geom = _problem(np.random.default_rng(1))
    devices.put(x, 1)
    devices.put(weight, 0)
    with pytest.raises(ValueError, match=r"x on device 1, weight on device 0"):
        impl.forward(x, weight, None, geom)
    with pytest.raises(ValueError, match=r"grad_output on device 0, x on device 1"):
        impl.grad_weight(np.zeros(geom.output_shape, np.float32), x, geom)
    devices.put(bias, 2)
    devices.put(weight, 1)
    with pytest.raises(ValueError, match=r"bias on device 2"):
        impl.forward(x, weight, bias, geom)
    assert devices.launched_on == []  # refused before anything ran


def test_sgd_state_and_steps_go_to_the_parameters_device():
    _require_emulator()
    devices = FakeDevices()
    impl = _fake_backend(devices)
    param = devices.put(np.ones((4, 4), np.float32), 3)
    grad = devices.put(np.full((4, 4), 0.5, np.float32), 3)
    buffer = impl.momentum_buffer_for(param)
    assert devices.entered[-1] == 3
    devices.put(buffer, 3)
    hyper = SGDHyperparameters(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
                               maximize=False)
    impl.sgd_step(param, grad, buffer, hyper, first_step=True)
    assert set(devices.launched_on) == {3}
    np.testing.assert_allclose(param, 1 - 0.1 * 0.5)
    stray = devices.put(np.zeros((4, 4), np.float32), 0)
    with pytest.raises(ValueError, match=r"param on device 3, grad on device 0"):
        impl.sgd_step(param, stray, buffer, hyper, first_step=False)


def test_modules_per_math_compute_what_one_module_per_source_does():
    """The CuPy layout (one module per source and math) on the emulator: the same bits as the
    emulator's one module per source, and each module holds its math's entry points only."""
    _require_emulator()
    per_math = KernelBackend("emulator", np, emulator.RawModule, lambda: "cpu", module_per_math=True)
    per_source = backends.get("emulator")
    rng = np.random.default_rng(2)
    x, weight, bias, geom = _problem(rng)
    grad_output = rng.standard_normal(geom.output_shape).astype(np.float32)
    paths = per_math.kernel_paths(geom, np.float32)
    assert [paths[p].kind for p in ("forward", "grad_input", "grad_weight")] == ["gemm"] * 3
    np.testing.assert_array_equal(per_math.forward(x, weight, bias, geom), per_source.forward(x, weight, bias, geom))
    for mine, theirs in zip(per_math.backward(grad_output, x, weight, geom, True),
                            per_source.backward(grad_output, x, weight, geom, True)):
        np.testing.assert_array_equal(mine, theirs)
    for path in paths.values():
        names = per_math.module(path.source, path.math, path.gemm_pass, path.tile).kernel_names
        if path.kind == "gemm":  # the one GEMM kernel of its pass and tile; the packings and reduce apart
            assert list(names) == [path.entry]
            support = per_math.module(*entry_module(path, "deconv_gemm_split_reduce_f32")).kernel_names
            assert sorted(support) == ["deconv_gemm_pack_activation_f32", "deconv_gemm_pack_weight_f32",
                                       "deconv_gemm_split_reduce_f32"]
        else:
            assert names and all(name.endswith("_f32") for name in names), (path.source, names)
        assert len(names) < len(per_source.module(path.source, path.math).kernel_names)


def test_warmup_compiles_each_needed_module_once(monkeypatch):
    impl = KernelBackend("recording", np, None, lambda: "cpu")
    requested = []
    monkeypatch.setattr(impl, "module", lambda *module: requested.append(module))
    compiled = impl.warmup([np.float32, np.float16], ["fp32", "tf32"])
    assert requested == compiled
    assert len(set(compiled)) == len(compiled)
    gemm_kernels = {("deconv_gemm.cu", math_name, pass_, tile) for math_name in ("f32", "tf32", "f16")
                    for pass_ in GEMM_PASSES for tile in GEMM_TILES[math_name][pass_]}
    assert len(gemm_kernels) == 3 * 12
    support = {("deconv_gemm.cu", math_name, GEMM_SUPPORT, ()) for math_name in ("f32", "tf32", "f16")}
    assert set(compiled) == ({(source, suffix, "", ()) for source in SOURCES if source != "deconv_gemm.cu"
                              for suffix in ("f32", "f16")} | gemm_kernels | support)


def test_warmup_compiles_in_several_processes():
    """jobs > 1: worker processes (spawned) fill the same disk cache; every module is reported once
    as it is done, and a compile error would surface in the caller."""
    _require_emulator()
    done = []
    compiled = backends.get("emulator").warmup([np.float64], jobs=2, on_progress=lambda *module: done.append(module))
    assert sorted(done) == sorted(compiled) and {source for source, *_ in compiled} == set(SOURCES)
    with pytest.raises(ValueError, match="jobs must be a positive int"):
        backends.get("emulator").warmup([np.float64], jobs=0)
    with pytest.raises(ValueError, match="needs the 'cuda' or 'emulator' backend"):
        KernelBackend("recording", np, None, lambda: "cpu").warmup([np.float32], jobs=2)


def test_cli_warmup_on_the_emulator_and_refusal_without_a_gpu(capsys):
    _require_emulator()
    assert cli.main(["warmup", "--backend", "emulator", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    for source in SOURCES:
        assert f"{source} [every math]" in out
    assert "kernel caches:" in out and "emulator" in out
    if backends.cuda_unavailable_reason() is not None:
        with pytest.raises(SystemExit) as exited:
            cli.main(["warmup"])
        assert exited.value.code == 2
        assert "cannot run here" in capsys.readouterr().err


def test_info_reports_the_kernel_caches(capsys, tmp_path, monkeypatch):
    cupy_cache = tmp_path / "cupy"
    cupy_cache.mkdir()
    (cupy_cache / "a.cubin").write_bytes(b"\0" * 3 * 2**20)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(cupy_cache))
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE", str(tmp_path / "emulator"))
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"{cupy_cache}: 3.0 MiB in 1 files" in out
    assert f"{tmp_path / 'emulator'}: 0.0 MiB in 0 builds" in out


def test_a_layer_keeps_working_through_the_guard():
    """The public path (layer → functional → launch layer) on the emulator, through the guard."""
    _require_emulator()
    layer = ConvTranspose2d(16, 16, 3, stride=2, padding=1, output_padding=1, backend="emulator", seed=0)
    x = np.random.default_rng(3).standard_normal((2, 16, 5, 5)).astype(np.float32)
    y = layer(x)
    layer.backward(np.ones_like(y))
    assert np.isfinite(layer.weight.grad).all()


def test_cuda_runs_on_the_arrays_device_when_another_is_current():
    """On a machine with two GPUs (gpu_check runs the suite's cuda cases there): arrays on GPU 1 while
    GPU 0 is current give GPU 1's results on GPU 1; arrays on both are refused."""
    require_cuda()
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs (the emulator tests above check the same logic with fake devices)")
    from cudeconv import functional

    x, weight, bias, geom = _problem(np.random.default_rng(4))
    expected = backends.get("numpy").forward(x, weight, bias, geom)
    with cupy.cuda.Device(1):
        x1, weight1, bias1 = cupy.asarray(x), cupy.asarray(weight), cupy.asarray(bias)
    with cupy.cuda.Device(0):  # GPU 0 current: the call must move to the arrays' device itself
        y = functional.conv_transpose2d(x1, weight1, bias1, stride=2, padding=1, output_padding=1)
        assert y.device.id == 1
        np.testing.assert_allclose(cupy.asnumpy(y), expected, rtol=1e-4, atol=1e-4)
        weight0 = cupy.asarray(weight)
        with pytest.raises(ValueError, match=r"on device 1.*on device 0"):
            functional.conv_transpose2d(x1, weight0, None, stride=2, padding=1, output_padding=1)


def test_the_pipelined_gemms_opt_in_to_their_stages_once():
    """A tensor-core GEMM launches with its stages' dynamic shared memory (more than the default
    48 KiB on the widest tile), opting its kernel in once; its packings and the FFMA GEMM take none."""
    from cudeconv.backends.kernel_backend import DEFAULT_DYNAMIC_SHARED_BYTES, dynamic_shared, gemm_dynamic_shared_bytes

    class Kernel:
        def __init__(self):
            self.settings = []

        @property
        def max_dynamic_shared_size_bytes(self):
            return self.settings[-1] if self.settings else DEFAULT_DYNAMIC_SHARED_BYTES

        @max_dynamic_shared_size_bytes.setter
        def max_dynamic_shared_size_bytes(self, value):
            self.settings.append(value)

    impl = KernelBackend("recording", np, None, lambda: "cpu")
    x, weight, _, geom = _problem(np.random.default_rng(0))
    path = impl.kernel_path(geom, "forward", "gemm", np.float32, "tf32", 1, tile=(128, 128))
    kernel, packing = Kernel(), Kernel()
    stages = gemm_dynamic_shared_bytes("tf32", (128, 128))
    assert stages > DEFAULT_DYNAMIC_SHARED_BYTES
    assert [dynamic_shared(kernel, path, path.entry) for _ in range(3)] == [stages] * 3
    assert kernel.settings == [stages]  # once
    assert dynamic_shared(packing, path, "deconv_gemm_pack_weight_tf32") == 0 and packing.settings == []
    ffma = impl.kernel_path(geom, "forward", "gemm", np.float32, "fp32", 1, tile=(128, 128))
    assert dynamic_shared(Kernel(), ffma, ffma.entry) == 0
