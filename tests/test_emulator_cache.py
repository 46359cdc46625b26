"""cudeconv.emulator's build cache: integrity records, least-recently-used eviction past a size
limit, builds in use never evicted, several processes building and evicting at once."""

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cudeconv.emulator import RawModule, _cache, _compiler, cache_usage

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_SOURCE = 'extern "C" __global__ void fill(int* x, int v) { x[threadIdx.x] = v + %d; }\n'


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory of this test's own, with no limit set."""
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE", str(tmp_path))
    monkeypatch.delenv("CUDECONV_EMULATOR_CACHE_MAX", raising=False)
    return tmp_path


def fill_with(source, value):
    """Launches `fill` of a CACHE_SOURCE module; returns what the kernel wrote."""
    x = np.zeros(4, np.int32)
    RawModule(source).get_function("fill")((1,), (4,), (x, np.int32(value)))
    return x


# ---- the size limit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("", 1 << 30), ("0", 0), ("123", 123), (" 64k ", 65536), ("500M", 500 << 20), ("2G", 2 << 30),
     ("1.5GiB", 3 << 29), ("2gb", 2 << 30), ("1T", 1 << 40), ("10B", 10)],
)
def test_limit_setting(cache, monkeypatch, text, expected):
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE_MAX", text)
    assert _cache.cache_limit() == expected
    assert cache_usage().limit == expected


@pytest.mark.parametrize("text", ["lots", "-1", "2X", "1e9", "G", "5 M B"])
def test_bad_limit_is_refused_naming_the_variable(cache, monkeypatch, text):
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE_MAX", text)
    message = rf"CUDECONV_EMULATOR_CACHE_MAX must be a size in bytes.*got {text!r}"
    with pytest.raises(ValueError, match=message):
        cache_usage()
    with pytest.raises(ValueError, match=message):  # before the compiler runs: nothing is built
        RawModule(CACHE_SOURCE % 10)
    assert not list(cache.glob("*.so"))


# ---- eviction, on stand-in builds (files of known sizes and ages) ---------------------------


def fake_build(directory, name, size, age_seconds, record=True):
    """A build file of `size` bytes, its record (10 bytes), last used `age_seconds` ago."""
    path = directory / name
    path.write_bytes(b"\0" * size)
    if record:
        _cache.record_path(path).write_text("x" * 9 + "\n")
    used = time.time() - age_seconds
    os.utime(path, (used, used))
    return path


def remaining(directory):
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def test_eviction_removes_least_recently_used_builds_first(cache):
    fake_build(cache, "aaa.so", 1000, age_seconds=30)
    fake_build(cache, "bbb-sanitize.bin", 1000, age_seconds=300)
    fake_build(cache, "ccc.so", 1000, age_seconds=10)
    fake_build(cache, "ddd.so", 1000, age_seconds=3000)
    (cache / "unrelated.txt").write_text("not a build: never counted nor removed")
    usage = cache_usage()
    assert (usage.path, usage.bytes, usage.builds) == (cache, 4 * 1010, 4)
    # Over by one byte after removing the oldest: the next oldest goes too.
    assert _cache.evict(limit=2 * 1010 - 1 + 1010) == ["ddd.so", "bbb-sanitize.bin"]
    assert remaining(cache) == ["aaa.so", "aaa.so.sha256", "ccc.so", "ccc.so.sha256", "unrelated.txt"]
    assert _cache.evict(limit=2 * 1010) == []  # within the limit: nothing to do
    assert _cache.evict(limit=0) == ["aaa.so", "ccc.so"]
    assert remaining(cache) == ["unrelated.txt"]
    assert cache_usage().builds == 0


def test_left_over_records_and_lock_files_count_and_go_first_when_older(cache):
    fake_build(cache, "new.so", 1000, age_seconds=5)
    stray = _cache.record_path(cache / "gone.so")  # its build was removed by hand, say
    stray.write_text("x" * 99 + "\n")
    os.utime(stray, (time.time() - 100, time.time() - 100))
    assert cache_usage().bytes == 1010 + 100 and cache_usage().builds == 1
    assert _cache.evict(limit=1010) == ["gone.so"]
    assert remaining(cache) == ["new.so", "new.so.sha256"]


