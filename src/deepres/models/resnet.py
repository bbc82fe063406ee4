"""ResNet (He et al. 2015) and its post-activation relatives: ImageNet ResNets, ResNeXt, wide ResNets, the
Bag-of-Tricks stem/downsampling variants (C, D), CIFAR ResNets, and the block variants studied in
torch-residual-networks (BN after the addition, no ReLU after the addition).

State-dict keys match torchvision (conv1, bn1, layer1..layer4, fc, downsample.0/1) and timm for the C/D variants
(conv1.0/1/3/4/6 deep stem, downsample.1/2 after the average pool), so their checkpoints load unchanged.
"""
import math
from functools import partial

import torch.nn as nn
import torch.nn.functional as F

from .assemble import (BigLittleStem, BlurPool2d, SelectiveKernel, SelectiveKernelBasic, SelectiveKernelBottleneck,
                       big_little_stage)
from .base import ResidualNetwork, init_weights, stage_strides_and_dilations
from .layers import DropBlock2d, SqueezeExcite
from .registry import register_variant


def conv3x3(in_chs, out_chs, stride=1, groups=1, dilation=1):
    return nn.Conv2d(in_chs, out_chs, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=False)


def conv1x1(in_chs, out_chs, stride=1):
    return nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """CIFAR option A: subsample by `stride` and append zero channels; no parameters (He et al. 2015, §4.2)."""

    def __init__(self, out_chs: int, stride: int):
        super().__init__()
        self.out_chs, self.stride = out_chs, stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_chs - x.shape[1]))


def make_shortcut(kind: str, in_chs: int, out_chs: int, stride: int, dilation: int):
    """The shortcut of a unit whose shape changes: 'A' zero-pad, 'B' 1x1 projection, 'D' avg-pool then 1x1, 'BL'
    Big-Little's 3x3 avg-pool then 1x1 (assembled-cnn's `bl_projection_shortcut`: pad 1 with zeros that count, then
    a 3x3 stride-2 pool; no pool at stride 1)."""
    if kind == "A":
        return ZeroPadShortcut(out_chs, stride)
    if kind == "B":
        return nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))
    if kind == "D":
        # Index 0 is the pool even when it is a no-op, so keys stay downsample.1 (conv) and .2 (bn) as in timm.
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, conv1x1(in_chs, out_chs), nn.BatchNorm2d(out_chs))
    if kind == "BL":
        pool = nn.AvgPool2d(3, stride, padding=1, count_include_pad=True) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, conv1x1(in_chs, out_chs), nn.BatchNorm2d(out_chs))
    raise ValueError(f"shortcut must be 'A', 'B', 'D' or 'BL', got {kind!r}")


DROP_BLOCK_PLACEMENTS = {"assemble": ((7, 7), (0.25, 1.0)), "timm": ((5, 3), (0.25, 1.0))}  # sizes, gamma scales


def _check_placement(placement: str) -> str:
    if placement not in DROP_BLOCK_PLACEMENTS:
        raise ValueError(f"dropblock_placement must be one of {', '.join(DROP_BLOCK_PLACEMENTS)}, got {placement!r}")
    return placement


