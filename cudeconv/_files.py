"""Writing files so that a reader, a crash or a full disk never leaves half of one: checkpoints
(layers), the benchmark's and the demo's JSON (cli), the autotuning cache (autotune)."""
from __future__ import annotations

import os
import secrets


def write_atomically(path, write):
    """Call ``write(file)`` (a binary file) on a new file beside ``path``, fsync it, rename it over
    ``path`` and fsync the directory: ``path`` is always either the old file or the complete new one."""
    path = os.path.realpath(path)  # through a symlink: replace its target, keep the link
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never write into someone else's file; mode 0o666 lets the umask set the permissions a
    # plain new file would get.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    if os.name == "posix":  # make the rename itself durable; Windows cannot open a directory
        try:
            directory_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(directory_fd)
            finally:
                os.close(directory_fd)
        except OSError:  # some file systems cannot fsync a directory; the new file is in place anyway
            pass
