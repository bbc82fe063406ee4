"""clovaai/assembled-cnn's TensorFlow variable names for the Big-Little Assemble-ResNets, and a checkpoint's arrays
-> a deepres state dict.

The names were read from their TF1 estimator code at master 9cdc297 (the code of the published checkpoints and of
`--eval_only`): nets/resnet_model.py (Model.__call__ with resnet_version=2: `resnet_model/stage0` stem conv, its BN
in `stage0_1`, Big-Little module 0 in `stage0/pool`; stages 1-3 `stage{i}/big{i}`, `little{i}` (with the little
branch's 1x1 expansion conv + BN after its blocks), `merge{i}`; stage 4 `stage4`; `dense`), `block_layer` /
`_bottleneck_block_v1` (creation order in a block: projection shortcut conv + BN on a layer's first block, conv1 +
BN, the SK unit, conv3 + BN), nets/blocks.py `sk_conv2d` (its conv + BN in the block's scope, then `sk_block{_n}/`
`sk_fc_1`, `batch_normalization`, `sk_fc_2`) and nets/model_helper.py (tf.layers.conv2d without bias, fused BN
with gamma, beta, moving_mean, moving_variance). tf.layers numbers a scope's unnamed layers `conv2d`, `conv2d_1`,
... in creation order, which the walk below repeats. Checked against the graph their code builds under
tf.compat.v1 (tests/data/assemble_tf/*_variables.txt, written by make_fixture.py there).

Their graph holds no moving-average (EMA) copies: eval_only restores the trained variables themselves. Skipped on
purpose: `global_step` and the MomentumOptimizer slots `<variable>/Momentum`. Their head has 1001 outputs, row 0
an unused background class (ImageNet labels are 1..1000 in their TFRecords, in the sorted synset order of
datasets/imagenet_lsvrc_2015_synsets.txt); by default the row is dropped so that the model has the usual 1000
ImageNet classes in sorted-synset order (the argmax over real classes is unchanged).
"""
import numpy as np
import torch
import torch.nn as nn

from .assemble import BigLittleStage, SelectiveKernel
from .registry import create_model

MODELS = ("assemble_resnet50", "assemble_resnet152", "assemble_r50_bl_sk")  # Big-Little + SK rows (AA: no variables)
SKIPPED = "global_step and the optimizer slots <name>/Momentum"
_BN = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance"))


def is_skipped(name: str) -> bool:
    """A variable of their checkpoints that is not part of the model."""
    return name == "global_step" or name.endswith("/Momentum")


class _Scope:
    """One TF variable scope: numbers its unnamed layers of each kind in creation order, as tf.layers does."""

    def __init__(self, path: str, names: list):
        self.path, self.names, self.counts = path, names, {}

    def layer(self, kind: str) -> str:
        index = self.counts.get(kind, 0)
        self.counts[kind] = index + 1
        return f"{self.path}/{kind}" + (f"_{index}" if index else "")

    def conv(self, key: str, layer: str | None = None) -> None:
        self.names.append((f"{key}.weight", f"{layer or self.layer('conv2d')}/kernel", "conv"))

    def bn(self, key: str) -> None:
        layer = self.layer("batch_normalization")
        self.names += [(f"{key}.{ours}", f"{layer}/{theirs}", "copy") for ours, theirs in _BN]


def _block(scope: _Scope, key: str, block: nn.Module) -> None:
    """_bottleneck_block_v1: shortcut (first block of a layer), conv1, the SK unit (or conv2), conv3."""
    if block.downsample is not None:  # deepres "BL" shortcut: pool, conv, BN
        scope.conv(f"{key}.downsample.1")
        scope.bn(f"{key}.downsample.2")
    scope.conv(f"{key}.conv1")
    scope.bn(f"{key}.bn1")
    if isinstance(block.conv2, SelectiveKernel):
        scope.conv(f"{key}.conv2.conv")
        scope.bn(f"{key}.conv2.bn")
        sk = _Scope(scope.layer("sk_block"), scope.names)
        sk.conv(f"{key}.conv2.fc_reduce", f"{sk.path}/sk_fc_1")
        sk.bn(f"{key}.conv2.bn_attn")
        sk.conv(f"{key}.conv2.fc_select", f"{sk.path}/sk_fc_2")
    else:
        scope.conv(f"{key}.conv2")
        scope.bn(f"{key}.bn2")
    scope.conv(f"{key}.conv3")
    scope.bn(f"{key}.bn3")


def _blocks(scope: _Scope, key: str, blocks: nn.Sequential) -> None:
    for index, block in enumerate(blocks):
        _block(scope, f"{key}.{index}", block)


