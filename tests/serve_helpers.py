"""What the serve tests (and benchmarks/serve_load.py, serve_memory.py) share: a Fashion-MNIST run directory, and
`deepres serve` started for a test (a subprocess on 127.0.0.1, a free port, stopped when the `with` block ends), with
its peak memory read from /proc."""
import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
import urllib.error
import urllib.request
from pathlib import Path

import torch

from deepres.core.checkpoint import save_checkpoint
from deepres.core.config import Config, config_to_dict
from deepres.models import create_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "fashion_mnist"
FASHION_CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle_boot"]


def fashion_run(directory: Path, seed: int = 0) -> Path:
    """A deepres run directory: a Fashion-MNIST ResNet-20 (random weights, 1 channel, 28 px) with a recorded top-1."""
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_chans = "resnet20", 10, 1
    cfg.data.name = "fashion_mnist"
    torch.manual_seed(seed)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    save_checkpoint(directory / "checkpoints", "last", model=model, config=config_to_dict(cfg),
                    state={"step": 5, "epoch": 1, "metrics": {"top1": 11.5}, "best_top1": 11.5},
                    classes=FASHION_CLASSES)
    return directory


def seg_run(directory):
    """A deepres run directory: an (untrained) 3-class FCN-ResNet-20 for 1-channel images, seen at their own size."""
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_chans = "fcn_resnet20", 3, 1
    cfg.model.kwargs = {"widths": [8, 16, 32]}
    cfg.data.name, cfg.data.image_size = "pairs", 28
    torch.manual_seed(0)
    model = create_model("fcn_resnet20", num_classes=3, in_chans=1, widths=[8, 16, 32])
    save_checkpoint(directory / "checkpoints", "last", model=model, config=config_to_dict(cfg),
                    state={"step": 1, "epoch": 1}, classes=["background", "shirt", "bag"])
    return directory


def checkout_env() -> dict:
    """This process's environment with this checkout's src/ first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}


def running_server(*args: str):
    """`deepres serve ARGS` of this checkout (src/ first on the child's path); yields the base URL."""
    return serve_subprocess(*args, env=checkout_env())


@dataclass
class Served:
    """A running `deepres serve`: its base URL, its process, and what it printed so far."""

    url: str
    process: subprocess.Popen
    stdout: list[str] = field(default_factory=list)  # the lines after the first ("... on http://...")
    stderr: list[str] = field(default_factory=list)

    def memory_kib(self, key: str = "VmHWM") -> int:
        """A memory figure of the server process from /proc/PID/status, KiB: VmHWM (peak resident set), VmRSS."""
        return proc_status_kib(self.process.pid, key)


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {key}")


@contextlib.contextmanager
def serve_subprocess(*args: str, timeout: float = 120.0, env: dict | None = None):
    """`deepres serve ARGS --port 0` in a subprocess on 127.0.0.1 (for tests and benchmarks): yields its base URL
    once /healthz answers; SIGTERM (then SIGKILL) when the block ends. `env`: the child's environment."""
    with serve_process(*args, timeout=timeout, env=env) as served:
        yield served.url


@contextlib.contextmanager
def serve_process(*args: str, timeout: float = 120.0, env: dict | None = None, cwd: Path | None = None):
    """serve_subprocess, yielding the Served (URL, process, output) instead of the URL alone; `env` defaults to
    checkout_env(), `cwd` (the folder it starts in) to this process's."""
    if "--host" in args or "--port" in args:
        raise ValueError("serve_subprocess listens on 127.0.0.1 and a free port; do not pass --host or --port")
    process = subprocess.Popen([sys.executable, "-m", "deepres", "serve", *args, "--port", "0"],
                               env=checkout_env() if env is None else env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    served = Served("", process)
    reader = threading.Thread(target=lambda: served.stderr.extend(process.stderr), daemon=True)  # never fills
    reader.start()
    out_reader = None
    try:
        line = process.stdout.readline()  # run()'s "deepres serve: MODEL on http://127.0.0.1:PORT (...)", "" if it died
        if " on http://" not in line:
            process.wait(timeout=30)
            reader.join(5)
            raise RuntimeError(f"deepres serve did not start (exit {process.returncode}): "
                               f"{''.join(served.stderr)[-3000:]}")
        served.url = line.split(" on ")[1].split()[0]
        out_reader = threading.Thread(target=lambda: served.stdout.extend(process.stdout), daemon=True)
        out_reader.start()
        deadline = time.monotonic() + timeout
        while not _healthy(served.url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"deepres serve at {served.url} never became healthy: "
                                   f"{''.join(served.stderr)[-3000:]}")
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(5)
        if out_reader is not None:
            out_reader.join(5)
        process.stdout.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
