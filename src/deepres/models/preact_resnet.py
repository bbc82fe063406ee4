"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks") and Wide ResNets
(Zagoruyko & Komodakis 2016), which are pre-activation basic-block nets with a width multiplier.

Each unit computes BN-ReLU first; a shape-changing unit's projection shortcut reads that pre-activated input.
The last stage is followed by a final BN-ReLU (`bn_final`) before pooling.
"""
import math
from functools import partial

import torch.nn as nn
import torch.nn.functional as F

from .base import ResidualNetwork, init_weights, stage_strides_and_dilations
from .registry import register_variant
from .resnet import conv1x1, conv3x3, make_stem


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3; `dropout` between the convs is the WRN option."""

    expansion = 1

    def __init__(self, in_chs, planes, stride=1, dilation=1, first_dilation=1, dropout=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv3x3(in_chs, planes, stride, dilation=first_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.dropout = dropout
        self.downsample = None
        if stride != 1 or in_chs != planes:
            self.downsample = nn.Sequential(conv1x1(in_chs, planes, stride))

    def forward(self, x):
        preact = F.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(preact)
        out = F.relu(self.bn2(self.conv1(preact)))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + shortcut

    def zero_init_last(self):
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (x4 channels)."""

    expansion = 4

    def __init__(self, in_chs, planes, stride=1, dilation=1, first_dilation=1, dropout=0.0):
        super().__init__()
        out_chs = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv1x1(in_chs, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation=first_dilation)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_chs)
        self.dropout = dropout
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(conv1x1(in_chs, out_chs, stride))

    def forward(self, x):
        preact = F.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(preact)
        out = F.relu(self.bn2(self.conv1(preact)))
        out = F.relu(self.bn3(self.conv2(out)))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv3(out) + shortcut

    def zero_init_last(self):
        nn.init.zeros_(self.conv3.weight)


class PreActResNet(ResidualNetwork):
    """Pre-activation ResNet configured by data. `stem='imagenet'`: 7x7/2 conv + max-pool, no norm (the first
    unit pre-activates); `stem='cifar'`: one 3x3 conv of `stem_width` channels (16 for WRN too, as in the paper)."""

    def __init__(self, block, layers, num_classes=1000, in_chans=3, *, widths=(64, 128, 256, 512), strides=None,
                 stem="imagenet", stem_width=64, output_stride=None, block_dropout=0.0, drop_rate=0.0,
                 zero_init_last=False):
        super().__init__(num_classes, drop_rate)
        block = {"basic": PreActBasicBlock, "bottleneck": PreActBottleneck}.get(block, block)
        strides = strides or (1,) + (2,) * (len(layers) - 1)
        if stem not in ("imagenet", "cifar"):  # the deep stem ends in a conv that wants a BN: post-activation only
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.conv1, stem_stride = make_stem(stem, in_chans, stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_stride == 4 else nn.Identity()

        in_chs = stem_width
        unit = partial(block, dropout=block_dropout)
        plan = stage_strides_and_dilations(strides, stem_stride, output_stride)
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(layers)))
        for name, n, planes, (stride, dilation, first_dilation) in zip(self.stage_names, layers, widths, plan):
            units = [unit(in_chs, planes, stride, dilation=dilation, first_dilation=first_dilation)]
            in_chs = planes * block.expansion
            units += [unit(in_chs, planes, dilation=dilation, first_dilation=dilation) for _ in range(1, n)]
            setattr(self, name, nn.Sequential(*units))
        self.stage_channels = tuple(planes * block.expansion for planes in widths)
        self.output_stride = stem_stride * math.prod(stride for stride, _, _ in plan)
        self.bn_final = nn.BatchNorm2d(in_chs)
        self._make_classifier(in_chs)
        init_weights(self)
        if zero_init_last:
            self.zero_init_last()

    def forward_stem(self, x):
        return self.maxpool(self.conv1(x))

    def forward_final(self, x):
        return F.relu(self.bn_final(x))


# ---- The variants ------------------------------------------------------------------------------------------------

_IMAGENET = {
    "preact_resnet18": ("basic", (2, 2, 2, 2)),
    "preact_resnet34": ("basic", (3, 4, 6, 3)),
    "preact_resnet50": ("bottleneck", (3, 4, 6, 3)),
    "preact_resnet101": ("bottleneck", (3, 4, 23, 3)),
    "preact_resnet152": ("bottleneck", (3, 8, 36, 3)),
}
# CIFAR (He et al. 2016, Table 3): 110 = basic 18/stage; 164 and 1001 = bottleneck 18 and 111 per stage.
_CIFAR = {
    "preact_resnet110": ("basic", 18, (16, 32, 64)),
    "preact_resnet164": ("bottleneck", 18, (16, 32, 64)),
    "preact_resnet1001": ("bottleneck", 111, (16, 32, 64)),
}
# WRN-d-k: (d - 4) / 6 basic units per stage, widths 16k, 32k, 64k (Zagoruyko & Komodakis 2016).
_WRN = {"wrn_28_10": (28, 10), "wrn_40_4": (40, 4), "wrn_16_8": (16, 8)}


for _name, (_block, _layers) in _IMAGENET.items():
    register_variant(_name, PreActResNet, input_size=(3, 224, 224), doc=f"{_name}: pre-activation {_block} {_layers}",
                     block=_block, layers=_layers)
for _name, (_block, _n, _widths) in _CIFAR.items():
    register_variant(_name, PreActResNet, input_size=(3, 32, 32), doc=f"{_name}: CIFAR pre-activation, {_n} {_block} units/stage",
                     block=_block, layers=(_n, _n, _n), widths=_widths, stem="cifar", stem_width=16, num_classes=10)
for _name, (_depth, _k) in _WRN.items():
    _n = (_depth - 4) // 6
    register_variant(_name, PreActResNet, input_size=(3, 32, 32),
                     doc=f"{_name}: Wide ResNet-{_depth}-{_k} (block_dropout=0.3 for the paper's dropout)",
                     block="basic", layers=(_n, _n, _n), widths=(16 * _k, 32 * _k, 64 * _k), stem="cifar",
                     stem_width=16, num_classes=10)