def tf_names(model: nn.Module) -> list[tuple[str, str, str]]:
    """(deepres key, TF variable name, how to convert: conv / dense / copy) for every parameter and BN statistic
    of a Big-Little Assemble-ResNet, in their creation order."""
    names: list = []
    root = "resnet_model"
    _Scope(f"{root}/stage0", names).conv("conv1")
    _Scope(f"{root}/stage0_1", names).bn("bn1")
    pool = _Scope(f"{root}/stage0/pool", names)  # Big-Little module 0: big, little (3 convs), merge
    for key in ("maxpool.big", "maxpool.little.0", "maxpool.little.2", "maxpool.little.4", "maxpool.merge"):
        pool.conv(f"{key}.0")
        pool.bn(f"{key}.1")
    for index, stage_name in enumerate(model.stage_names, start=1):
        stage = getattr(model, stage_name)
        if isinstance(stage, BigLittleStage):
            _blocks(_Scope(f"{root}/stage{index}/big{index}", names), f"{stage_name}.big", stage.big)
            little = _Scope(f"{root}/stage{index}/little{index}", names)
            _blocks(little, f"{stage_name}.little", stage.little)
            little.conv(f"{stage_name}.little_expand.0")
            little.bn(f"{stage_name}.little_expand.1")
            _blocks(_Scope(f"{root}/stage{index}/merge{index}", names), f"{stage_name}.merge", stage.merge)
        else:
            _blocks(_Scope(f"{root}/stage{index}", names), stage_name, stage)
    names += [("fc.weight", f"{root}/dense/kernel", "dense"), ("fc.bias", f"{root}/dense/bias", "copy")]
    return names


def _converted(array: np.ndarray, how: str) -> np.ndarray:
    if how == "conv":  # HWIO -> OIHW
        return array.transpose(3, 2, 0, 1)
    if how == "dense":  # (in, out) -> (out, in)
        return array.T
    return array


def convert_assemble(arrays: dict[str, np.ndarray], model_name: str, source: str = "checkpoint",
                     keep_background: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of `model_name` (one of MODELS) from the arrays of an assembled-cnn TF checkpoint. The head's
    background row 0 is dropped (1000 classes) unless `keep_background` (1001). ValueError naming `source` and the
    variable for a missing, unexpected or misshapen one."""
    if model_name not in MODELS:
        raise ValueError(f"assembled-cnn checkpoints convert to {', '.join(MODELS)}, not {model_name!r}")
    head = arrays.get("resnet_model/dense/kernel")
    if head is None or head.ndim != 2:
        raise ValueError(f"{source}: no 2-D 'resnet_model/dense/kernel' (the classifier): not an assembled-cnn "
                         f"ResNet checkpoint")
    classes = head.shape[1] if keep_background else head.shape[1] - 1
    if classes < 1:
        raise ValueError(f"{source}: 'resnet_model/dense/kernel' has {head.shape[1]} outputs")
    with torch.device("meta"):  # only names and shapes
        model = create_model(model_name, num_classes=classes)
    names = tf_names(model)
    missing = [(key, name) for key, name, _ in names if name not in arrays]
    if missing:
        key, name = missing[0]
        raise ValueError(f"{source}: {len(missing)} variable(s) of {model_name} missing, first {name!r} (for {key})")
    wanted = {name for _, name, _ in names}
    unexpected = sorted(name for name in arrays if name not in wanted and not is_skipped(name))
    if unexpected:
        raise ValueError(f"{source}: {len(unexpected)} variable(s) that {model_name} has no place for, first "
                         f"{unexpected[0]!r}")
    own = model.state_dict()
    filled = {key for key, _, _ in names}
    unfilled = [key for key in own if key not in filled and not key.endswith("num_batches_tracked")]
    if unfilled:  # a module this walk does not know (a model row changed)
        raise ValueError(f"{model_name}: no TF variable for {len(unfilled)} key(s), first {unfilled[0]!r}")
    state = {key: torch.zeros((), dtype=value.dtype) for key, value in own.items()
             if key.endswith("num_batches_tracked")}
    for key, name, how in names:
        array = _converted(np.asarray(arrays[name]), how)
        if not keep_background and key.startswith("fc."):
            array = array[1:]  # row 0: their unused background class
        if tuple(array.shape) != tuple(own[key].shape):
            raise ValueError(f"{source}: {name!r} has shape {tuple(arrays[name].shape)}, {model_name} wants "
                             f"{tuple(own[key].shape)} for {key} (after {how})")
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return {key: state[key] for key in own}