class _PostActivationUnit(nn.Module):
    """The end both blocks share: add the shortcut with the last BN before the addition (standard) or after it
    (`bn_after_add`), then ReLU unless `relu_after_add=False` (the torch-residual-networks variants)."""

    last_bn = ""  # name of the block's last BatchNorm
    # Optional modules `se` (SqueezeExcite, gating the residual branch before the addition) and `drop_block`
    # (DropBlock2d after every BN, Assemble-ResNet's order: BN, DropBlock, SE; or, with drop_block_placement="timm",
    # only after the BN before the block's middle ReLU: timm's bn2 of a bottleneck, bn1 of a basic block), None when
    # off: no Identity in the graph, so conv-BN-ReLU fusion patterns stay intact. (Not class attributes: they would
    # hide nn.Module's lookup.)
    drop_block_placement = "assemble"
    residual = True  # False: a plain network's unit, nothing added (ResNet(residual=False))

    def dropped(self, x, middle: bool = False):
        if self.drop_block is None or (self.drop_block_placement == "timm" and not middle):
            return x
        return self.drop_block(x)

    def gated(self, x):
        return x if self.se is None else self.se(x)

    def add_shortcut(self, out, shortcut):
        bn = getattr(self, self.last_bn)
        if self.bn_after_add:
            out = self.dropped(bn(self.plus(self.gated(out), shortcut)))
        else:
            out = self.plus(self.gated(self.dropped(bn(out))), shortcut)
        return F.relu(out) if self.relu_after_add else out

    def plus(self, out, shortcut):
        return out + shortcut if self.residual else out

    def zero_init_last(self):
        # With BN after the addition, zeroing it would zero the shortcut too: leave that variant alone.
        if not self.bn_after_add:
            nn.init.zeros_(getattr(self, self.last_bn).weight)


class BasicBlock(_PostActivationUnit):
    """Two 3x3 convs. `bn_after_add` moves the second BN after the addition; `relu_after_add=False` drops the
    final ReLU (the torch-residual-networks variants)."""

    expansion = 1
    last_bn = "bn2"

    def __init__(self, in_chs, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 first_dilation=1, bn_after_add=False, relu_after_add=True, stride_in_1x1=False, se_layer=None,
                 drop_block=None, drop_block_placement="assemble", sk=False, aa_size=0):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        conv_stride = 1 if aa_size else stride  # anti-aliased: the conv runs at stride 1, the blur downsamples
        if sk:  # the SK unit brings its own BN and ReLU (assembled-cnn's `basic` with use_sk_block)
            self.conv1, self.bn1 = SelectiveKernel(in_chs, planes, conv_stride, first_dilation), nn.Identity()
        else:
            self.conv1, self.bn1 = conv3x3(in_chs, planes, conv_stride, dilation=first_dilation), nn.BatchNorm2d(planes)
        self.aa = BlurPool2d(planes, aa_size, stride) if aa_size and stride > 1 else nn.Identity()
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)  # before the addition, or after it with bn_after_add
        self.se = se_layer(planes) if se_layer else None  # timm's key layout: se.fc1, se.fc2
        self.drop_block = drop_block() if drop_block else None
        self.drop_block_placement = _check_placement(drop_block_placement)
        self.downsample = downsample
        self.bn_after_add = bn_after_add
        self.relu_after_add = relu_after_add

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.aa(F.relu(self.dropped(self.bn1(self.conv1(x)), middle=True)))
        return self.add_shortcut(self.conv2(out), shortcut)


class Bottleneck(_PostActivationUnit):
    """1x1 - 3x3 - 1x1. Stride on the 3x3 (ResNet v1.5 / B, torchvision's default) or on the first 1x1 (v1).
    `sk`: the 3x3 conv + BN + ReLU is an SK unit; `aa_size`: a strided 3x3 runs at stride 1 and a blur of that size
    downsamples before the last 1x1 (timm's `aa` position, so resnetblur50 keeps resnet50's keys)."""

    expansion = 4
    last_bn = "bn3"

    def __init__(self, in_chs, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 first_dilation=1, bn_after_add=False, relu_after_add=True, stride_in_1x1=False, se_layer=None,
                 drop_block=None, drop_block_placement="assemble", sk=False, aa_size=0):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_chs, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        conv_stride = 1 if aa_size else stride_3x3
        if sk:
            if groups != 1:
                raise ValueError("the SK unit has no groups")
            self.conv2, self.bn2 = SelectiveKernel(width, width, conv_stride, first_dilation), nn.Identity()
        else:
            self.conv2 = conv3x3(width, width, conv_stride, groups, first_dilation)
            self.bn2 = nn.BatchNorm2d(width)
        self.aa = BlurPool2d(width, aa_size, stride_3x3) if aa_size and stride_3x3 > 1 else nn.Identity()
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.se = se_layer(planes * self.expansion) if se_layer else None  # timm's keys: se.fc1, se.fc2
        self.drop_block = drop_block() if drop_block else None
        self.drop_block_placement = _check_placement(drop_block_placement)
        self.downsample = downsample
        self.bn_after_add = bn_after_add
        self.relu_after_add = relu_after_add

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.dropped(self.bn1(self.conv1(x))))
        out = self.aa(F.relu(self.dropped(self.bn2(self.conv2(out)), middle=True)))
        return self.add_shortcut(self.conv3(out), shortcut)


