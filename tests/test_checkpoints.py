"""Checkpoints and state loading (issue 13, items 1, 2, 4, 5, 6 and 7): a refused state or file
leaves the layer or optimizer bitwise as it was, saves are atomic, corrupt files raise a ValueError
naming the file, and only the expected members are read."""
import copy
import io
import os
import stat
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import cudeconv

from conftest import to_backend, to_numpy


def _layer(backend="numpy", seed=0, bias=True):
    return cudeconv.ConvTranspose2d(4, 6, (3, 2), groups=2, bias=bias, seed=seed, backend=backend)


def _snapshot(layer):
    """Each parameter's array object, bytes, dtype and grad (to tell that nothing changed)."""
    return [(p.data, to_numpy(p.data).tobytes(), p.data.dtype, p.grad) for p in layer.parameters()]


def _assert_unchanged(layer, snapshot):
    for p, (data, raw, dtype, grad) in zip(layer.parameters(), snapshot):
        assert p.data is data and p.data.dtype == dtype and p.grad is grad
        assert to_numpy(p.data).tobytes() == raw


def _good_state(seed=1):
    rng = np.random.default_rng(seed)
    return {"weight": rng.standard_normal((4, 3, 3, 2)).astype(np.float32),
            "bias": rng.standard_normal(6).astype(np.float32)}


# ------------------------------------------------------------------- layers: load_state_dict

def test_valid_bias_with_a_wrong_weight_changes_nothing(backend):
    """Item 1: the bias was replaced before the weight's shape error."""
    layer = _layer(backend)
    before = _snapshot(layer)
    state = _good_state()
    state["weight"] = state["weight"][:, :2]
    with pytest.raises(ValueError, match=r"state_dict\['weight'\] has shape \(4, 2, 3, 2\)"):
        layer.load_state_dict({k: to_backend(v, backend) for k, v in state.items()})
    _assert_unchanged(layer, before)


@pytest.mark.parametrize("value, exc, pattern", [
    ([[0.0] * 6], TypeError, r"must be a.*array.*got (builtins\.)?list"),
    (0.5, TypeError, r"got (builtins\.)?float"),
    (None, TypeError, r"got (builtins\.)?NoneType"),
    (np.zeros(6, np.complex64), TypeError, "real numbers, got dtype complex64"),
    (np.zeros(6, bool), TypeError, "real numbers, got dtype bool"),
    (np.zeros(6, object), TypeError, "real numbers, got dtype object"),
    (np.zeros(6, "U3"), TypeError, "real numbers"),
    (np.zeros((6, 1), np.float32), ValueError, r"has shape \(6, 1\)"),
], ids=["list", "float", "None", "complex", "bool", "object", "str", "shape"])
def test_bias_values_that_are_not_real_arrays_are_refused(value, exc, pattern):
    """Item 5: lists, floats and None raised AttributeError."""
    layer = _layer()
    before = _snapshot(layer)
    with pytest.raises(exc, match=r"state_dict\['bias'\].*" + pattern):
        layer.load_state_dict({"weight": _good_state()["weight"], "bias": value})
    _assert_unchanged(layer, before)


def test_integer_arrays_load_cast_to_the_layers_dtype(backend):
    layer = _layer(backend)
    weight = np.arange(72).reshape(4, 3, 3, 2)
    layer.load_state_dict({"weight": weight, "bias": np.arange(6, dtype=np.uint8)})
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
    np.testing.assert_array_equal(to_numpy(layer.weight.data), weight.astype(np.float32))


def _bad_states(rng, good):
    """A stream of invalid state_dicts, each one mutation away from ``good``."""
    wrong_values = [
        lambda v: v[..., :1], lambda v: v.reshape(-1)[1:], lambda v: v[None], lambda v: v.tolist(),
        lambda v: float(v.ravel()[0]), lambda v: None, lambda v: v.astype(np.complex128),
        lambda v: v.astype(bool), lambda v: v.astype(object), lambda v: v.astype("S4"),
    ]
    def pick(options):
        return options[rng.integers(len(options))]

    for _ in range(60):
        state = {k: v.copy() for k, v in good.items()}
        kind = rng.integers(4)
        if kind == 0:
            name = pick(sorted(state))
            state[name] = pick(wrong_values)(state[name])
        elif kind == 1:
            del state[pick(sorted(state))]
        elif kind == 2:
            state[pick(["running_mean", "Weight", 0, ("weight",)])] = state["bias"]
        else:
            state = pick([None, [("weight", state["weight"])], "weight", 3])
        yield state


