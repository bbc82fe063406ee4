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
            fd, tmp = temp_file(path.parent, prefix=f".{path.name}.", suffix=suffix)
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


def cache_dir() -> Path:
    """deepres's cache folder (downloaded weights, the model table): $DEEPRES_CACHE, else ~/.cache/deepres."""
    root = os.environ.get("DEEPRES_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "deepres"


def current_umask() -> int:
    """The process umask, read without changing it where /proc says it (os.umask can only read by setting, which
    for a moment would give files another thread creates mode 0666)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(directory: str | Path, *, prefix: str, suffix: str = "") -> tuple[int, str]:
    """tempfile.mkstemp (fd, path), with the mode any new file gets (0666 & ~umask) instead of mkstemp's 0600:
    the temp file is renamed into place, and a checkpoint or CSV should be as readable as the user's other files."""
    fd, path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path


def temp_dir(directory: str | Path, *, prefix: str) -> Path:
    """tempfile.mkdtemp, with the mode any new folder gets (0777 & ~umask) instead of mkdtemp's 0700, for a folder
    that is renamed into place."""
    path = Path(tempfile.mkdtemp(dir=directory, prefix=prefix))
    try:
        path.chmod(0o777 & ~current_umask())
    except BaseException:
        path.rmdir()
        raise
    return path


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