def make_stem(kind: str, in_chans: int, width: int) -> tuple[nn.Module, int]:
    """The stem conv(s) before `bn1`, and the stem's total stride (including the max-pool)."""
    if kind == "imagenet":  # 7x7/2 conv, then max-pool
        return nn.Conv2d(in_chans, width, 7, 2, 3, bias=False), 4
    if kind == "deep":  # ResNet-C: three 3x3 convs (32, 32, width); timm's key layout conv1.0/1/3/4/6
        mid = width // 2
        return nn.Sequential(
            conv3x3(in_chans, mid, 2), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            conv3x3(mid, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            conv3x3(mid, width),
        ), 4
    if kind == "cifar":  # one 3x3 conv, no pooling
        return conv3x3(in_chans, width), 1
    raise ValueError(f"stem must be 'imagenet', 'deep' or 'cifar', got {kind!r}")


class ResNet(ResidualNetwork):
    """Post-activation ResNet, configured by data: block, units per stage, widths and the stem/shortcut kinds.

    se: a SqueezeExcite in every block (`se_ratio`, `se_divisor` and `se_bias` as in SqueezeExcite; the
    Assemble-ResNet TF code: se_bias=False, se_divisor=1). dropblock: DropBlock2d (`dropblock_mode` masks) in the
    blocks of the last two stages, gamma scale 0.25 then 1.0, placed by `dropblock_placement`: "assemble" after
    every BN of those blocks, the shortcut's BN included, block size 7 in both stages (Assemble-ResNet's code);
    "timm" only after the BN before a block's middle ReLU, block sizes 5 then 3 (timm's drop_blocks());
    `dropblock_size` overrides the size of both stages. It drops only when the trainer lowers keep_prob
    (train.dropblock_keep). Neither changes the keys of a network without them.
    Assemble-ResNet options (models/assemble.py): `sk` SK units for every 3x3 conv; `aa` anti-aliased downsampling
    with a blur of `aa_size` taps in the strided blocks ("conv"), after a stride-1 stem max-pool ("stem") or both;
    `big_little=(alpha, beta)` Big-Little stages for all but the last stage and Big-Little module 0 for the stem pool
    (a Big-Little stage's shortcuts get no DropBlock).
    residual=False: the plain network of He et al. 2015 (§4.1-4.2, "plain-20/32/44/56"): the same layers without
    shortcuts (and without the projection ones' parameters)."""

    def __init__(self, block, layers, num_classes=1000, in_chans=3, *, widths=(64, 128, 256, 512),
                 strides=None, stem="imagenet", shortcut="B", groups=1, width_per_group=64, output_stride=None,
                 stride_in_1x1=False, bn_after_add=False, relu_after_add=True, drop_rate=0.0,
                 zero_init_last=False, se=False, se_ratio=1 / 16, se_divisor=8, se_bias=True, dropblock=False,
                 dropblock_size=None, dropblock_mode="assemble", dropblock_placement="assemble", sk=False, aa=None,
                 aa_size=3, big_little=None, residual=True):
        super().__init__(num_classes, drop_rate)
        if not residual and (big_little or sk or zero_init_last
                             or block not in ("basic", "bottleneck", BasicBlock, Bottleneck)):
            raise ValueError("residual=False (a plain network) takes basic or bottleneck blocks without big_little, sk "
                             "or zero_init_last (which would zero its only path)")
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} must have the same length")
        if aa not in (None, "conv", "stem", "both"):
            raise ValueError(f"aa must be None, 'conv', 'stem' or 'both', got {aa!r}")
        if big_little and (output_stride is not None or stem == "cifar" or aa in ("stem", "both")):
            raise ValueError("big_little needs an ImageNet stem, no output_stride and no stem blur (module 0 "
                             "replaces the stem max-pool)")
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}.get(block, block)
        strides = strides or (1,) + (2,) * (len(layers) - 1)
        stem_width = widths[0] if stem == "cifar" else 64
        self.conv1, stem_stride = make_stem(stem, in_chans, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_stride == 4 else nn.Identity()
        if aa in ("stem", "both"):
            if stem_stride != 4:
                raise ValueError(f"aa={aa!r} blurs the stem max-pool, which the {stem!r} stem does not have")
            self.maxpool = nn.Sequential(nn.MaxPool2d(3, 1, 1), BlurPool2d(stem_width, aa_size))  # timm's layout
        if big_little:  # module 0 replaces the max-pool; the name stays, as for timm's replace_stem_pool
            self.maxpool = BigLittleStem(stem_width, big_little[0])
        self.first_conv = "conv1.0.weight" if stem == "deep" else "conv1.weight"

        in_chs = stem_width
        unit = partial(block, groups=groups, base_width=width_per_group, bn_after_add=bn_after_add,
                       relu_after_add=relu_after_add, stride_in_1x1=stride_in_1x1, sk=sk,
                       drop_block_placement=_check_placement(dropblock_placement),
                       aa_size=aa_size if aa in ("conv", "both") else 0,
                       se_layer=partial(SqueezeExcite, rd_ratio=se_ratio, rd_divisor=se_divisor, bias=se_bias) if se
                       else None)
        # DropBlock's (block size, gamma scale) per stage: the last two stages only (stages 3 and 4 of a ResNet-50)
        sizes, scales = DROP_BLOCK_PLACEMENTS[dropblock_placement]
        sizes = (dropblock_size,) * 2 if dropblock_size else sizes
        drops = ((None,) * len(layers) + (tuple(zip(sizes, scales)) if dropblock else ()))[-len(layers):]
        plan = stage_strides_and_dilations(strides, stem_stride, output_stride)
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(layers)))
        for name, n, planes, (stride, dilation, first_dilation), drop in zip(
                self.stage_names, layers, widths, plan, drops):
            out_chs = planes * block.expansion
            drop_block = drop and partial(DropBlock2d, *drop, dropblock_mode)
            if big_little and name != self.stage_names[-1]:
                project = partial(make_shortcut, shortcut, dilation=1)
                stage_unit = partial(unit, drop_block=drop_block) if drop_block else unit
                stage = big_little_stage(stage_unit, project, in_chs, planes, n, stride, *big_little, block.expansion)
                setattr(self, name, stage)
                in_chs = out_chs
                continue
            downsample = None
            if residual and (stride != 1 or in_chs != out_chs):
                downsample = make_shortcut(shortcut, in_chs, out_chs, stride, dilation)
                if drop_block and dropblock_placement == "assemble" and isinstance(downsample, nn.Sequential):
                    # after the shortcut's BN: no new keys
                    downsample.append(drop_block())
            units = [unit(in_chs, planes, stride, downsample, dilation=dilation, first_dilation=first_dilation,
                          drop_block=drop_block)]
            units += [unit(out_chs, planes, dilation=dilation, first_dilation=dilation, drop_block=drop_block)
                      for _ in range(1, n)]
            for u in units:
                u.residual = residual
            setattr(self, name, nn.Sequential(*units))
            in_chs = out_chs
        self.stage_channels = tuple(planes * block.expansion for planes in widths)
        self.output_stride = stem_stride * math.prod(stride for stride, _, _ in plan)
        self._make_classifier(in_chs)
        init_weights(self)
        if zero_init_last:
            self.zero_init_last()

    def forward_stem(self, x):
        return self.maxpool(F.relu(self.bn1(self.conv1(x))))


