"""ResNet-38 "Model A" and "Model A1" from "Wider or Deeper: Revisiting the ResNet Model for Visual Recognition"
(Wu, Shen & van den Hengel 2016), laid out as in their ademxapp code.

B1 is a 3x3 conv (64). B2-B5 are pre-activation units of two 3x3 convs, widths 128, 256, 512 and 512->1024, with
3, 3, 6 and 3 units. B6 and B7 are single pre-activation bottleneck units, 1024 -> 512 -> 1024 -> 2048 and
2048 -> 1024 -> 2048 -> 4096. B2-B6 each halve the resolution (output stride 32): Model A with a 3x3/2 max-pool
before the stage, Model A1 with a stride-2 first conv. For segmentation, output_stride 16 or 8 dilates B6 (and B5)
instead. A final BN-ReLU (`bn7`) precedes pooling.

Model A's released weights were trained before a change in MXNet's pooling (ademxapp README); MXNet's Pooling then
rounded its output size up, as Caffe does, before floor rounding ("valid") became its named default in 2016. To
reproduce their published error ademxapp evaluates them with `--pool-top-infer-style caffe` (util/symbol/symbol.py
`pool`: pad 0 instead of 1). `pool_style="caffe"` is that max-pool: 3x3/2, no padding, ceil mode, the one rule that
gives the report's sizes (224 -> 112, 56, 28, 14, 7) without padding. On even sides it keeps the padded pool's sizes
but its windows sit one pixel further on (they start at 0, 2, 4, ... instead of -1, 1, 3, ...); odd sides lose one.

Key names (conv1a, b2, b2_1, ..., bn_branch2a, conv_branch2a, conv_branch1, bn7) follow the public PyTorch port of
the ademxapp weights, so converted ResNet-38 checkpoints load unchanged.
"""
import math

import torch.nn as nn
import torch.nn.functional as F

from .base import ResidualNetwork, init_weights, stage_strides_and_dilations
from .registry import register_variant


class Unit(nn.Module):
    """Pre-activation unit of two 3x3 convs (in -> mid -> out); 1x1 projection of the pre-activated input."""

    def __init__(self, in_chs, mid_chs, out_chs, stride=1, dilation=1, first_dilation=1):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_chs)
        self.conv_branch2a = nn.Conv2d(in_chs, mid_chs, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_chs)
        self.conv_branch2b1 = nn.Conv2d(mid_chs, out_chs, 3, 1, dilation, dilation, bias=False)
        self.conv_branch1 = None
        if stride != 1 or in_chs != out_chs:
            self.conv_branch1 = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)

    def forward(self, x):
        preact = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(preact)
        out = F.relu(self.bn_branch2b1(self.conv_branch2a(preact)))
        return self.conv_branch2b1(out) + shortcut

    def zero_init_last(self):
        nn.init.zeros_(self.conv_branch2b1.weight)