def test_property_a_refused_state_dict_changes_nothing(backend):
    rng = np.random.default_rng(0)
    layer = _layer(backend)
    x = to_backend(np.ones((1, 4, 2, 2), np.float32), backend)
    layer.backward(layer(x))  # grads set: they must survive too
    before = _snapshot(layer)
    tried = 0
    for state in _bad_states(rng, _good_state()):
        if isinstance(state, dict):
            state = {k: to_backend(v, backend) if isinstance(v, np.ndarray) else v
                     for k, v in state.items()}
        with pytest.raises((ValueError, TypeError)):
            layer.load_state_dict(state)
        _assert_unchanged(layer, before)
        tried += 1
    assert tried == 60
    layer.load_state_dict(_good_state())  # and a valid one still loads
    np.testing.assert_array_equal(to_numpy(layer.bias.data), _good_state()["bias"])


# ---------------------------------------------------------------------------- layers: save

def test_save_writes_exactly_the_path_given(tmp_path):
    """Item 6: save('ckpt') wrote ckpt.npz and load('ckpt') failed."""
    layer = _layer()
    path = tmp_path / "ckpt"
    layer.save(str(path))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    other = _layer(seed=5)
    other.load(str(path))
    np.testing.assert_array_equal(other.weight.data, layer.weight.data)
    layer.save(tmp_path / "named.npz")  # os.PathLike too, and an .npz name stays as it is
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "named.npz"]
    other.load(tmp_path / "named.npz")
    with pytest.raises(FileNotFoundError):
        other.load(tmp_path / "ckpt.npz")


@pytest.mark.parametrize("path", [io.BytesIO(), 3, None])
def test_save_and_load_take_paths_only(path):
    layer = _layer()
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        layer.save(path)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        layer.load(path)


def test_save_from_every_backend_reads_back_as_numpy(tmp_path, backend):
    layer = _layer(backend)
    layer.save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["weight"], to_numpy(layer.weight.data))
        np.testing.assert_array_equal(f["bias"], to_numpy(layer.bias.data))


def test_a_save_that_fails_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """Item 2: a failing save truncated the previous good file."""
    path = tmp_path / "ckpt.npz"
    old = _layer(seed=0)
    old.save(path)
    good_bytes = path.read_bytes()

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04" + b"\0" * 70000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _layer(seed=1).save(path)
    assert path.read_bytes() == good_bytes
    assert os.listdir(tmp_path) == ["ckpt.npz"], "the temporary file was left behind"


