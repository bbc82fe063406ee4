"""Checkpoints: bare-model weights as safetensors, training state as a weights_only-loadable .pt.

A checkpoint `<name>` in a directory is two files:
  <name>.safetensors  the bare model's state_dict (no DDP `module.` / torch.compile `_orig_mod.` prefixes);
                      metadata: resolved config (JSON), class names (JSON), model class, step, epoch
  <name>.state.pt     optimizer, schedule position (step, epoch), EMA weights, GradScaler, RNG states
                      (torch CPU/CUDA, numpy, python), resolved config, best metric
Every write goes to a hidden temp file in the same directory, is fsynced, then os.replace()d over the
final name, so a crash leaves either the old or the new file, never a torn one. Loads read only the final
names; stray `.<name>...tmp` files are ignored.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import safetensors.torch
import torch
import torch.nn as nn

from .files import atomic_write_many

STATE_FORMAT = 1  # bump when the .state.pt layout changes


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model



# ------------------------------------------------------------------------------------------ RNG state


def capture_rng_state() -> dict:
    """torch (CPU and every CUDA device), numpy and python RNG states as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ save / load


def checkpoint_paths(directory: str | Path, name: str) -> tuple[Path, Path]:
    directory = Path(directory)
    return directory / f"{name}.safetensors", directory / f"{name}.state.pt"


def save_checkpoint(directory: str | Path, name: str, *, model: nn.Module, state: dict, config: dict,
                    classes: list[str] | None = None, also: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write `<name>.safetensors` (bare model) and `<name>.state.pt` (`state` + config) atomically.

    `state` must hold only tensors, dicts, lists, numbers, strings and None, and include `step` and `epoch`.
    `also`: further names (e.g. "best") to write the same checkpoint under, serialised once; every file is
    complete before any is renamed. Returns the paths of `name`.
    """
    bare = unwrap_model(model)
    # contiguous(): safetensors needs dense row-major tensors (channels_last weights are not)
    tensors = {k: v.detach().contiguous().cpu() for k, v in bare.state_dict().items()}
    metadata = {
        "format": "pt",
        "config": json.dumps(config),
        "classes": json.dumps(list(classes) if classes is not None else []),
        "model_class": f"{type(bare).__module__}.{type(bare).__qualname__}",
        "step": str(int(state["step"])),
        "epoch": str(int(state["epoch"])),
    }
    blob = safetensors.torch.save(tensors, metadata=metadata)
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state, "config": config}, buffer)
    state_blob = buffer.getvalue()
    # All temp files are complete before any rename; a crash between a pair's two renames (microseconds)
    # leaves a pair whose steps differ, which load_checkpoint detects.
    items = []
    for each in (name, *also):
        weights_path, state_path = checkpoint_paths(directory, each)
        items += [(state_path, lambda f: f.write(state_blob)), (weights_path, lambda f: f.write(blob))]
    atomic_write_many(items)
    return checkpoint_paths(directory, name)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict on CPU, metadata with `config` and `classes` decoded from JSON) from a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:  # what load_file does, once
            metadata = dict(f.metadata() or {})
            tensors = f.get_tensors()
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    for key in ("config", "classes"):
        if key in metadata:
            try:
                metadata[key] = json.loads(metadata[key])
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: metadata {key!r} is not JSON ({e})") from None
    return tensors, metadata


def load_checkpoint(directory: str | Path, name: str = "last") -> tuple[dict[str, torch.Tensor], dict]:
    """(model state_dict, training state) of checkpoint `name`; checks the two files belong together."""
    weights_path, state_path = checkpoint_paths(directory, name)
    if not state_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no checkpoint {name!r} in {directory} (need {weights_path.name} and "
                                f"{state_path.name})")
    tensors, metadata = load_weights(weights_path)
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{state_path}: not a readable training state ({e})") from None
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{state_path}: state format {state.get('format')!r}, this version reads {STATE_FORMAT}")
    if (metadata.get("step"), metadata.get("epoch")) != (str(state["step"]), str(state["epoch"])):
        raise ValueError(f"checkpoint {name!r} in {directory} is inconsistent: weights are from step "
                         f"{metadata.get('step')}, state from step {state['step']} (interrupted save?)")
    return tensors, state


def resolve_checkpoint(path: str) -> Path:
    """A run directory -> its best (else last) weights; a checkpoints/ directory likewise; a file as is."""
    p = Path(path)
    if p.is_dir():
        for folder in (p / "checkpoints", p):
            for name in ("best.safetensors", "last.safetensors"):
                if (folder / name).is_file():
                    return folder / name
        raise FileNotFoundError(f"{p}: no checkpoints/best.safetensors or last.safetensors in this directory")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p
