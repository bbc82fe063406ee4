"""ademxapp's MXNet parameter names for the ResNet-38 models, and `.params` arrays -> a deepres state dict.

ademxapp (Wu, Shen & van den Hengel, github.com/itijyou/ademxapp) saves checkpoints with mx.model.save_checkpoint:
trained weights as `arg:NAME`, BatchNorm statistics as `aux:NAME`. The names below were read from its symbol code
at commit 20fec99: util/symbol/resnet_v2.py (rna_feat: `conv1a`, units `2a`, `2b1`, `2b2`, ..., `6a`, `7a`, `bn7`;
res_block / res_conv_stage: `bn{unit}_branch2a` + `res{unit}_branch2a`, `..._branch2b1`, `..._branch2b2`,
`res{unit}_branch1`; rna_model_a1: fc `linear{classes}`; fcrna_model_a1 / fcn_top: `conv6a` then
`linear{classes}`), util/symbol/resnet_v1.py (conv_stage: the `conv6a` conv has a bias) and util/symbol/symbol.py
(conv: `{name}_weight`, `{name}_bias`; bn: `{name}_gamma`, `{name}_beta`; MXNet's BatchNorm keeps
`{name}_moving_mean`, `{name}_moving_var`). Conv weights are (out, in, kh, kw) and fc weights (out, in) in both
frameworks, so arrays are copied unchanged.
"""
import re

import numpy as np
import torch
import torch.nn as nn

from .registry import create_model

MODELS = ("resnet38_a", "resnet38_a1", "fcn_resnet38_a1")  # the deepres models ademxapp checkpoints convert to
_BN = {"weight": "arg:{}_gamma", "bias": "arg:{}_beta", "running_mean": "aux:{}_moving_mean",
       "running_var": "aux:{}_moving_var"}
_UNIT = re.compile(r"^b(\d)(?:_(\d+))?$")  # deepres unit b4 / b4_3 -> ademxapp 4a / 4b3
_CLASSIFIER = re.compile(r"^arg:linear(\d+)_weight$")


def mxnet_name(key: str, num_classes: int) -> str | None:
    """ademxapp's name of a resnet38_a/a1 or fcn_resnet38_a1 state-dict key; None for num_batches_tracked (MXNet
    has none). KeyError for a key outside those models."""
    key = key.removeprefix("backbone.")
    module, _, param = key.rpartition(".")
    if param == "num_batches_tracked":
        return None
    linear = f"linear{num_classes}"
    head = {"fc": linear, "classifier.0": "conv6a", "classifier.2": linear, "conv1a": "conv1a"}
    if module in head and param in ("weight", "bias"):
        return f"arg:{head[module]}_{param}"
    if module == "bn7" and param in _BN:
        return _BN[param].format("bn7")
    unit, _, layer = module.partition(".")
    match = _UNIT.match(unit)
    if match:
        level, index = match.groups()
        name = f"{level}a" if index is None else f"{level}b{index}"
        branch = layer.partition("_")[2]  # bn_branch2a -> branch2a, conv_branch1 -> branch1
        if layer.startswith("bn_") and param in _BN:
            return _BN[param].format(f"bn{name}_{branch}")
        if layer.startswith("conv_") and param == "weight":
            return f"arg:res{name}_{branch}_weight"
    raise KeyError(f"no ademxapp name for state-dict key {key!r}")


def mxnet_names(model: nn.Module) -> dict[str, str]:
    """{state-dict key: ademxapp name} for every key of `model` that ademxapp stores."""
    names = {key: mxnet_name(key, model.num_classes) for key in model.state_dict()}
    return {key: name for key, name in names.items() if name is not None}


def ademxapp_num_classes(arrays: dict[str, np.ndarray], source: str) -> int:
    """The classes of an ademxapp checkpoint: the rows of its one `linear{classes}` layer."""
    found = [name for name in arrays if _CLASSIFIER.match(name)]
    if len(found) != 1:
        raise ValueError(f"{source}: expected one classifier 'arg:linear<classes>_weight', found {found or 'none'}")
    shape = tuple(np.shape(arrays[found[0]]))  # a .params array may be a scalar (MXNet 2) or a "none" array (0,)
    if len(shape) not in (2, 4) or shape[0] < 1:  # fc (classes, 4096) or the FCN's conv (classes, 512, 3, 3)
        raise ValueError(f"{source}: {found[0]!r} has shape {shape}, not (classes, features) or "
                         f"(classes, channels, kh, kw)")
    return shape[0]


def convert_ademxapp(arrays: dict[str, np.ndarray], model_name: str, source: str = "params") -> dict[str, torch.Tensor]:
    """The state dict of `model_name` (one of MODELS) from the arrays of an ademxapp `.params` file; ValueError
    naming `source` and the key for a missing, unexpected or misshapen array."""
    if model_name not in MODELS:
        raise ValueError(f"ademxapp checkpoints convert to {', '.join(MODELS)}, not {model_name!r}")
    num_classes = ademxapp_num_classes(arrays, source)
    with torch.device("meta"):  # only names and shapes
        model = create_model(model_name, num_classes=num_classes)
    own = model.state_dict()
    names = mxnet_names(model)
    missing = [(key, name) for key, name in names.items() if name not in arrays]
    if missing:
        key, name = missing[0]
        raise ValueError(f"{source}: {len(missing)} array(s) of {model_name} missing, first {name!r} (for {key})")
    unexpected = sorted(set(arrays) - set(names.values()))
    if unexpected:
        raise ValueError(f"{source}: {len(unexpected)} array(s) that {model_name} has no place for, first "
                         f"{unexpected[0]!r}")
    state = {}
    for key, value in own.items():
        if key not in names:  # num_batches_tracked: MXNet does not count batches
            state[key] = torch.zeros((), dtype=value.dtype)
            continue
        array = arrays[names[key]]
        if tuple(array.shape) != tuple(value.shape):
            raise ValueError(f"{source}: {names[key]!r} has shape {tuple(array.shape)}, {model_name} wants "
                             f"{tuple(value.shape)} for {key}")
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state