_FILE_SIZE_LIMIT_SAVE = r"""
import resource, signal, sys
import cudeconv
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
layer = cudeconv.ConvTranspose2d(64, 64, 4, seed=1, backend="numpy")  # 256 KiB of weights
try:
    layer.save(sys.argv[1])
except OSError as exc:
    print("failed:", exc)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_save_past_the_file_size_limit_keeps_the_old_checkpoint(tmp_path):
    """The reproducer: the old 734-byte file became a truncated 65,536-byte one."""
    path = tmp_path / "ckpt.npz"
    _layer(seed=0).save(path)
    good_bytes = path.read_bytes()
    run = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT_SAVE, str(path)],
                         capture_output=True, text=True, timeout=120)
    assert "failed:" in run.stdout and "File too large" in run.stdout, run.stdout + run.stderr
    assert path.read_bytes() == good_bytes
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    restored = _layer(seed=3)
    restored.load(path)
    np.testing.assert_array_equal(restored.weight.data, _layer(seed=0).weight.data)


def test_save_syncs_the_file_then_renames_it_then_syncs_the_directory(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", "same directory" if os.path.dirname(source) == os.path.dirname(target)
                       else "elsewhere"))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _layer().save(tmp_path / "ckpt.npz")
    expected = [("fsync", "file"), ("replace", "same directory")]
    if os.name == "posix":
        expected.append(("fsync", "directory"))
    assert events == expected


@pytest.mark.skipif(os.name != "posix", reason="umask and symlinks as on POSIX")
def test_save_gives_the_permissions_of_a_new_file_and_keeps_symlinks(tmp_path):
    mask = os.umask(0o027)
    try:
        _layer().save(tmp_path / "ckpt.npz")
    finally:
        os.umask(mask)
    assert (tmp_path / "ckpt.npz").stat().st_mode & 0o777 == 0o640
    (tmp_path / "link.npz").symlink_to(tmp_path / "ckpt.npz")
    _layer(seed=4).save(tmp_path / "link.npz")
    assert (tmp_path / "link.npz").is_symlink()
    restored = _layer(seed=0)
    restored.load(tmp_path / "ckpt.npz")
    np.testing.assert_array_equal(restored.weight.data, _layer(seed=4).weight.data)


# ---------------------------------------------------------------------------- layers: load

def _npy_bytes(array=None, *, header=None):
    """A .npy member: ``array`` as np.save writes it, or a bare header dict with no data."""
    buffer = io.BytesIO()
    if header is None:
        np.save(buffer, array, allow_pickle=True)  # object arrays too: load must refuse them
    else:
        np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _members(state=None):
    state = _good_state() if state is None else state
    return {f"{k}.npy": _npy_bytes(v) for k, v in state.items()}


def _check_refused(layer, path, pattern):
    before = _snapshot(layer)
    with pytest.raises(ValueError, match=pattern) as info:
        layer.load(path)
    assert str(path) in str(info.value), "the error must name the file"
    _assert_unchanged(layer, before)


def test_load_with_a_valid_bias_and_a_wrong_weight_changes_nothing(tmp_path):
    state = _good_state()
    state["weight"] = np.zeros((6, 2, 3, 2), np.float32)
    np.savez(tmp_path / "bad.npz", **state)
    _check_refused(_layer(), tmp_path / "bad.npz", r"weight\.npy.*shape \(6, 2, 3, 2\), expected \(4, 3, 3, 2\)")


@pytest.mark.parametrize("members, pattern", [
    ({"weight": b"x", "bias": b"y"}, r"members \['bias', 'weight'\], expected \['bias\.npy', 'weight\.npy'\]"),
    ({**_members(), "extra.npy": _npy_bytes(np.zeros(3))}, "extra.npy"),
    ({"weight.npy": _members()["weight.npy"]}, r"members \['weight\.npy'\]"),
    ({**_members(), "bias.npy": _npy_bytes(np.zeros(6, np.complex64))}, "dtype complex64"),
    ({**_members(), "bias.npy": _npy_bytes(np.zeros(6, object))}, "dtype object"),
    ({**_members(), "bias.npy": _npy_bytes(np.zeros(6, np.float32))[:-5]}, "truncated: 19 of 24"),
    ({**_members(), "bias.npy": _npy_bytes(np.zeros(6, np.float32)) + b"\0"}, "data past"),
    ({**_members(), "bias.npy": b"\x93NUMPY\x09\x00"}, "format version"),
    ({**_members(), "bias.npy": b"not an npy file at all"}, "magic"),
], ids=["no .npy", "extra member", "missing member", "complex", "object", "truncated member",
        "trailing bytes", "npy version", "not npy"])
def test_load_refuses_archives_that_are_not_this_layers_checkpoint(tmp_path, members, pattern):
    """Item 4: these raised AttributeError, EOFError or loaded unchecked."""
    path = tmp_path / "c.npz"
    _zip(path, members)
    _check_refused(_layer(), path, pattern)


def test_load_refuses_a_header_declaring_8_terabytes_without_allocating(tmp_path):
    """A 200-byte member whose header declares 8 TB raised MemoryError."""
    path = tmp_path / "c.npz"
    huge = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    _zip(path, {**_members(), "bias.npy": _npy_bytes(header=huge)})
    assert path.stat().st_size < 1000
    _check_refused(_layer(), path, r"shape \(1000000000000,\), expected \(6,\)")
    # With the right shape declared, the missing data is a truncation, not an allocation.
    _zip(path, {**_members(), "bias.npy": _npy_bytes(header={**huge, "shape": (6,)})})
    _check_refused(_layer(), path, "truncated: 0 of 48")


def test_load_reads_only_the_expected_members(tmp_path):
    """An extra 256 MiB member (compressed to a few hundred KiB) is never decompressed."""
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in _members().items():
            archive.writestr(name, data)
        with archive.open("extra.npy", "w", force_zip64=True) as member:
            _write_zero_mebibytes(member, 256)
    assert path.stat().st_size < 4 << 20
    assert _peak_memory_of_refusal(path, "extra.npy") < 1 << 20


def test_load_refuses_a_bomb_in_an_expected_member(tmp_path):
    """A member with the right header but 256 MiB of data behind it: read no further than the
    layer's array needs."""
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("weight.npy", _members()["weight.npy"])
        with archive.open("bias.npy", "w", force_zip64=True) as member:
            member.write(_npy_bytes(header={"descr": "<f4", "fortran_order": False, "shape": (6,)}))
            _write_zero_mebibytes(member, 256)
    assert _peak_memory_of_refusal(path, "data past") < 1 << 20


