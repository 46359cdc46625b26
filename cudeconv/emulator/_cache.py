"""The emulator's on-disk build cache: where it lives, how large it may grow, what is in use.

Each build is a file named by its key (``<key>.so``, or ``<key>-sanitize.bin`` for a sanitizer
runner) with two companions: its record (``<build>.sha256``, written by ``_compiler``) and its
lock file (``<build>.lock``, empty). A process that uses a build holds a shared ``flock`` on the
lock file from before it looks the build up until it exits (modules are never unloaded), so a
loaded shared object or a sanitizer runner that may be executing always has a holder.

Eviction, after every new build, takes the cache-wide lock (one evictor at a time), then removes
least-recently-used builds while the cache is over its limit, each only if it can take that
build's lock exclusively without waiting: a build somebody holds is skipped, whatever its age.
A removed build's lock file is unlinked while the evictor still holds it, so a process that was
waiting for it finds, once it gets the lock, that the file at the path is not the one it locked,
and locks the new one instead (``hold``). "Used" is the build file's modification time, which
every load sets.
"""

import dataclasses
import errno
import fcntl
import os
import re
from pathlib import Path

CACHE_VARIABLE = "CUDECONV_EMULATOR_CACHE"
LIMIT_VARIABLE = "CUDECONV_EMULATOR_CACHE_MAX"
DEFAULT_LIMIT_BYTES = 1 << 30
BUILD_SUFFIXES = (".so", "-sanitize.bin")
RECORD_SUFFIX = ".sha256"
LOCK_SUFFIX = ".lock"
_EVICTION_LOCK = ".eviction.lock"
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def cache_dir():
    """``$CUDECONV_EMULATOR_CACHE``, else ``~/.cache/cudeconv/emulator`` (``$XDG_CACHE_HOME`` honoured)."""
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cudeconv" / "emulator"


def cache_limit():
    """Bytes the cache may hold: ``$CUDECONV_EMULATOR_CACHE_MAX``, default 1 GiB.

    A number of bytes, optionally with a binary suffix: ``500M``, ``2G``, ``1.5GiB``, ``64k``.
    """
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LIMIT_BYTES
    matched = _SIZE.fullmatch(text)
    if not matched:
        raise ValueError(
            f"{LIMIT_VARIABLE} must be a size in bytes, optionally with a suffix K, M, G or T (powers of 1024), "
            f"such as 500M or 2G; got {text!r}"
        )
    number, suffix = matched.groups()
    return int(float(number) * 1024 ** " KMGT".index(suffix.upper() or " "))


def lock_path(build_path):
    return build_path.with_name(build_path.name + LOCK_SUFFIX)


def record_path(build_path):
    return build_path.with_name(build_path.name + RECORD_SUFFIX)


class BuildHold:
    """A shared lock on one build: while any is held, eviction leaves the build alone."""

    def __init__(self, build_path):
        self.build_path = Path(build_path)
        self._fd = _lock_current_file(lock_path(self.build_path), fcntl.LOCK_SH)

    def release(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def hold(build_path):
    """Marks ``build_path`` in use by this process until ``release()`` (or the process ends).

    Waits while an evictor is removing that build, then holds it whether or not it exists yet:
    take it before looking the build up, so it cannot disappear between the check and its use.
    """
    build_path.parent.mkdir(parents=True, exist_ok=True)
    return BuildHold(build_path)


def _lock_current_file(path, operation):
    """An open descriptor of the lock file now at ``path``, locked with ``operation``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, operation)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass  # an evictor unlinked the file we waited for: lock the new one
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class _Entry:
    build_name: str
    files: tuple  # the build's files that exist: build, record, lock
    size: int
    last_used: float


def _entries(directory):
    """The cache's builds, each with whatever of its three files exist."""
    sizes = {}
    times = {}
    files = {}
    try:
        scan = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for item in scan:
        name = item.name
        if name.startswith("."):
            continue  # scratch directories of builds in progress, the eviction lock
        build_name = name
        for suffix in (RECORD_SUFFIX, LOCK_SUFFIX):
            if name.endswith(suffix):
                build_name = name[: -len(suffix)]
        if not build_name.endswith(BUILD_SUFFIXES):
            continue
        try:
            stat = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        files.setdefault(build_name, []).append(name)
        sizes[build_name] = sizes.get(build_name, 0) + stat.st_size
        if name == build_name or build_name not in times:
            times[build_name] = stat.st_mtime
    return [_Entry(name, tuple(files[name]), sizes[name], times[name]) for name in files]


def _remove_if_unused(directory, entry):
    """Deletes a build's files unless someone holds it; True when it was deleted."""
    path = directory / (entry.build_name + LOCK_SUFFIX)
    try:
        fd = _lock_current_file(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    try:
        # The build file first: a build without its record is rebuilt, never loaded unchecked.
        for name in (entry.build_name, entry.build_name + RECORD_SUFFIX):
            (directory / name).unlink(missing_ok=True)
        path.unlink(missing_ok=True)  # while still locked: see the module docstring
    finally:
        os.close(fd)
    return True


def evict(limit=None):
    """Removes least-recently-used builds that nobody holds until the cache is within ``limit``
    bytes (default ``cache_limit()``). Returns the names of the builds it removed."""
    limit = cache_limit() if limit is None else limit
    directory = cache_dir()
    if not directory.is_dir():
        return []
    removed = []
    with open(directory / _EVICTION_LOCK, "a") as eviction_lock:
        fcntl.flock(eviction_lock, fcntl.LOCK_EX)
        entries = sorted(_entries(directory), key=lambda e: (e.last_used, e.build_name))
        total = sum(e.size for e in entries)
        for entry in entries:
            if total <= limit:
                break
            if _remove_if_unused(directory, entry):
                total -= entry.size
                removed.append(entry.build_name)
    return removed


def touch(build_path):
    """Records a use of the build, for least-recently-used eviction."""
    try:
        os.utime(build_path)
    except OSError:
        pass  # a shared cache directory written by another user: eviction order only


@dataclasses.dataclass(frozen=True)
class CacheUsage:
    """What ``cache_usage()`` reports."""

    path: Path
    bytes: int  # all the builds' files: builds, records, lock files
    builds: int
    limit: int  # bytes; eviction keeps the cache at or below it, builds in use aside


def cache_usage():
    """The build cache's directory, its size in bytes, its number of builds and its limit.

    Raises ``ValueError`` naming ``CUDECONV_EMULATOR_CACHE_MAX`` when that is not a size.
    """
    directory = cache_dir()
    entries = _entries(directory)
    builds = sum(1 for e in entries if e.build_name in e.files)
    return CacheUsage(directory, sum(e.size for e in entries), builds, cache_limit())
