"""Loading checkpoints into deepres models: .pth/.pt (weights_only) and .safetensors, with key remapping for
torchvision, timm, mmcls/mmpretrain, DDP (`module.`) and torch.compile (`_orig_mod.`) checkpoints."""
import logging
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
import torch.nn as nn

log = logging.getLogger(__name__)

# Containers that wrap the state dict in common checkpoint formats (mmcls, timm train, deepres state files).
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
# Prefixes added by wrappers or by mmcls/mmpretrain's model layout.
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_RENAMES = (
    (re.compile(r"^head\.fc\."), "fc."),  # mmcls ImageClsHead / LinearClsHead
    # mmcls ResNetV1c/V1d deep stem: stem.{0,1,2}.{conv,bn} -> timm's conv1.{0,3,6} / conv1.{1,4} / bn1
    (re.compile(r"^stem\.0\.conv\."), "conv1.0."),
    (re.compile(r"^stem\.0\.bn\."), "conv1.1."),
    (re.compile(r"^stem\.1\.conv\."), "conv1.3."),
    (re.compile(r"^stem\.1\.bn\."), "conv1.4."),
    (re.compile(r"^stem\.2\.conv\."), "conv1.6."),
    (re.compile(r"^stem\.2\.bn\."), "bn1."),
)
# A projection shortcut's modules: `<block>.downsample.<index>.<param>`.
_SHORTCUT_KEY = re.compile(r"^(?P<shortcut>.*\.downsample\.)(?P<index>\d+)\.(?P<param>.+)$")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch pickle (weights_only=True, never the unsafe fallback)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: zero bytes, not a checkpoint (an interrupted download or copy?)")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise ValueError(f"{path}: not a valid safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
        raise ValueError(
            f"{path}: cannot be loaded as plain weights with weights_only=True (it may pickle code or whole "
            f"modules, or be truncated). Save `model.state_dict()` instead. Loader said: {_first_line(e)}"
        ) from None
    return unwrap_state_dict(obj, source=str(path))


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type where the message is empty (EOFError on a zero-byte file)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside a checkpoint object (bare, or under state_dict/model/...)."""
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], dict):
                return unwrap_state_dict(obj[key], source)
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    kind = type(obj).__name__
    keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
    raise ValueError(f"{source}: not a state dict (found a {kind}{keys}); expected a mapping of names to tensors")


def remap_keys(state_dict: dict[str, torch.Tensor], model_keys=()) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and rename mmcls keys to deepres/torchvision names. A prefix that the model's own
    keys (`model_keys`) start with is kept: a segmentation model's `backbone.` is part of its layout; the model's
    keys also place mmpretrain ResNetV1d's stride-1 shortcut (see _align_shortcut_indices)."""
    prefixes = [p for p in _STRIP_PREFIXES if not any(k.startswith(p) for k in model_keys)]
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        for pattern, replacement in _RENAMES:
            key = pattern.sub(replacement, key)
        if key in out:
            raise ValueError(f"two checkpoint keys map to {key!r} after prefix remapping")
        out[key] = value
    return _align_shortcut_indices(out, model_keys)


def _shortcut_indices(keys) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for key in keys:
        match = _SHORTCUT_KEY.match(key)
        if match:
            found.setdefault(match["shortcut"], set()).add(int(match["index"]))
    return found


def _align_shortcut_indices(state_dict: dict[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """Shift a shortcut stored as downsample.0 (conv) / .1 (BN) to .1 / .2 where the model's has those.

    mmpretrain's ResNetV1d puts its AvgPool2d in a shortcut only when the stride is 2, so layer1's stride-1
    shortcut is conv .0, BN .1 while layers 2-4 are pool .0, conv .1, BN .2 (mmpretrain/models/backbones/resnet.py,
    ResLayer). deepres's D shortcut, like timm's, keeps an Identity at index 0 in every block, .1 and .2 throughout.
    """
    wanted = _shortcut_indices(model_keys)
    shift = {prefix for prefix, indices in _shortcut_indices(state_dict).items()
             if indices == {0, 1} and wanted.get(prefix) == {1, 2}}
    if not shift:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        match = _SHORTCUT_KEY.match(key)
        if match and match["shortcut"] in shift:
            key = f"{match['shortcut']}{int(match['index']) + 1}.{match['param']}"
        out[key] = value
    return out


def adapt_input_channels(weight: torch.Tensor, in_chans: int, key: str) -> torch.Tensor:
    """Fit a stem conv trained on 3 channels to `in_chans`: sum over RGB for 1 channel (timm's rule)."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(f"{key}: checkpoint has {weight.shape[1]} input channels, model has {in_chans}; "
                     "only 3 -> 1 can be adapted (by summing over the input channels)")


def load_pretrained(model: nn.Module, path_or_state_dict, strict: bool = True) -> dict:
    """Load weights into `model`; returns {'dropped': [...]} naming the classifier keys left at their init.

    Mismatched keys or shapes raise ValueError listing them. A classifier for a different number of classes is
    dropped with a log message, so fine-tuning from ImageNet weights works with one call.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        state_dict = read_state_dict(path_or_state_dict)
    else:
        source = "state dict"
        state_dict = unwrap_state_dict(path_or_state_dict)
    own = model.state_dict()
    state_dict = remap_keys(state_dict, own)

    first_conv = getattr(model, "first_conv", None)
    if first_conv in state_dict and first_conv in own:
        state_dict[first_conv] = adapt_input_channels(state_dict[first_conv], own[first_conv].shape[1], first_conv)

    dropped = []
    # The layers whose outputs are the classes (a segmentation model's aux head too): refitted, not loaded.
    for prefix in filter(None, (getattr(model, name, None) for name in ("classifier_key", "aux_classifier_key"))):
        for key in (f"{prefix}.weight", f"{prefix}.bias"):
            if key in state_dict and (key not in own or state_dict[key].shape != own[key].shape):
                dropped.append(key)
    if dropped:
        ckpt_classes = state_dict[dropped[0]].shape[0]
        log.warning("%s: classifier dropped (checkpoint has %d classes, model has %d); %s keep their init",
                    source, ckpt_classes, getattr(model, "num_classes", -1), ", ".join(dropped))
        for key in dropped:
            del state_dict[key]

    missing = [k for k in own if k not in state_dict and k not in dropped]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = {k: f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in state_dict.items() if k in own and v.shape != own[k].shape}
    if strict and (missing or unexpected or wrong_shape):
        raise ValueError(f"{source} does not fit {type(model).__name__}:\n" + "\n".join(
            _describe(title, items) for title, items in
            (("missing keys", missing), ("unexpected keys", unexpected),
             ("shape mismatches", list(wrong_shape.values()))) if items))
    # Everything left fits; the dropped classifier keys are the only deliberate gap, already checked above.
    usable = {k: v for k, v in state_dict.items() if k in own and k not in wrong_shape}
    model.load_state_dict(usable, strict=False)
    return {"dropped": dropped, "missing": missing, "unexpected": unexpected}


def _describe(title: str, items: list[str], limit: int = 20) -> str:
    shown = "\n".join(f"    {item}" for item in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {len(items)} {title}:\n{shown}{more}"