def _write_zero_mebibytes(member, count):
    chunk = bytes(1 << 20)
    for _ in range(count):
        member.write(chunk)


def _peak_memory_of_refusal(path, match):
    """Peak traced memory while a fresh layer refuses the checkpoint at ``path`` (ValueError
    matching ``match``)."""
    tracemalloc.start()
    try:
        _check_refused(_layer(), path, match)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_load_of_damaged_files_raises_value_error_naming_the_file(tmp_path):
    """Truncations at every 7th byte and random byte flips of a stored and a deflated checkpoint
    (these raised EOFError, BadZipFile, OSError or NotImplementedError): a ValueError, or, where
    the flip hit a field nothing checks, a clean load."""
    layer = _layer()
    good = tmp_path / "good.npz"
    layer.save(good)
    compressed = io.BytesIO()
    np.savez_compressed(compressed, **_good_state())
    rng = np.random.default_rng(1)
    path = tmp_path / "damaged.npz"
    loads = refusals = 0
    for blob in (good.read_bytes(), compressed.getvalue()):
        variants = [blob[:n] for n in range(0, len(blob), 7)]
        for _ in range(300):
            damaged = bytearray(blob)
            for position in rng.integers(0, len(blob), rng.integers(1, 4)):
                damaged[position] = rng.integers(256)
            variants.append(bytes(damaged))
        for variant in variants:
            path.write_bytes(variant)
            before = _snapshot(layer)
            try:
                layer.load(path)
                loads += 1
            except ValueError as exc:
                assert str(path) in str(exc)
                _assert_unchanged(layer, before)
                refusals += 1
    assert refusals > 10 * loads


@pytest.mark.parametrize("content", [b"", b"PK", b"\0" * 100, b"hello world, not a zip"], ids=repr)
def test_load_of_a_file_that_is_no_zip(tmp_path, content):
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    _check_refused(_layer(), path, "not a valid checkpoint")


def test_load_reads_fortran_ordered_compressed_and_integer_members(tmp_path):
    state = _good_state()
    expected = {k: v.copy() for k, v in state.items()}
    state["weight"] = np.asfortranarray(state["weight"])
    state["bias"] = (state["bias"] * 100).astype(">i4")  # big-endian integers, cast on load
    expected["bias"] = state["bias"].astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", **state)
    layer = _layer()
    layer.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(layer.weight.data, expected["weight"])
    np.testing.assert_array_equal(layer.bias.data, expected["bias"])
    assert layer.weight.data.flags.c_contiguous


def test_load_of_missing_file_or_directory_raises_the_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        _layer().load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError if os.name == "posix" else OSError):
        _layer().load(tmp_path)


# ------------------------------------------------------------------------------ SGD

