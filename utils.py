"""What every part of the toolkit shares and that has no other home: the user-error type, names, atomic writes."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager


class UsageError(Exception):
    """Bad input the user can fix; printed as one line, exit code 2, no traceback."""


def safe_name(env_id: str) -> str:
    """A file name for an env id: `ALE/Pong-v5` -> `ALE_Pong-v5`, `mod:Env-v0` -> `mod_Env-v0`."""
    return env_id.replace("/", "_").replace(":", "_").replace("\\", "_")


def first_line(error: BaseException) -> str:
    """An exception's first line, for a one-line message (its type where it has no text)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}h {seconds % 3600 // 60:02d}m {seconds % 60:02d}s"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file; mkstemp's are 0600


@contextmanager
def atomic_write(path: str, mode: str = "w"):
    """A file object whose contents replace `path` all at once when the block ends: written to a temp file
    beside it, flushed to disk and renamed over it. An error or a crash on the way leaves `path` as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
