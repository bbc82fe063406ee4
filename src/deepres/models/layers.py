"""Switchable layers of the ResNet family's blocks: Squeeze-and-Excitation and DropBlock.

Neither adds state-dict keys beyond timm's: `SqueezeExcite` holds exactly `fc1.weight/bias, fc2.weight/bias` (timm's
SEModule), `DropBlock2d` holds no parameters or buffers, so inserting it leaves a checkpoint's keys unchanged. The
DropBlock keep probability is not a model setting: the trainer moves it every step (`set_drop_block_keep`).
"""
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.0) -> int:
    """`value` rounded to the nearest multiple of `divisor` (at least `divisor`); timm's
    timm/layers/helpers.py make_divisible (SEModule calls it with round_limit=0: never bumped up)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): global average pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid gate.

    Reduced channels follow timm/layers/squeeze_excite.py SEModule (what timm's resnet.py builds for
    attn_layer='se'): make_divisible(channels * rd_ratio, rd_divisor=8), e.g. 256 -> 16 in seresnet50, 16 -> 8 in a
    CIFAR stage. rd_divisor=1 gives the Assemble-ResNet TF code's `channel // ratio` (clovaai/assembled-cnn
    nets/blocks.py se_block, which also has no biases: bias=False)."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 8, bias: bool = True):
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio, rd_divisor) if rd_divisor > 1 else \
            max(1, int(channels * rd_ratio))
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=bias)

    def forward(self, x):
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


DropBlockMode = Literal["assemble", "timm"]


def drop_block_2d(x: torch.Tensor, drop_prob: float, block_size: int = 7, gamma_scale: float = 1.0,
                  mode: DropBlockMode = "assemble") -> torch.Tensor:
    """DropBlock (Ghiasi et al. 2018): zero square blocks of `block_size` (clipped to the map), then rescale the
    kept activations by count / kept over the whole mask so the mean is preserved.

    gamma, the seed rate, = drop_prob * gamma_scale / block_size^2 * (H * W) / ((H - block + 1) * (W - block + 1)),
    so that about `drop_prob` of the map is dropped.
    mode "assemble": clovaai/assembled-cnn nets/blocks.py dropblock: seeds only where a whole block fits, one mask
    per channel shared by every sample of the batch (sampling shape [1, C, H', W']).
    mode "timm": timm/layers/drop.py drop_block_2d (timm >= 1.0.23, couple_channels=True): seeds anywhere, blocks
    clipped at the border, one mask per sample shared by all its channels (shape [B, 1, H, W]).
    """
    batch, channels, height, width = x.shape
    kh, kw = min(block_size, height), min(block_size, width)
    gamma = gamma_scale * drop_prob * height * width / (kh * kw) / ((height - kh + 1) * (width - kw + 1))
    with torch.no_grad():
        if mode == "assemble":
            seeds = torch.bernoulli(torch.full((1, channels, height - kh + 1, width - kw + 1), min(gamma, 1.0),
                                               device=x.device))
            # zero padding of block-1 on every side: the block seeded at i covers i..i+block-1, inside the map
            blocks = F.max_pool2d(F.pad(seeds, (kw - 1, kw - 1, kh - 1, kh - 1)), (kh, kw), stride=1)
        elif mode == "timm":
            seeds = torch.bernoulli(torch.full((batch, 1, height, width), min(gamma, 1.0), device=x.device))
            blocks = F.max_pool2d(seeds, (kh, kw), stride=1, padding=(kh // 2, kw // 2))
            blocks = blocks[..., (kh + 1) % 2:, (kw + 1) % 2:]  # an even block pools one row/column too many
        else:
            raise ValueError(f"DropBlock mode must be 'assemble' or 'timm', got {mode!r}")
        keep = 1.0 - blocks
        keep = keep * (keep.numel() / (keep.sum() + 1e-7))
    return x * keep.to(x.dtype)


class DropBlock2d(nn.Module):
    """DropBlock with a `keep_prob` attribute the trainer sets each step (1.0, the start, and eval mode: identity).

    No parameters or buffers, so it can sit anywhere in a network without changing its state-dict keys."""

    def __init__(self, block_size: int = 7, gamma_scale: float = 1.0, mode: DropBlockMode = "assemble"):
        super().__init__()
        if mode not in ("assemble", "timm"):
            raise ValueError(f"DropBlock mode must be 'assemble' or 'timm', got {mode!r}")
        self.block_size, self.gamma_scale, self.mode = block_size, gamma_scale, mode
        self.keep_prob = 1.0

    def forward(self, x):
        if not self.training or self.keep_prob >= 1.0:
            return x
        return drop_block_2d(x, 1.0 - self.keep_prob, self.block_size, self.gamma_scale, self.mode)

    def extra_repr(self):
        return f"block_size={self.block_size}, gamma_scale={self.gamma_scale}, mode={self.mode!r}"


def set_drop_block_keep(model: nn.Module, keep_prob: float) -> int:
    """Set `keep_prob` on every DropBlock2d in `model` (wrappers included); returns how many there are."""
    modules = [m for m in model.modules() if isinstance(m, DropBlock2d)]
    for m in modules:
        m.keep_prob = keep_prob
    return len(modules)