class BottleneckUnit(nn.Module):
    """Pre-activation bottleneck: 1x1 (out/4), 3x3 (out/2), 1x1 (out), with optional dropout before the last conv
    only (0.3 in B6 and 0.5 in B7 in the segmentation models; element-wise, as ademxapp's mx.sym.Dropout)."""

    def __init__(self, in_chs, out_chs, stride=1, dilation=1, dropout=0.0):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_chs)
        self.conv_branch2a = nn.Conv2d(in_chs, out_chs // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_chs // 4)
        self.conv_branch2b1 = nn.Conv2d(out_chs // 4, out_chs // 2, 3, 1, dilation, dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_chs // 2)
        self.conv_branch2b2 = nn.Conv2d(out_chs // 2, out_chs, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)
        self.dropout = dropout

    def forward(self, x):
        preact = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(preact)
        out = F.relu(self.bn_branch2b1(self.conv_branch2a(preact)))
        out = F.relu(self.bn_branch2b2(self.conv_branch2b1(out)))
        # ademxapp's res_block drops only before a unit's last conv (`this_dropout_rate = dropout_rate if
        # i == len(filters)-1 else 0.`, util/symbol/resnet_v2.py)
        out = F.dropout(out, self.dropout, self.training) if self.dropout > 0 else out
        return self.conv_branch2b2(out) + shortcut

    def zero_init_last(self):
        nn.init.zeros_(self.conv_branch2b2.weight)


# Stages B2-B5: (attribute prefix, units, mid width, out width). B6, B7: (name, out width).
_BASIC_STAGES = (("b2", 3, 128, 128), ("b3", 3, 256, 256), ("b4", 6, 512, 512), ("b5", 3, 512, 1024))
_BOTTLENECK_STAGES = (("b6", 2048), ("b7", 4096))
# Model A's 3x3/2 max-pool, pool_style -> (padding, ceil_mode): "padded" as ademxapp builds it by default (pad 1,
# MXNet's floor rounding), "caffe" as its released Model A was trained (pad 0, rounding up)
_POOLS = {"padded": (1, False), "caffe": (0, True)}


class ResNet38(ResidualNetwork):
    """ResNet-38; `downsample='maxpool'` is Model A, `downsample='conv'` is Model A1."""

    first_conv = "conv1a.weight"

    def __init__(self, num_classes=1000, in_chans=3, *, downsample="conv", output_stride=None,
                 block_dropout=(0.0, 0.0), drop_rate=0.0, zero_init_last=False, pool_style="padded", width=1.0):
        super().__init__(num_classes, drop_rate)
        if not 0 < width <= 4:
            raise ValueError(f"width must be in (0, 4], got {width!r}")

        def chs(c: int) -> int:  # width scales every stage's channels (the Wider-or-Deeper study at CIFAR scale)
            return max(4, 4 * round(c * width / 4)) if width != 1.0 else c

        if downsample not in ("maxpool", "conv"):
            raise ValueError(f"downsample must be 'maxpool' (Model A) or 'conv' (Model A1), got {downsample!r}")
        if pool_style not in _POOLS:
            raise ValueError(f"pool_style must be one of {', '.join(_POOLS)}, got {pool_style!r}")
        if pool_style != "padded" and downsample != "maxpool":
            raise ValueError(f"pool_style {pool_style!r} is for Model A's max-pools; downsample={downsample!r} has "
                             "none")
        self.pool_padding, self.pool_ceil_mode = _POOLS[pool_style]
        self.conv1a = nn.Conv2d(in_chans, chs(64), 3, 1, 1, bias=False)
        # B2..B6 halve the resolution, B7 keeps it; stages past output_stride dilate instead.
        plan = stage_strides_and_dilations((2, 2, 2, 2, 2, 1), 1, output_stride)
        self.stage_units: list[list[str]] = []
        self.stage_pools: list[bool] = []
        in_chs = chs(64)
        basic = [(prefix, n, chs(mid), chs(out)) for prefix, n, mid, out in _BASIC_STAGES]
        bottleneck = [(name, chs(out)) for name, out in _BOTTLENECK_STAGES]
        for (prefix, n, mid, out), (stride, dilation, first_dilation) in zip(basic, plan):
            names = [prefix] + [f"{prefix}_{i}" for i in range(1, n)]
            unit_stride = stride if downsample == "conv" else 1
            setattr(self, names[0], Unit(in_chs, mid, out, unit_stride, dilation, first_dilation))
            for name in names[1:]:
                setattr(self, name, Unit(out, mid, out, 1, dilation, dilation))
            self.stage_units.append(names)
            self.stage_pools.append(downsample == "maxpool" and stride > 1)
            in_chs = out
        for (name, out), (stride, dilation, _), p in zip(bottleneck, plan[4:], block_dropout):
            # Single-unit stages: the 3x3 takes the stage's own dilation (4 in B6 at output stride 8, as ademxapp).
            unit_stride = stride if downsample == "conv" else 1
            setattr(self, name, BottleneckUnit(in_chs, out, unit_stride, dilation, p))
            self.stage_units.append([name])
            self.stage_pools.append(downsample == "maxpool" and stride > 1)
            in_chs = out
        self.stage_names = tuple(names[0] for names in self.stage_units)
        self.stage_channels = tuple(out for *_, out in basic) + tuple(out for _, out in bottleneck)
        self.output_stride = math.prod(stride for stride, _, _ in plan)
        self.bn7 = nn.BatchNorm2d(in_chs)
        self._make_classifier(in_chs)
        init_weights(self)
        if zero_init_last:
            self.zero_init_last()

    def forward_stem(self, x):
        return self.conv1a(x)

    def forward_final(self, x):
        return F.relu(self.bn7(x))

    def forward_stages(self, x):
        # Units are flat attributes (b4, b4_1, ...) for checkpoint compatibility, so stages are walked by name.
        x = self.forward_stem(x)
        features = []
        for names, pool in zip(self.stage_units, self.stage_pools):
            if pool:
                x = F.max_pool2d(x, 3, 2, self.pool_padding, ceil_mode=self.pool_ceil_mode)
            for name in names:
                x = getattr(self, name)(x)
            features.append(x)
        features[-1] = self.forward_final(features[-1])
        return features


register_variant("resnet38_a", ResNet38, input_size=(3, 224, 224), downsample="maxpool",
                 doc="resnet38_a: ResNet-38 Model A (Wu et al. 2016), max-pool downsampling")
register_variant("resnet38_a1", ResNet38, input_size=(3, 224, 224), downsample="conv",
                 doc="resnet38_a1: ResNet-38 Model A1 (Wu et al. 2016), stride-2 conv downsampling")