_HOLDER = """
import sys
from pathlib import Path
from cudeconv.emulator import _cache
held = _cache.hold(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.readline()
"""


def test_held_builds_survive_eviction(cache):
    held_here = fake_build(cache, "here.so", 1000, age_seconds=500)
    held_elsewhere = fake_build(cache, "elsewhere-sanitize.bin", 1000, age_seconds=400)
    fake_build(cache, "free.so", 1000, age_seconds=300)
    hold = _cache.hold(held_here)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(held_elsewhere)], env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == "held\n"
        assert _cache.evict(limit=0) == ["free.so"]
        assert held_here.exists() and held_elsewhere.exists()
    finally:
        child.communicate("done\n", timeout=60)
    assert child.returncode == 0
    assert _cache.evict(limit=0) == ["elsewhere-sanitize.bin"]  # its holder has exited
    hold.release()
    assert _cache.evict(limit=0) == ["here.so"]
    assert remaining(cache) == []


def test_a_hold_waits_for_an_eviction_and_then_locks_the_new_lock_file(cache):
    import fcntl

    build = cache / "wanted.so"
    lock = _cache.lock_path(build)
    evictor = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(evictor, fcntl.LOCK_EX)
    holds = []
    waiter = threading.Thread(target=lambda: holds.append(_cache.hold(build)))
    waiter.start()
    time.sleep(0.3)
    assert not holds  # blocked behind the eviction
    lock.unlink()  # what an evictor does before it lets go
    os.close(evictor)
    waiter.join(timeout=30)
    (hold,) = holds
    assert os.path.samestat(os.fstat(hold._fd), os.stat(lock))  # the file now at the path
    with pytest.raises(BlockingIOError):  # and it is really held
        _cache._lock_current_file(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    hold.release()


# ---- with real builds -----------------------------------------------------------------------


def test_a_loaded_build_is_held_and_each_load_marks_it_used(cache, monkeypatch):
    source = CACHE_SOURCE % 5
    np.testing.assert_array_equal(fill_with(source, 1), 6)
    (artifact,) = cache.glob("*.so")
    os.utime(artifact, (1e9, 1e9))  # long unused, by its time
    assert _cache.evict(limit=0) == []  # but loaded in this process
    monkeypatch.setattr(_compiler, "_loaded", {})  # a fresh load from disk, as a new process does
    np.testing.assert_array_equal(fill_with(source, 2), 7)
    assert time.time() - artifact.stat().st_mtime < 60
    # A build whose only user has exited is free to go.
    script = f"from cudeconv.emulator import RawModule\nRawModule({CACHE_SOURCE % 6!r})\n"
    subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), check=True)
    assert cache_usage().builds == 2
    (removed,) = _cache.evict(limit=0)
    assert removed != artifact.name and artifact.exists()


def test_a_build_past_the_limit_evicts_older_unused_ones(cache, monkeypatch):
    fake_build(cache, "old.so", 1000, age_seconds=60)
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE_MAX", "1")
    np.testing.assert_array_equal(fill_with(CACHE_SOURCE % 7, 0), 7)
    assert len(list(cache.glob("*.so"))) == 1
    assert not (cache / "old.so").exists()
    usage = cache_usage()  # the new build stays, over the limit, while this process holds it
    assert usage.builds == 1 and usage.bytes > usage.limit == 1


def _build_and_check(job):
    """One process of test_processes_building_and_evicting_at_once (spawned)."""
    worker, sources = job
    for value, (offset, source) in enumerate(sources):
        x = fill_with(source, value)
        assert (x == value + offset).all(), (worker, offset, x)
    return worker


