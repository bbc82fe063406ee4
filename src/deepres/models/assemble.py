"""The parts of Assemble-ResNet (Lee et al. 2020, "Compounding the Performance Improvements of Assembled Techniques
in a Convolutional Neural Network"): anti-aliased downsampling, Selective Kernel units and Big-Little stages.

Facts come from the official TF code, clovaai/assembled-cnn: `network_tweaks/antialias.py`, `selective_kernel.py`,
`big_little.py` and the Keras `resnet_model.py` that printed the 41,848,489 trainable parameters of Assemble-ResNet50
(`script/ctl_r50zc_bldskaa_*.sh`). timm's variants (BlurPool2d, its split-input SelectiveKernel) keep timm's key names
so timm checkpoints load. This file holds the modules; `resnet.py` builds networks from them and lists the variants
(it imports this file, so this file cannot import it back).
"""
from math import comb

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import make_divisible


def binomial_filter(size: int) -> torch.Tensor:
    """The 2-D binomial blur of `size` taps (3 -> [1,2,1] x [1,2,1] / 16), summing to 1."""
    if not 1 <= size <= 7:
        raise ValueError(f"blur filter size must be 1..7, got {size}")
    taps = torch.tensor([comb(size - 1, k) for k in range(size)], dtype=torch.float32)
    taps = taps / taps.sum()
    return taps[:, None] * taps[None, :]


