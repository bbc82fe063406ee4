"""Semantic segmentation on any registered backbone: FCN (Long et al. 2015) and DeepLabv3 (Chen et al. 2017) as in
torchvision, and the ademxapp FCN of ResNet-38 (Wu et al. 2016).

`SegmentationModel` wraps a backbone built by the registry (`num_classes=0`, dilated to `output_stride`) and runs
a head on its last stage map, plus an optional auxiliary FCN head on the stage before it (torchvision's aux loss).
Logits are upsampled bilinearly to the input size. Key names are torchvision's (`backbone.conv1.weight`,
`backbone.layer1...`, `classifier.0...`, `aux_classifier.0...`), so its published checkpoints load unchanged.
torchvision's replace_stride_with_dilation=[False, True, True] is `output_stride=8` here.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import create_model, register_variant


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_bn_relu(in_chs: int, out_chs: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_chs), nn.ReLU())


class ASPPPooling(nn.Sequential):
    """Image-level features: global average, 1x1 conv-BN-ReLU, spread back over the map."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(in_chs, out_chs))

    def forward(self, x):
        return _upsample(super().forward(x), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): a 1x1 branch, one dilated 3x3 per rate and image pooling,
    concatenated and projected to `out_chs`."""

    def __init__(self, in_chs: int, rates=(12, 24, 36), out_chs: int = 256):
        super().__init__()
        dilated = [conv_bn_relu(in_chs, out_chs, 3, rate) for rate in rates]
        self.convs = nn.ModuleList([conv_bn_relu(in_chs, out_chs), *dilated, ASPPPooling(in_chs, out_chs)])
        self.project = nn.Sequential(*conv_bn_relu(len(self.convs) * out_chs, out_chs), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def fcn_head(in_chs: int, num_classes: int, rates=None) -> nn.Sequential:
    """torchvision's FCNHead: 3x3 conv to in/4, BN, ReLU, dropout 0.1, 1x1 conv to the classes."""
    if rates is not None:
        raise ValueError("head_rates is for the aspp and two_conv heads; the fcn head has no dilation")
    mid = in_chs // 4
    return nn.Sequential(*conv_bn_relu(in_chs, mid, 3), nn.Dropout(0.1), nn.Conv2d(mid, num_classes, 1))


def aspp_head(in_chs: int, num_classes: int, rates=None) -> nn.Sequential:
    """torchvision's DeepLabHead: ASPP (rates 12, 24, 36; 256 channels), 3x3 conv-BN-ReLU, 1x1 conv to the classes."""
    return nn.Sequential(ASPP(in_chs, tuple(rates or (12, 24, 36))), *conv_bn_relu(256, 256, 3),
                         nn.Conv2d(256, num_classes, 1))


def two_conv_head(in_chs: int, num_classes: int, rates=None) -> nn.Sequential:
    """ademxapp's fcrna_model_a1 classifier: two 3x3 convs of dilation 12 with biases (conv6a: 512, then the
    classes), a ReLU between them; no BN, no dropout. `rates` = [d]: dilation d instead of 12."""
    if rates is not None and len(rates) != 1:
        raise ValueError(f"head_rates of the two_conv head is one dilation, e.g. [3], got {list(rates)}")
    d = rates[0] if rates else 12
    return nn.Sequential(nn.Conv2d(in_chs, 512, 3, padding=d, dilation=d), nn.ReLU(),
                         nn.Conv2d(512, num_classes, 3, padding=d, dilation=d))


HEADS = {"fcn": fcn_head, "aspp": aspp_head, "two_conv": two_conv_head}


