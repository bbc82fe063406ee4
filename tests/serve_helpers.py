"""What the serve tests (and benchmarks/serve_load.py) share: a Fashion-MNIST run directory, and `deepres serve`
started for a test (a subprocess on 127.0.0.1, a free port, stopped when the `with` block ends)."""
import contextlib
import os
import subprocess
import sys
import threading
import time
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


def running_server(*args: str):
    """`deepres serve ARGS` of this checkout (src/ first on the child's path); yields the base URL."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    return serve_subprocess(*args, env=env)


@contextlib.contextmanager
def serve_subprocess(*args: str, timeout: float = 120.0, env: dict | None = None):
    """`deepres serve ARGS --port 0` in a subprocess on 127.0.0.1 (for tests and benchmarks): yields its base URL
    once /healthz answers; SIGTERM (then SIGKILL) when the block ends. `env`: the child's environment."""
    if "--host" in args or "--port" in args:
        raise ValueError("serve_subprocess listens on 127.0.0.1 and a free port; do not pass --host or --port")
    process = subprocess.Popen([sys.executable, "-m", "deepres", "serve", *args, "--port", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)  # never fills the pipe
    reader.start()
    try:
        line = process.stdout.readline()  # run()'s "deepres serve: MODEL on http://127.0.0.1:PORT (...)", "" if it died
        if " on http://" not in line:
            process.wait(timeout=30)
            reader.join(5)
            raise RuntimeError(f"deepres serve did not start (exit {process.returncode}): {''.join(stderr)[-3000:]}")
        url = line.split(" on ")[1].split()[0]
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"deepres serve at {url} never became healthy: {''.join(stderr)[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        reader.join(5)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