def _trained_sgd(backend="numpy", steps=2, **opts):
    rng = np.random.default_rng(0)
    params = [cudeconv.Parameter(to_backend(rng.standard_normal(s), backend)) for s in ((3, 2), (4,))]
    opt = cudeconv.SGD(params, lr=0.1, momentum=0.9, backend=backend, **opts)
    for _ in range(steps):
        for p in params:
            p.grad = to_backend(rng.standard_normal(p.shape), backend)
        opt.step()
    return params, opt


def _sgd_snapshot(opt):
    return (copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
            [list(g["params"]) for g in opt.param_groups],
            {pid: (s["momentum_buffer"], to_numpy(s["momentum_buffer"]).tobytes())
             for pid, s in opt.state.items()},
            opt.state)


def _assert_sgd_unchanged(opt, snapshot):
    options, members, buffers, state = snapshot
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == options
    assert [list(g["params"]) for g in opt.param_groups] == members
    assert opt.state is state and set(opt.state) == set(buffers)
    for pid, (array, raw) in buffers.items():
        assert opt.state[pid]["momentum_buffer"] is array
        assert to_numpy(array).tobytes() == raw


def _sgd_bad_states(good):
    """Item 7's reproducers and their neighbours: (state_dict, exception, message pattern)."""
    groups, state = good["param_groups"], good["state"]
    buf0 = state[0]["momentum_buffer"]
    other_lr = [{**groups[0], "lr": 0.5}]
    return [
        ({"state": state}, ValueError, "keys"),
        ({"param_groups": groups}, ValueError, "keys"),
        ({**good, "extra": 1}, ValueError, "keys"),
        ([("state", state)], TypeError, "must be a dict"),
        ({"state": [buf0], "param_groups": other_lr}, TypeError, r"\['state'\] must be a dict"),
        ({"state": {0: {"momentum_buffer": to_numpy(buf0).tolist()}}, "param_groups": other_lr},
         TypeError, r"\[.momentum_buffer.\] must be an array"),
        ({"state": {0.5: {"momentum_buffer": buf0}}, "param_groups": other_lr}, TypeError, "0.5"),
        ({"state": {"0": {"momentum_buffer": buf0}}, "param_groups": other_lr}, TypeError, "'0'"),
        ({"state": {True: {"momentum_buffer": buf0}}, "param_groups": other_lr}, TypeError, "True"),
        ({"state": {2: {"momentum_buffer": buf0}}, "param_groups": other_lr}, ValueError, "parameter 2"),
        ({"state": {0: buf0}, "param_groups": other_lr}, ValueError, "at most the key"),
        ({"state": {0: {"momentum_buffer": buf0, "step": 3}}, "param_groups": other_lr}, ValueError, "at most"),
        ({"state": {1: {"momentum_buffer": buf0}}, "param_groups": other_lr}, ValueError, r"shape \(3, 2\)"),
        ({"state": {0: {"momentum_buffer": buf0.astype(np.complex128) if isinstance(buf0, np.ndarray)
                        else buf0.astype("complex128")}}, "param_groups": other_lr}, TypeError, "real"),
        ({"state": state, "param_groups": groups * 2}, ValueError, "2 parameter groups"),
        ({"state": state, "param_groups": groups[0]}, TypeError, "list of dicts"),
        ({"state": state, "param_groups": [{**groups[0], "params": [0]}]}, ValueError, "1 parameters"),
        ({"state": state, "param_groups": [{**groups[0], "params": [0, 0]}]}, ValueError, "twice"),
        ({"state": state, "param_groups": [{**groups[0], "params": [0, 1.0]}]}, TypeError, "list of ints"),
        ({"state": state, "param_groups": [{k: v for k, v in groups[0].items() if k != "params"}]},
         TypeError, "list of ints"),
        ({"state": state, "param_groups": [{**groups[0], "lr": -1.0}]}, ValueError, "lr"),
        ({"state": state, "param_groups": [{**groups[0], "momentum": "0.9"}]}, TypeError, "momentum"),
        ({"state": state, "param_groups": [{**groups[0], "nesterov": "yes"}]}, TypeError, "nesterov"),
        ({"state": state, "param_groups": [{**groups[0], "nesterov": True, "dampening": 0.5}]},
         ValueError, "Nesterov"),
    ]