class BlurPool2d(nn.Module):
    """Depthwise binomial blur, then subsampling by `stride`, reflect padding (Zhang 2019, "Making convolutional
    networks shift-invariant again"). The filter is a non-persistent buffer, as in timm: no state-dict entry. The
    channel count is fixed at build time, so the graph has no runtime expansion (ONNX export)."""

    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2):
        super().__init__()
        self.channels, self.stride = channels, stride
        # Zhang's padding: (k-1)//2 before, k//2 after (symmetric for the odd sizes used in practice).
        self.padding = [(filt_size - 1) // 2, filt_size // 2] * 2
        filt = binomial_filter(filt_size)[None, None].repeat(channels, 1, 1, 1)
        self.register_buffer("filt", filt, persistent=False)

    def forward(self, x):
        if any(self.padding):
            x = F.pad(x, self.padding, mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)


def _softmax_over_paths(logits: torch.Tensor, paths: int) -> torch.Tensor:
    """(B, paths*C, 1, 1) attention logits -> (B, paths, C, 1, 1) weights summing to 1 over the paths."""
    return torch.softmax(logits.unflatten(1, (paths, -1)), dim=1)


class SelectiveKernel(nn.Module):
    """The official Assemble-ResNet SK unit (assembled-cnn `SKBlock`), in place of a block's 3x3 conv + BN + ReLU.

    ONE 3x3 conv to 2*width channels + BN + ReLU, split into 2 branches of `width` channels (first half, second
    half, as tf.split); attention: sum the branches -> global average pool -> 1x1 conv to d = max(width // 2, 32)
    -> BN -> ReLU -> 1x1 conv to 2*width (no biases) -> softmax over the 2 branches -> weighted sum of the branches.
    """

    def __init__(self, in_chs: int, width: int, stride: int = 1, dilation: int = 1, reduction: int = 2,
                 min_attn_chs: int = 32):
        super().__init__()
        self.paths = 2
        self.conv = nn.Conv2d(in_chs, width * 2, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(width * 2)
        attn_chs = max(width // reduction, min_attn_chs)
        self.fc_reduce = nn.Conv2d(width, attn_chs, 1, bias=False)
        self.bn_attn = nn.BatchNorm2d(attn_chs)
        self.fc_select = nn.Conv2d(attn_chs, width * 2, 1, bias=False)

    def attention(self, branches: torch.Tensor) -> torch.Tensor:
        """(B, paths, C, H, W) branch outputs -> (B, paths, C, 1, 1) weights, summing to 1 over the paths."""
        pooled = branches.sum(1).mean((2, 3), keepdim=True)
        return _softmax_over_paths(self.fc_select(F.relu(self.bn_attn(self.fc_reduce(pooled)))), self.paths)

    def forward(self, x):
        branches = F.relu(self.bn(self.conv(x))).unflatten(1, (self.paths, -1))
        return (branches * self.attention(branches)).sum(1)


class ConvBnAct(nn.Module):
    """conv -> BN (-> ReLU), keys `conv`, `bn` as timm's ConvNormAct."""

    def __init__(self, in_chs, out_chs, kernel_size=3, stride=1, dilation=1, act=True):
        super().__init__()
        padding = ((stride - 1) + dilation * (kernel_size - 1)) // 2  # timm's get_padding
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.act else x


class SelectiveKernelAttn(nn.Module):
    """timm's SK attention (keys fc_reduce, bn, fc_select)."""

    def __init__(self, channels: int, paths: int, attn_chs: int):
        super().__init__()
        self.paths = paths
        self.fc_reduce = nn.Conv2d(channels, attn_chs, 1, bias=False)
        self.bn = nn.BatchNorm2d(attn_chs)
        self.fc_select = nn.Conv2d(attn_chs, channels * paths, 1, bias=False)

    def forward(self, branches):
        pooled = branches.sum(1).mean((2, 3), keepdim=True)
        return _softmax_over_paths(self.fc_select(F.relu(self.bn(self.fc_reduce(pooled)))), self.paths)


class SplitSelectiveKernel(nn.Module):
    """timm's SelectiveKernel as skresnet18/34 use it: the input channels split in two, one half through a 3x3
    conv, the other through a 3x3 conv dilated 2 (a 5x5 field), each with BN + ReLU, to `out_chs` each; timm's
    attention with make_divisible(out_chs / 8, 16) channels. Keys: paths.{0,1}.conv/bn, attn.*."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, dilation: int = 1, rd_ratio: float = 1 / 8,
                 rd_divisor: int = 16):
        super().__init__()
        if in_chs % 2:
            raise ValueError(f"the split-input SK unit needs an even channel count, got {in_chs}")
        self.split = in_chs // 2
        self.paths = nn.ModuleList([ConvBnAct(self.split, out_chs, 3, stride, dilation * d) for d in (1, 2)])
        self.attn = SelectiveKernelAttn(out_chs, 2, make_divisible(out_chs * rd_ratio, rd_divisor, round_limit=0.9))

    def forward(self, x):
        halves = torch.split(x, self.split, 1)
        branches = torch.stack([path(half) for path, half in zip(self.paths, halves)], 1)
        return (branches * self.attn(branches)).sum(1)


class _TimmSelectiveKernelBlock(nn.Module):
    """What timm's two SK blocks share: the ResNet family's block signature, refusing the options timm's layout
    lacks; the residual branch `self.convs()` (its last ConvBnAct zeroed by zero_init_last) added to the shortcut
    (`self.downsample`, which a subclass registers after its convs, as timm orders the keys)."""

    def __init__(self, relu_after_add, groups, base_width, bn_after_add, sk, aa_size, se_layer, drop_block):
        super().__init__()
        given = [name for name, value in (("groups/base_width", groups != 1 or base_width != 64),
                                          ("bn_after_add", bn_after_add), ("sk", sk), ("aa", aa_size),
                                          ("se", se_layer), ("dropblock", drop_block)) if value]
        if given:
            raise ValueError(f"{type(self).__name__} supports none of {', '.join(given)}")
        self.relu_after_add = relu_after_add

    def zero_init_last(self):
        nn.init.zeros_(self.convs()[-1].bn.weight)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = x
        for conv in self.convs():
            out = conv(out)
        out = out + shortcut
        return F.relu(out) if self.relu_after_add else out


class SelectiveKernelBasic(_TimmSelectiveKernelBlock):
    """timm's `SelectiveKernelBasic` block (skresnet18/34): conv1 = the split-input SK unit, conv2 = 3x3 conv + BN,
    add, ReLU. Keys conv1.paths.*, conv1.attn.*, conv2.conv, conv2.bn, downsample.0/1, as in timm."""

    expansion = 1

    def __init__(self, in_chs, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 first_dilation=1, bn_after_add=False, relu_after_add=True, stride_in_1x1=False, se_layer=None,
                 drop_block=None, drop_block_placement=None, sk=False, aa_size=0):
        super().__init__(relu_after_add, groups, base_width, bn_after_add, sk, aa_size, se_layer, drop_block)
        self.conv1 = SplitSelectiveKernel(in_chs, planes, stride, first_dilation)
        self.conv2 = ConvBnAct(planes, planes, 3, dilation=dilation, act=False)
        self.downsample = downsample  # registered after the convs: timm's key order

    def convs(self):
        return self.conv1, self.conv2


class SelectiveKernelBottleneck(_TimmSelectiveKernelBlock):
    """timm's `SelectiveKernelBottleneck` (skresnet50): 1x1 conv + BN + ReLU, the split-input SK unit at stride
    (timm's skresnet50 attention: make_divisible(width / 16, 8) channels), 1x1 conv + BN, add, ReLU. Keys conv1.*,
    conv2.paths.*, conv2.attn.*, conv3.*, downsample.0/1, as in timm."""

    expansion = 4

    def __init__(self, in_chs, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 first_dilation=1, bn_after_add=False, relu_after_add=True, stride_in_1x1=False, se_layer=None,
                 drop_block=None, drop_block_placement=None, sk=False, aa_size=0):
        super().__init__(relu_after_add, groups, base_width, bn_after_add, sk, aa_size, se_layer, drop_block)
        self.conv1 = ConvBnAct(in_chs, planes, 1)
        self.conv2 = SplitSelectiveKernel(planes, planes, stride, first_dilation, rd_ratio=1 / 16, rd_divisor=8)
        self.conv3 = ConvBnAct(planes, planes * self.expansion, 1, act=False)
        self.downsample = downsample

    def convs(self):
        return self.conv1, self.conv2, self.conv3


# ---- Big-Little Net (Chen et al. 2019), as assembled-cnn's Keras code builds it --------------------------------

def conv_bn(in_chs, out_chs, kernel_size=1, stride=1):
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_chs))


class BigLittleStem(nn.Module):
    """Module 0 (`bl_stage1`), in place of the stem max-pool: big = 3x3/2 conv + BN; little = 3x3 conv (width/alpha)
    + BN + ReLU, 3x3/2 conv + BN + ReLU, 1x1 conv to width + BN; ReLU of the sum, then 1x1 conv + BN + ReLU."""

    def __init__(self, width: int, alpha: int):
        super().__init__()
        self.big = conv_bn(width, width, 3, 2)
        little = width // alpha
        self.little = nn.Sequential(conv_bn(width, little, 3), nn.ReLU(inplace=True), conv_bn(little, little, 3, 2),
                                    nn.ReLU(inplace=True), conv_bn(little, width))
        self.merge = conv_bn(width, width)

    def forward(self, x):
        return F.relu(self.merge(F.relu(self.big(x) + self.little(x))))


class BigLittleStage(nn.Module):
    """One Big-Little module (`bl_block`): a big branch of blocks at half resolution (its last block without the
    final ReLU), a little branch of narrow blocks at full resolution expanded by a 1x1 conv + BN, merged by nearest
    upsampling of the big branch, addition and ReLU, then one merge block that carries the stage's stride."""

    def __init__(self, big: nn.Module, little: nn.Module, little_expand: nn.Module, merge: nn.Module):
        super().__init__()
        self.big, self.little, self.little_expand, self.merge = big, little, little_expand, merge

    def forward(self, x):
        little = self.little_expand(self.little(x))
        # Nearest x2 (UpSampling2D); by size, so an odd input side still lines up with the little branch.
        big = F.interpolate(self.big(x), size=little.shape[-2:], mode="nearest")
        return self.merge(F.relu(big + little))


def big_little_stage(unit, projection, in_chs: int, planes: int, blocks: int, stride: int, alpha: int, beta: int,
                     expansion: int) -> BigLittleStage:
    """A Big-Little stage of `blocks` units. `unit(in_chs, planes, stride, downsample, **kw)` builds a block and
    `projection(in_chs, out_chs, stride)` its shortcut; the first block of every branch (and the merge block) has a
    projection shortcut even when the shape does not change, as the official code's `conv_block` always does."""

    def branch(in_chs, planes, n, stride, last_relu=True):
        out_chs = planes * expansion
        units = [unit(in_chs, planes, stride, projection(in_chs, out_chs, stride))]
        # Only a later block can drop its ReLU: the official block_layer keeps the first block's.
        units += [unit(out_chs, planes, relu_after_add=last_relu or i < n - 1) for i in range(1, n)]
        return nn.Sequential(*units)

    out_chs = planes * expansion
    little_planes = planes // alpha
    big = branch(in_chs, planes, blocks - 1, 2, last_relu=False)
    little = branch(in_chs, little_planes, max(1, blocks // beta - 1), 1)
    expand = conv_bn(little_planes * expansion, out_chs)
    return BigLittleStage(big, little, expand, branch(out_chs, planes, 1, stride))