@pytest.mark.slow
def test_processes_building_and_evicting_at_once(cache, monkeypatch):
    # A 1-byte limit: every build evicts every build nobody holds, so the processes keep
    # removing what the other one built while it loads, builds and runs its own.
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE_MAX", "1")
    shared = [(offset, CACHE_SOURCE % offset) for offset in (20, 21)]
    jobs = [(w, shared[w:] + [(30 + 2 * w + i, CACHE_SOURCE % (30 + 2 * w + i)) for i in range(2)] + shared[:w])
            for w in range(2)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert sorted(pool.map(_build_and_check, jobs)) == [0, 1]
    assert not list(cache.glob(".build-*"))
    builds = [p for p in cache.iterdir() if p.name.endswith(".so")]
    assert all(_compiler._intact(p) for p in builds)  # whatever is left is whole and recorded
    _cache.evict(limit=0)  # nobody holds any now
    assert cache_usage().builds == 0 and remaining(cache) == []


# ---- integrity ------------------------------------------------------------------------------


def test_disk_cache_hit_skips_the_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE", str(tmp_path))
    source = CACHE_SOURCE % 1
    first = RawModule(source)
    assert first._compiled is RawModule(source)._compiled  # in-memory cache
    assert len(list(tmp_path.glob("*.so"))) == 1
    assert not list(tmp_path.glob(".build-*"))

    def no_compiler(*args, **kwargs):
        raise AssertionError("the compiler ran despite a cached build")

    monkeypatch.setattr(_compiler, "_loaded", {})  # forget the loaded module: go to disk
    monkeypatch.setattr(_compiler, "_run_compiler", no_compiler)
    second = RawModule(source)
    assert second._compiled is not first._compiled
    x = np.zeros(4, np.int32)
    second.get_function("fill")((1,), (4,), (x, np.int32(41)))
    np.testing.assert_array_equal(x, 42)
    with pytest.raises(AssertionError, match="the compiler ran"):
        RawModule(source, options=("-DSOMETHING_NEW",))  # a different key does compile


def _replace_file(path, data):
    # A new file rather than rewriting this one, which this process has mapped.
    scratch = path.with_name(path.name + ".new")
    scratch.write_bytes(data)
    os.replace(scratch, path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped byte", "no record"])
def test_damaged_cache_artifact_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE", str(tmp_path))
    source = CACHE_SOURCE % 3
    RawModule(source)
    (artifact,) = tmp_path.glob("*.so")
    record = artifact.with_name(artifact.name + ".sha256")
    size, digest = record.read_text().split()
    assert int(size) == artifact.stat().st_size and len(digest) == 64
    data = artifact.read_bytes()
    if damage == "empty":
        _replace_file(artifact, b"")
    elif damage == "truncated":  # loading it as it is can end the process with SIGBUS
        _replace_file(artifact, data[: len(data) // 2])
    elif damage == "flipped byte":
        _replace_file(artifact, data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    else:
        record.unlink()
    monkeypatch.setattr(_compiler, "_loaded", {})
    x = np.zeros(4, np.int32)
    RawModule(source).get_function("fill")((1,), (4,), (x, np.int32(1)))
    np.testing.assert_array_equal(x, 4)
    assert artifact.read_bytes() == data
    assert record.read_text().split() == [size, digest]


def test_cache_artifact_that_matches_its_record_but_does_not_load_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDECONV_EMULATOR_CACHE", str(tmp_path))
    source = CACHE_SOURCE % 4
    RawModule(source)
    (artifact,) = tmp_path.glob("*.so")
    _replace_file(artifact, b"not a shared object")
    artifact.with_name(artifact.name + ".sha256").write_text(_compiler._file_record(artifact))
    monkeypatch.setattr(_compiler, "_loaded", {})
    x = np.zeros(4, np.int32)
    RawModule(source).get_function("fill")((1,), (4,), (x, np.int32(1)))
    np.testing.assert_array_equal(x, 5)


@pytest.mark.slow
def test_two_processes_compiling_at_once(tmp_path):
    source = CACHE_SOURCE % 2
    script = (
        "import numpy as np\n"
        "from cudeconv.emulator import RawModule\n"
        f"x = np.zeros(4, np.int32)\n"
        f"RawModule({source!r}).get_function('fill')((1,), (4,), (x, np.int32(5)))\n"
        "assert (x == 7).all(), x\n"
    )
    env = dict(os.environ, CUDECONV_EMULATOR_CACHE=str(tmp_path), PYTHONPATH=str(REPO_ROOT))
    children = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE) for _ in range(2)]
    for child in children:
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr.decode()
    assert len(list(tmp_path.glob("*.so"))) == 1
    assert not list(tmp_path.glob(".build-*"))
