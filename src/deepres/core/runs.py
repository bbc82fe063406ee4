"""Run records: config.yaml, metrics.jsonl (one JSON object per line), TensorBoard scalars, env.json and
curves.png, all in one run directory.

metrics.jsonl lines are {"kind": "step", "step": int, "time": unix_s, ...} or
{"kind": "epoch", "epoch": int, "time": unix_s, ...}. Epochs are numbered from 1 (epoch 1 = the first full
pass, so x = epoch is "epochs completed"). Conventional keys: train_loss, test_error (%), top1, top5 (%),
lr, epoch_time_s, images_per_s, and in epoch records `step` (global step at the end of the epoch), which
places step records on the epoch axis of curves.png.

One process at a time trains in a run directory: `lock_run_dir` takes an exclusive flock on its .lock file
(under torchrun, rank 0's), which the OS releases when the process ends however it ends (kill -9, a SLURM
requeue), so a later --resume is never locked out by a dead process.
"""
import datetime
import errno
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml

from .device import cpu_class_label, cpu_model_name
from .files import atomic_write_text
from .plots import plot_curves

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked (RunLock.warning says so)
    fcntl = None

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"  # in the run directory while a process trains there: "pid N on HOST since TIME"


class RunRecorder:
    """Writes a run's config, metrics, environment and curves into `run_dir`.

    A directory that already holds a metrics.jsonl or config.yaml is refused (FileExistsError) unless
    `resume=True`, which appends to the existing metrics and keeps the existing config.yaml (a different
    new config is written next to it as config.resume<N>.yaml; an empty one, left by a full disk before
    config.yaml was written atomically, is replaced).
    """

    def __init__(self, run_dir: str | os.PathLike, config: dict, *, tensorboard: bool = True,
                 resume: bool = False):
        self.run_dir = Path(run_dir)
        self.start_time = time.time()
        metrics_path = self.run_dir / METRICS_FILE
        config_path = self.run_dir / CONFIG_FILE
        existing = [p.name for p in (metrics_path, config_path) if p.exists()]
        if existing and not resume:
            raise FileExistsError(f"run directory {self.run_dir} already holds {', '.join(existing)}; "
                                  f"choose a new directory or resume the run")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config(config, config_path)
        if metrics_path.exists():
            _drop_partial_last_line(metrics_path)
        # Line-buffered text file plus an explicit flush per record: a killed run keeps every line it wrote.
        self._metrics = open(metrics_path, "a", buffering=1, encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import; only when asked for

            self._writer = SummaryWriter(log_dir=str(self.run_dir))

    def _write_config(self, config: dict, config_path: Path) -> None:
        text = yaml.safe_dump(config, sort_keys=False)
        if not config_path.exists() or not config_path.read_text().strip():
            atomic_write_text(config_path, text)
            return
        if config_path.read_text() == text:
            return
        n = 1
        while (self.run_dir / f"config.resume{n}.yaml").exists():
            n += 1
        atomic_write_text(self.run_dir / f"config.resume{n}.yaml", text)

    def log_step(self, step: int, **scalars) -> None:
        """Append a step record to metrics.jsonl; numbers also go to TensorBoard as train/<key>."""
        self._log({"kind": "step", "step": int(step)}, scalars, "train", int(step))

    def log_epoch(self, epoch: int, **scalars) -> None:
        """Append an epoch record (epochs from 1); numbers also go to TensorBoard as epoch/<key>."""
        self._log({"kind": "epoch", "epoch": int(epoch)}, scalars, "epoch", int(epoch))
        if self._writer is not None:
            self._writer.flush()

    def _log(self, head: dict, scalars: dict, tb_prefix: str, tb_step: int) -> None:
        record = {**head, "time": time.time()}
        for key, value in scalars.items():
            if key in head or key == "time":
                raise ValueError(f"scalar name {key!r} is reserved in metrics records")
            record[key] = _plain(value)
        self._metrics.write(json.dumps(record, allow_nan=False) + "\n")
        self._metrics.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key not in head and key != "time" and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    self._writer.add_scalar(f"{tb_prefix}/{key}", value, tb_step)

    def write_env(self, **extra) -> dict:
        """Write env.json (versions, device, CPU class, git commit, command line, host, start time, and `extra`,
        e.g. the training precision resolved on this machine); returns it."""
        env = collect_env() | extra
        env["start_time"] = datetime.datetime.fromtimestamp(self.start_time).astimezone().isoformat()
        (self.run_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")
        return env

    def plot_curves(self) -> Path:
        """Write curves.png: training loss and test error (%) against epochs; returns its path."""
        self._metrics.flush()
        steps, epochs = read_metrics(self.run_dir)
        path = self.run_dir / "curves.png"
        plot_curves(steps, epochs, path, title=self.run_dir.name)
        return path

    def close(self) -> None:
        """Flush and close metrics.jsonl and the TensorBoard writer (safe to call twice)."""
        if not self._metrics.closed:
            self._metrics.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "RunRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunLock:
    """An exclusive claim on a run directory (lock_run_dir); `release()` or leaving the `with` block ends it, and
    so does the end of the process. `warning` is set (and `held` false) where the filesystem has no file locks."""

    def __init__(self, path: Path, file=None, warning: str = ""):
        self.path, self._file, self.warning = path, file, warning

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        """Remove the lock file, then unlock it (so no process can lock a file that is about to go); safe twice."""
        if self._file is None:
            return
        try:
            if _same_file(self.path, self._file.fileno()):
                self.path.unlink()
        except OSError:
            pass  # the directory was moved or removed meanwhile: nothing to clean up
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)  # also for any DataLoader worker forked with the fd
        self._file.close()
        self._file = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(run_dir: str | os.PathLike) -> RunLock:
    """Claim `run_dir` (which must exist) for this process: flock, non-blocking, on run_dir/.lock.

    Raises FileExistsError naming the holder's pid and host when another process (or another claim in this
    one) holds it. On a filesystem without flock (some Lustre or NFS mounts) it returns an unheld RunLock with a
    `warning` rather than refusing to train."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    if fcntl is None:
        return RunLock(path, warning=f"{run_dir} is not locked against a second process (no fcntl here)")
    while True:
        try:
            file = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="utf-8", errors="replace")
        except PermissionError as e:
            raise ValueError(f"run directory {run_dir}: cannot create its lock file {LOCK_FILE} ({e.strerror}); a "
                             f"run trains only where it may write") from None
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = " ".join(file.read(200).split())  # "pid N on HOST since TIME" (empty: it is being written)
            file.close()
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # ENOLCK, EOPNOTSUPP...
                return RunLock(path, warning=f"{run_dir} is not locked against a second process: this filesystem "
                                             f"does not lock files ({e.strerror or e})")
            raise FileExistsError(f"run directory {run_dir} is in use by {holder or 'another process'}: one "
                                  f"process at a time trains a run; wait for that one to end (or stop it), or "
                                  f"choose another run.name") from None
        # A holder that just released removed the file this one opened: lock the file at the path, not that one
        if _same_file(path, file.fileno()):
            break
        file.close()
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
    file.flush()
    return RunLock(path, file)


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, there = path.stat(), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _plain(value):
    """A JSON-ready value: tensors and numpy scalars to Python numbers, non-finite floats to None."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise ValueError(f"metric value {value!r} of type {type(value).__name__} is not a number or string")


def _drop_partial_last_line(path: Path) -> None:
    """Cut an unterminated last line (a run killed mid-write) so appended records start on a fresh line."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        warnings.warn(f"{path}: dropping a partial last line ({len(data) - keep} bytes) before resuming")
        f.truncate(keep)


def read_metrics(run_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """Step and epoch records from a run's metrics.jsonl (a directory or the file itself).

    A truncated last line (a run killed mid-write) is skipped. When a resumed run logs a step or epoch
    that was already logged, the older records from there on are dropped: the history is the latest one.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    steps, epochs = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # the unterminated last line
                continue
            raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg})") from None
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind not in ("step", "epoch") or kind not in record:
            raise ValueError(f"{path}, line {number}: expected a record with kind 'step' or 'epoch' "
                             f"and that key, got {line[:80]!r}")
        records = steps if kind == "step" else epochs
        while records and records[-1][kind] >= record[kind]:
            records.pop()
        records.append(record)
    return steps, epochs


def collect_env() -> dict:
    """Versions, device, thread count, deepres git commit, command line and host of this process."""
    commit, dirty = _git_state(Path(__file__).resolve().parent)
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": _device_name(),
        "cpu_class": cpu_class_label(),
        "num_threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": dirty,
        "argv": list(sys.argv),
        "hostname": socket.gethostname(),
    }


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return cpu_model_name() or platform.processor() or platform.machine() or "cpu"


def _git_state(directory: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git tree holding `directory`, or (None, None) outside git or without git."""
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return commit.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return None, None
