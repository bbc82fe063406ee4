"""Checkpoints: bare-model weights as safetensors, training state as a weights_only-loadable .pt.

A checkpoint `<name>` in a directory is two files:
  <name>.safetensors  the bare model's state_dict (no DDP `module.` / torch.compile `_orig_mod.` prefixes);
                      metadata: resolved config (JSON), class names (JSON), model class, step, epoch, and
                      optionally int8_calibration (JSON: int8 activation ranges and their measured agreement with
                      fp32, written by deepres.inference.calibrate; a new save of the weights drops it)
  <name>.state.pt     optimizer, schedule position (step, epoch), EMA weights, GradScaler, RNG states
                      (torch CPU/CUDA, numpy, python), resolved config, best metric
Every write goes to a hidden temp file in the same directory, is fsynced, then os.replace()d over the
final name, so a crash leaves either the old or the new file, never a torn one. Loads read only the final
names; stray `.<name>...tmp` files are ignored. A kill between a pair's two renames leaves the pair from two
different steps; `repair_checkpoints` (run when a run resumes) completes it from the temp file still there and
removes the temp files killed saves left behind.
"""
from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import safetensors.torch
import torch
import torch.nn as nn

from .files import atomic_write, atomic_write_many

STATE_FORMAT = 1  # bump when the .state.pt layout changes
JSON_METADATA = ("config", "classes", "int8_calibration")  # metadata keys stored as JSON text


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
    for key in JSON_METADATA:
        if key in metadata:
            try:
                metadata[key] = json.loads(metadata[key])
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: metadata {key!r} is not JSON ({e})") from None
    return tensors, metadata


def set_weights_metadata(path: str | Path, key: str, value) -> None:
    """Store `value` (JSON-serialisable) under metadata `key` of a .safetensors file, rewriting it atomically: the
    tensors and every other metadata entry stay as they were, and a failure leaves the old file in place."""
    path = Path(path)
    if key not in JSON_METADATA or key in ("config", "classes"):
        raise ValueError(f"metadata key {key!r} cannot be set here; settable: int8_calibration")
    tensors, metadata = load_weights(path)
    raw = {k: json.dumps(v) if k in JSON_METADATA else v for k, v in metadata.items()}
    raw[key] = json.dumps(value)
    blob = safetensors.torch.save(tensors, metadata=raw)
    atomic_write(path, lambda f: f.write(blob))


def load_checkpoint(directory: str | Path, name: str = "last") -> tuple[dict[str, torch.Tensor], dict]:
    """(model state_dict, training state) of checkpoint `name`; checks the two files belong together."""
    weights_path, state_path = checkpoint_paths(directory, name)
    if not state_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no checkpoint {name!r} in {directory} (need {weights_path.name} and "
                                f"{state_path.name})")
    tensors, metadata = load_weights(weights_path)
    state = _read_state(state_path)
    if (metadata.get("step"), metadata.get("epoch")) != (str(state["step"]), str(state["epoch"])):
        raise ValueError(_torn_message(directory, name, metadata.get("step"), state["step"]))
    return tensors, state


def read_training_state(weights: str | Path) -> dict | None:
    """The training state saved beside a checkpoint's weights file (`<name>.state.pt` beside `<name>.safetensors`:
    step, epoch, metrics, best_*), format-checked; None when there is none (weights saved without training)."""
    weights = Path(weights)
    state_path = checkpoint_paths(weights.parent, weights.name.removesuffix(".safetensors"))[1]
    return _read_state(state_path) if state_path.is_file() else None


def _read_state(state_path: Path) -> dict:
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{state_path}: not a readable training state ({e})") from None
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{state_path}: state format {state.get('format')!r}, this version reads {STATE_FORMAT}")
    return state


def _torn_message(directory: str | Path, name: str, weights_step, state_step, *, repaired: bool = False) -> str:
    directory = Path(directory)
    w, st = (p.name for p in checkpoint_paths(directory, name))
    if name != "best" and all(p.is_file() for p in checkpoint_paths(directory, "best")):
        fix = (f"copy best.safetensors and best.state.pt over {w} and {st} (--resume then continues from the best "
               f"checkpoint), or delete all four (--resume then starts the run again)")
    else:
        fix = f"delete {w} and {st} (--resume then starts the run again from step 0)"
    where = ("no complete temp file of that save is left to repair it from: " if repaired else
             "--resume repairs it when that save's temp file is still there; if not, ")
    return (f"checkpoint {name!r} in {directory} is inconsistent: weights are from step {weights_step}, state from "
            f"step {state_step} (a save killed between its two renames); {where}{fix}")


def _checkpoint_position(path: Path, weights: bool) -> tuple[str, str] | None:
    """(step, epoch) of a weights or state file, complete or temp; None when it cannot be read (a torn write)."""
    try:
        if weights:
            with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
            return metadata["step"], metadata["epoch"]
        state = torch.load(path, map_location="cpu", weights_only=True)
        return str(state["step"]), str(state["epoch"])
    except Exception:  # truncated, foreign or without the keys: not a candidate
        return None


def repair_checkpoints(directory: str | Path, names: Sequence[str] = ("last", "best")) -> list[str]:
    """After saves killed part way: complete each checkpoint pair whose two files are from different steps (or
    one of which is missing) from a complete temp file of the same step, and delete every temp file of these
    names. Returns one line per repair; raises ValueError, saying what to do, for a pair it cannot repair."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    said, error = [], None
    for name in names:
        finals = checkpoint_paths(directory, name)
        temps = [sorted(directory.glob(f".{p.name}.*.tmp")) for p in finals]
        try:
            line = _repair_pair(directory, name, finals, temps)
        finally:
            for path in temps[0] + temps[1]:
                path.unlink(missing_ok=True)  # complete or not, a temp file is never read again
        if isinstance(line, ValueError):
            error = error or line
        elif line:
            said.append(line)
    if error is not None:
        raise error
    return said


def _repair_pair(directory: Path, name: str, finals: tuple[Path, Path], temps: list[list[Path]]):
    """A repair line, None (whole or absent), or the ValueError to raise once the temp files are gone."""
    weights_path, state_path = finals
    have = [p.is_file() for p in finals]
    if not any(have):
        return None
    found = [{p: _checkpoint_position(p, weights=k == 0) for p in ([final] if have[k] else []) + temps[k]}
             for k, final in enumerate(finals)]
    if have[0] and have[1] and found[0][weights_path] is not None \
            and found[0][weights_path] == found[1][state_path]:
        return None  # whole (the common case): the temp files are leftovers
    pairs = [(int(a[0]), w, s) for w, a in found[0].items() for s, b in found[1].items() if a is not None and a == b]
    if not pairs:
        if not all(have):
            return None  # a lone file and nothing to complete it with: left as it is (older best = weights only)
        steps = [found[k].get(p) for k, p in enumerate(finals)]
        return ValueError(_torn_message(directory, name, steps[0][0] if steps[0] else "(missing or unreadable)",
                                        steps[1][0] if steps[1] else "(missing or unreadable)", repaired=True))
    step, weights_from, state_from = max(pairs, key=lambda pair: pair[0])
    moved = [(source, final) for source, final in ((weights_from, weights_path), (state_from, state_path))
             if source != final]
    for source, final in moved:
        os.replace(source, final)
    return (f"checkpoint {name!r} in {directory}: a save was killed between its renames; completed it (step {step}) "
            f"from {', '.join(source.name for source, _ in moved)}")


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
