"""Atomic file writes: every file deepres writes (checkpoints, downloads, manifests, predictions) goes to a hidden
temp file beside its target, is fsynced, and is renamed over the target only when complete, so a crash or an
error leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None], *, suffix: str = ".tmp") -> None:
    """Write a file through `write(fileobj)` to a temp file beside it (hidden, ending in `suffix`), fsync, then
    rename over `path`. If `write` raises, the temp file is deleted and `path` is left as it was."""
    atomic_write_many([(path, write)], suffix=suffix)


def atomic_write_many(items: list[tuple[str | Path, Callable[[io.BufferedWriter], None]]], *,
                      suffix: str = ".tmp") -> None:
    """Write every file to its own fsynced temp file first, then rename them all, back to back."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, write in items:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    for directory in {path.parent for _, path in temps}:
        _fsync_dir(directory)  # make the renames themselves durable


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