class SegmentationModel(nn.Module):
    """A registered backbone with a segmentation head (`classifier`) and an optional aux FCN head (`aux_classifier`).

    forward(x) returns logits (N, num_classes, H, W) at the input size; in training mode with an aux head,
    {"out": logits, "aux": aux logits}, both at the input size. `head_rates` scales the head's dilations to a small
    feature map (ASPP's three rates instead of 12, 24, 36; the two-conv head's one instead of 12). Other keywords
    go to the backbone's constructor (e.g. block_dropout)."""

    task = "segmentation"  # what the model's outputs label (inference asks: classifiers have no `task`)

    def __init__(self, backbone: str = "resnet50", num_classes: int = 21, in_chans: int = 3, *, head: str = "fcn",
                 aux: bool = False, output_stride: int | None = 8, head_rates=None, **backbone_kwargs):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if num_classes < 1:
            raise ValueError(f"a segmentation model needs num_classes >= 1, got {num_classes}")
        self.backbone = create_model(backbone, num_classes=0, in_chans=in_chans, output_stride=output_stride,
                                     **backbone_kwargs)
        channels = self.backbone.stage_channels
        if head_rates is not None and not (isinstance(head_rates, (list, tuple)) and head_rates
                                           and all(isinstance(r, int) and r >= 1 for r in head_rates)):
            raise ValueError(f"head_rates must be a list of dilations >= 1, got {head_rates!r}")
        self.classifier = HEADS[head](channels[-1], num_classes, head_rates)
        self.aux_classifier = fcn_head(channels[-2], num_classes) if aux else None
        self.num_classes, self.in_chans = num_classes, in_chans
        self.output_stride = self.backbone.output_stride  # the real one: a shallow backbone may never reach 8
        self.first_conv = "backbone." + self.backbone.first_conv
        # Prefixes of the layers that output the classes: refitted, not loaded, for another num_classes.
        self.classifier_key = f"classifier.{len(self.classifier) - 1}"
        self.aux_classifier_key = f"aux_classifier.{len(self.aux_classifier) - 1}" if aux else None

    def forward(self, x: torch.Tensor):
        stages = self.backbone.forward_stages(x)
        out = _upsample(self.classifier(stages[-1]), x.shape[-2:])
        if self.aux_classifier is None or not self.training:
            return out
        return {"out": out, "aux": _upsample(self.aux_classifier(stages[-2]), x.shape[-2:])}


# ---- The variants: each a row of data ---------------------------------------------------------------------------

_TV = dict(input_size=(3, 520, 520), num_classes=21, aux=True, output_stride=8)  # torchvision's layout and defaults
_SMALL = dict(input_size=(3, 64, 64), num_classes=11, aux=False)  # CPU training on 64x64 scenes
_VARIANTS = {
    # name: (backbone, head, settings)
    "fcn_resnet50": ("resnet50", "fcn", _TV),
    "fcn_resnet101": ("resnet101", "fcn", _TV),
    "deeplabv3_resnet50": ("resnet50", "aspp", _TV),
    "deeplabv3_resnet101": ("resnet101", "aspp", _TV),
    "deeplabv3_resnet50d": ("resnet50d", "aspp", _TV),
    # ademxapp's FCN of Model A1 at output stride 8, 4096 channels into the head; dropout 0.3 in B6, 0.5 in B7
    "fcn_resnet38_a1": ("resnet38_a1", "two_conv", dict(input_size=(3, 500, 500), num_classes=21, aux=False,
                                                         output_stride=8, block_dropout=(0.3, 0.5))),
    "fcn_resnet18": ("resnet18", "fcn", dict(_SMALL, output_stride=8)),
    # CIFAR backbones: stem stride 1, total stride 4 (output_stride=None: nothing to dilate)
    "fcn_resnet20": ("resnet20", "fcn", dict(_SMALL, output_stride=None)),
    "fcn_resnet56": ("resnet56", "fcn", dict(_SMALL, output_stride=None)),
}

for _name, (_backbone, _head, _settings) in _VARIANTS.items():
    _settings = dict(_settings)
    _input_size = _settings.pop("input_size")
    register_variant(_name, SegmentationModel, input_size=_input_size, backbone=_backbone, head=_head,
                     doc=f"{_name}: {_backbone} backbone, {_head} head, {_settings}", **_settings)