# ---- The variants: each a row of data -------------------------------------------------------------------------

_IMAGENET = {
    # name: (block, units per stage, extra settings)
    "resnet18": ("basic", (2, 2, 2, 2), {}),
    "resnet34": ("basic", (3, 4, 6, 3), {}),
    "resnet50": ("bottleneck", (3, 4, 6, 3), {}),
    "resnet101": ("bottleneck", (3, 4, 23, 3), {}),
    "resnet152": ("bottleneck", (3, 8, 36, 3), {}),
    "resnet200": ("bottleneck", (3, 24, 36, 3), {}),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), {"width_per_group": 128}),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), {"width_per_group": 128}),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), {"groups": 32, "width_per_group": 4}),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), {"groups": 32, "width_per_group": 8}),
    "resnext101_64x4d": ("bottleneck", (3, 4, 23, 3), {"groups": 64, "width_per_group": 4}),
    # Bag of Tricks (He et al. 2019): C = deep 3x3 stem; D = deep stem + avg-pool shortcut downsampling.
    "resnet18d": ("basic", (2, 2, 2, 2), {"stem": "deep", "shortcut": "D"}),
    "resnet34d": ("basic", (3, 4, 6, 3), {"stem": "deep", "shortcut": "D"}),
    "resnet50c": ("bottleneck", (3, 4, 6, 3), {"stem": "deep"}),
    "resnet50d": ("bottleneck", (3, 4, 6, 3), {"stem": "deep", "shortcut": "D"}),
    "resnet101c": ("bottleneck", (3, 4, 23, 3), {"stem": "deep"}),
    "resnet101d": ("bottleneck", (3, 4, 23, 3), {"stem": "deep", "shortcut": "D"}),
    "resnet152c": ("bottleneck", (3, 8, 36, 3), {"stem": "deep"}),
    "resnet152d": ("bottleneck", (3, 8, 36, 3), {"stem": "deep", "shortcut": "D"}),
    "resnet200d": ("bottleneck", (3, 24, 36, 3), {"stem": "deep", "shortcut": "D"}),
    # Squeeze-and-Excitation (Hu et al. 2018) in every block; timm's seresnet50 keys (layerN.M.se.fc1/fc2)
    "seresnet50": ("bottleneck", (3, 4, 6, 3), {"se": True}),
}

