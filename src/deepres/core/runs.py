"""Run records: config.yaml, metrics.jsonl (one JSON object per line), TensorBoard scalars, env.json and
curves.png, all in one run directory.

metrics.jsonl lines are {"kind": "step", "step": int, "time": unix_s, ...} or
{"kind": "epoch", "epoch": int, "time": unix_s, ...}. Epochs are numbered from 1 (epoch 1 = the first full
pass, so x = epoch is "epochs completed"). Conventional keys: train_loss, test_error (%), top1, top5 (%),
lr, epoch_time_s, images_per_s, and in epoch records `step` (global step at the end of the epoch), which
places step records on the epoch axis of curves.png.
"""
import datetime
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

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


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
