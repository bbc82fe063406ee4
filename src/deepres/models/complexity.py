"""Parameter and FLOP counts. FLOPs are counted by torch.utils.flop_counter on the meta device (no compute) and
reported as multiply-accumulates (GMACs), torchvision's convention: convolutions and linear layers only (resnet50 =
4.09; mmcls's counter adds BN, ReLU and pooling, about 0.6% more).

Counting is slow for deep models even on the meta device (its kernels are Python: preact_resnet1001 takes ~1.4 s to
build and ~1.5 s to count, the whole zoo ~13 s; one run each on the 2-core CPU dev box), so the `deepres models`
table is kept in a cache, valid while this package's source and torch's version are unchanged."""
import hashlib
import json
import logging
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from deepres.core.files import atomic_write_text, cache_dir

from .base import module_device
from .registry import builder_module, create_model, default_input_size

log = logging.getLogger(__name__)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: torch.nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply-accumulates (x1e9) of one forward pass of one image of `input_size` (C, H, W)."""
    model = model.eval()
    device = module_device(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, *input_size, device=device))
    return counter.get_total_flops() / 2 / 1e9


def model_complexity(name: str, num_classes: int | None = None, input_size=None, flops: bool = True,
                     **overrides) -> dict:
    """Params and GMACs (nan if not `flops`) of a registered model at `input_size` (C, H, W; default: its own
    resolution), built on the meta device (no memory, no compute); `overrides` go to create_model."""
    input_size = tuple(input_size or default_input_size(name))
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=input_size[0], **overrides)
    gmacs = count_gmacs(model, input_size) if flops else float("nan")
    return {"name": name, "params": count_params(model), "gmacs": gmacs, "input_size": input_size}


def complexity_cache_path() -> Path:
    """$DEEPRES_CACHE/model_complexity.json, else ~/.cache/deepres/model_complexity.json."""
    return cache_dir() / "model_complexity.json"


def _source_fingerprint() -> str:
    """torch's version and every source file of this package: a change to a model's code or table recounts."""
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _read_cache(path: Path, fingerprint: str) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: counted anew
    if not isinstance(cache, dict) or cache.get("fingerprint") != fingerprint:
        return {}
    rows = cache.get("rows")
    return rows if isinstance(rows, dict) else {}


def table_complexity(names: list[str], flops: bool = True) -> list[dict]:
    """model_complexity of each model at its defaults, for the `deepres models` table. Rows of deepres's own
    models are read from the cache (complexity_cache_path) when there; new ones counted are added to it."""
    path, fingerprint = complexity_cache_path(), _source_fingerprint()
    cached = _read_cache(path, fingerprint)
    rows, added = [], False
    for name in names:
        cacheable = builder_module(name).startswith("deepres.models.")  # a user's builder may change unseen
        if cacheable and name in cached:
            row = cached[name]
            rows.append({**row, "name": name, "input_size": tuple(row["input_size"])})
            continue
        row = model_complexity(name, flops=flops)
        rows.append(row)
        if cacheable and flops:
            cached[name] = {"params": row["params"], "gmacs": row["gmacs"], "input_size": list(row["input_size"])}
            added = True
    if added:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"fingerprint": fingerprint, "rows": cached}, indent=1))
        except OSError as e:  # a read-only home: the table is still right, only slower next time
            log.warning("could not write the model table cache %s: %s", path, e)
    return rows