# CIFAR (He et al. 2015, §4.2): depth 6n+2, three stages of n basic units, 16/32/64 channels, option A shortcuts.
_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)

for _name, (_block, _layers, _settings) in _IMAGENET.items():
    register_variant(_name, ResNet, input_size=(3, 224, 224), doc=f"{_name}: {_block} blocks {_layers} {_settings}",
                     block=_block, layers=_layers, **_settings)
for _depth in _CIFAR_DEPTHS:
    _n = (_depth - 2) // 6
    register_variant(f"resnet{_depth}", ResNet, input_size=(3, 32, 32),
                     doc=f"resnet{_depth}: CIFAR ResNet, 3 stages of {_n} basic units, option A shortcuts",
                     block="basic", layers=(_n, _n, _n), num_classes=10, widths=(16, 32, 64), stem="cifar",
                     shortcut="A")

# Their plain counterparts (He et al. 2015, §4.2 and Fig. 6: plain-20/32/44/56; 110 for the same comparison): the
# same layers, no shortcuts; option A has no parameters, so each has its ResNet's parameter count.
for _depth in (20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6
    register_variant(f"plain{_depth}", ResNet, input_size=(3, 32, 32),
                     doc=f"plain{_depth}: resnet{_depth} without shortcuts (residual=False)",
                     block="basic", layers=(_n, _n, _n), num_classes=10, widths=(16, 32, 64), stem="cifar",
                     shortcut="A", residual=False)

# The ImageNet ResNets with a CIFAR stem (mmcls/mmpretrain's ResNet_CIFAR): one 3x3/1 conv of 64 channels, no
# max-pool, then the four ImageNet stages (64-512 planes, projection shortcuts, stride on the 3x3): 32 px in, 4x4
# before the pool. Same keys as resnet18..152 apart from conv1's 3x3 kernel. Named with a prefix so that
# `resnet50*` still means the ImageNet ResNet-50 and its C/D variants.
for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    _block, _layers, _ = _IMAGENET[_name]
    register_variant(f"cifar_{_name}", ResNet, input_size=(3, 32, 32),
                     doc=f"cifar_{_name}: {_block} blocks {_layers}, 3x3 stride-1 stem without max-pool (mmcls)",
                     block=_block, layers=_layers, num_classes=10, stem="cifar")

# Assemble-ResNet (Lee et al. 2020) and the timm models built from its parts (models/assemble.py). They are listed
# here, not in assemble.py, because this file imports assemble.py's modules for the `sk` / `aa` options.
# assemble_resnet50 has the layers of the Keras model of clovaai/assembled-cnn that printed "Trainable params:
# 41,848,489" (1001 classes; script/ctl_r50zc_bldskaa_*.sh) and the shortcuts of the code that made their published
# checkpoints (master's nets/resnet_model.py, run with use_resnet_d=False as their README's eval_only commands say):
# 7x7 stem (its code skips the deep stem when use_bl is set); every first block of a branch gets
# `bl_projection_shortcut`, a 3x3/2 avg-pool (zero padding counted) + 1x1 conv ("BL"; the 2x2 pool of "D" loads
# the same weights but computes something else); Big-Little alpha 2, beta 4 with stage strides
# 2, 2, 1, 2 (`block_strides` when use_bl) and module 0 for the stem pool; SK units; anti-aliasing `sconv`, filter 3;
# --zero_gamma (zero_init_last: without it a deep big branch at 1x1 resolution overflows its gradients).
_ASSEMBLE_R = {"stem": "imagenet", "shortcut": "BL", "sk": True, "aa": "conv", "aa_size": 3, "strides": (2, 2, 1, 2),
               "zero_init_last": True}
_ASSEMBLE = {
    "assemble_resnet50": ("bottleneck", (3, 4, 6, 3), {**_ASSEMBLE_R, "big_little": (2, 4)}),
    # Deeper Big-Little depths from the same code (`block_configure` with use_bl); alpha 1, beta 2 from the paper.
    "assemble_resnet152": ("bottleneck", (5, 12, 30, 3), {**_ASSEMBLE_R, "big_little": (1, 2)}),
    # The paper's ablation steps, each a row: R50-D + SE (their TF SE: no biases, channels // 16), R50-D + SK
    # instead, then + Big-Little (the official code drops the deep stem when use_bl is set); + AA is assemble_resnet50.
    "assemble_r50d_se": ("bottleneck", (3, 4, 6, 3), {"stem": "deep", "shortcut": "D", "se": True, "se_bias": False,
                                                      "se_divisor": 1, "zero_init_last": True}),
    "assemble_r50d_sk": ("bottleneck", (3, 4, 6, 3),
                         {"stem": "deep", "shortcut": "D", "sk": True, "zero_init_last": True}),
    "assemble_r50_bl_sk": ("bottleneck", (3, 4, 6, 3), {**_ASSEMBLE_R, "aa": None, "big_little": (2, 4)}),
    # timm: blur in the strided blocks and after a stride-1 stem max-pool; same keys as resnet50.
    "resnetblur50": ("bottleneck", (3, 4, 6, 3), {"aa": "both"}),
    # timm's SK ResNets (split-input SK, a 3x3 and a dilated 3x3 path); timm's key layout.
    "skresnet18": (SelectiveKernelBasic, (2, 2, 2, 2), {}),
    "skresnet34": (SelectiveKernelBasic, (3, 4, 6, 3), {}),
    "skresnet50": (SelectiveKernelBottleneck, (3, 4, 6, 3), {}),
}
for _name, (_block, _layers, _settings) in _ASSEMBLE.items():
    _kind = getattr(_block, "__name__", _block)
    register_variant(_name, ResNet, input_size=(3, 224, 224), doc=f"{_name}: {_kind} blocks {_layers} {_settings}",
                     block=_block, layers=_layers, **_settings)
