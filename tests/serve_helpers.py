"""What the serve tests share: a Fashion-MNIST run directory, and `deepres serve` started for a test (a subprocess on
127.0.0.1, a free port, stopped when the `with` block ends)."""
import os
from pathlib import Path

import torch

from deepres.core.checkpoint import save_checkpoint
from deepres.core.config import Config, config_to_dict
from deepres.inference.serve import serve_subprocess
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