def test_sgd_refused_state_dicts_change_nothing(backend):
    """Item 7 and the property that a refused load leaves the optimizer bitwise as it was."""
    params, opt = _trained_sgd(backend)
    good = opt.state_dict()
    for bad, exc, pattern in _sgd_bad_states(good):
        snapshot = _sgd_snapshot(opt)
        with pytest.raises(exc, match=pattern):
            opt.load_state_dict(bad)
        _assert_sgd_unchanged(opt, snapshot)
    opt.load_state_dict(good)  # the good one still loads


def test_sgd_state_entry_without_momentum_buffer_is_a_fresh_start():
    """PyTorch accepts {} (and a None buffer): the next step starts the buffer from the gradient."""
    params, opt = _trained_sgd()
    state = opt.state_dict()
    state["state"] = {0: {}, 1: {"momentum_buffer": None}}
    opt.load_state_dict(state)
    assert opt.state == {}
    fresh_params = [cudeconv.Parameter(p.data.copy()) for p in params]
    fresh = cudeconv.SGD(fresh_params, lr=0.1, momentum=0.9)
    for p, q in zip(params, fresh_params):
        p.grad = q.grad = np.full(p.shape, 0.25)
    opt.step()
    fresh.step()
    for p, q in zip(params, fresh_params):
        np.testing.assert_array_equal(p.data, q.data)


def test_sgd_state_follows_the_saved_parameter_ids():
    """As in PyTorch, the saved groups' "params" name the parameters in order; the state is keyed
    by those names, whatever the numbers."""
    params, opt = _trained_sgd()
    saved = opt.state_dict()
    renamed = {"param_groups": [{**saved["param_groups"][0], "params": [7, 5]}],
               "state": {5: saved["state"][1], 7: saved["state"][0]}}
    _, other = _trained_sgd(steps=0)
    other.load_state_dict(renamed)
    loaded = other.state_dict()["state"]
    for index in (0, 1):
        np.testing.assert_array_equal(loaded[index]["momentum_buffer"],
                                      saved["state"][index]["momentum_buffer"])


def test_sgd_loads_a_pytorch_state_dict_and_follows_its_trajectory():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s) for s in ((3, 2), (4,))]
    grads = [[rng.standard_normal(a.shape) for a in start] for _ in range(4)]
    tparams = [torch.tensor(a.copy()) for a in start]
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for t in range(2):
        for p, g in zip(tparams, grads[t]):
            p.grad = torch.tensor(g)
        topt.step()
    tstate = topt.state_dict()
    state = {"param_groups": tstate["param_groups"],
             "state": {k: {"momentum_buffer": v["momentum_buffer"].numpy().copy()}
                       for k, v in tstate["state"].items()}}
    params = [cudeconv.Parameter(p.detach().numpy().copy()) for p in tparams]
    opt = cudeconv.SGD(params, lr=1.0)
    opt.load_state_dict(state)
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9
    for t in range(2, 4):
        for p, tp, g in zip(params, tparams, grads[t]):
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_sgd_state_dict_input_is_not_modified(backend):
    params, opt = _trained_sgd(backend)
    good = opt.state_dict()
    frozen = copy.deepcopy(good)
    _, other = _trained_sgd(backend, steps=0)
    other.load_state_dict(good)
    assert good.keys() == frozen.keys() and good["param_groups"] == frozen["param_groups"]
    for k, v in frozen["state"].items():
        np.testing.assert_array_equal(to_numpy(good["state"][k]["momentum_buffer"]),
                                      to_numpy(v["momentum_buffer"]))
        assert other.state_dict()["state"][k]["momentum_buffer"] is not good["state"][k]["momentum_buffer"]


@pytest.mark.parametrize("name", ["nesterov", "maximize"])
def test_sgd_flags_must_be_bools(name):
    """A state_dict's "yes" was taken as True; the constructor checks the same way."""
    p = cudeconv.Parameter(np.ones(2))
    with pytest.raises(TypeError, match=f"{name} must be a bool, got 'yes'"):
        cudeconv.SGD([p], lr=0.1, momentum=0.9, **{name: "yes"})
    cudeconv.SGD([p], lr=0.1, momentum=0.9, **{name: np.bool_(True)})
