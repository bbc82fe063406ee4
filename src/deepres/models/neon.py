"""The neon model zoo's Mini-Places2 network: NervanaSystems/ModelZoo SceneClassification/DeepResNet/
miniplaces_msra.py (neon v1.2), with its `--network plain|resnet` switch and its fully convolutional form for the
multi-scale test (miniplaces_eval.py).

Their layer list: a 3x3 stride-2 conv (32 channels) + BN + ReLU; four stages of `depth` modules (default 9) of two
3x3 convs + BN at 32, 64, 128, 256 channels, stride 2 on the first conv of each stage after the first; the shortcut
of a strided module is neon's ResidualModule projection with IdentityInit: a 1x1 stride-2 conv whose (C, 2C) weight
is the identity on the first C output channels and zero after, and which neon never updates (IdentityInit is not
added to the trained layers), i.e. CIFAR's option A; ReLU after the addition; a 7x7 average pool (the 7x7 map of a
112-px input, here global, so any size works); an affine layer without bias followed by BN (Affine(batch_norm=True)),
softmax in the loss. Init: Kaiming(local=True) for convs, N(0, 2 / (C*k*k)); Kaiming(local=False) for the affine
layer, N(0, 2 / in_features); neon's BatchNorm: gamma 1, beta 0, eps 1e-3, rho 0.9 (PyTorch momentum 0.1).

State-dict keys: conv1, bn1, layer1..layer4.M.{conv1, bn1, conv2, bn2}, fc.weight and fc.bn.*; the fixed identity
projection is a non-persistent buffer, so `neon_miniplaces_plain` and `neon_miniplaces_resnet` have the same keys.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ResidualNetwork
from .registry import register_variant
from .resnet import conv3x3

NEON_BN_EPS = 1e-3  # neon.layers.BatchNorm(eps=1e-3)


def neon_init(model: nn.Module) -> None:
    """neon's Kaiming: N(0, 2 / fan_in) for convs and linear layers (fan_in = in_channels * kernel area), BN 1 / 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, LinearBN)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class IdentityProjection(nn.Module):
    """neon's ResidualModule(projection=IdentityInit()): a 1x1 conv of `stride` with the fixed weight
    eye(in_chs) zero-padded to out_chs output channels. Never trained, so a buffer (not saved: it is a constant)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"an identity projection cannot drop channels ({in_chs} -> {out_chs})")
        weight = torch.zeros(out_chs, in_chs, 1, 1)
        weight[:in_chs, :, 0, 0] = torch.eye(in_chs)
        self.register_buffer("weight", weight, persistent=False)
        self.stride = stride

    def forward(self, x):
        return F.conv2d(x, self.weight.to(x.dtype), stride=self.stride)

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, stride={self.stride}"


class NeonModule(nn.Module):
    """One of their modules: conv3x3(stride)-BN-ReLU, conv3x3-BN, + shortcut (residual only), ReLU."""

    def __init__(self, in_chs: int, planes: int, stride: int = 1, residual: bool = True):
        super().__init__()
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, eps=NEON_BN_EPS)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=NEON_BN_EPS)
        self.residual = residual
        # neon projects only where the module strides (their `projection = None if stride == 1`)
        self.shortcut = IdentityProjection(in_chs, planes, stride) if residual and stride != 1 else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)

    def zero_init_last(self):
        nn.init.zeros_(self.bn2.weight)


class LinearBN(nn.Module):
    """neon's Affine(batch_norm=True): a linear layer without bias, then BatchNorm over its outputs.

    `forward_dense` applies it at every position of a (N, C, H, W) map, the 1x1 conv + BN of their evaluation
    script: in eval mode the mean of its scores over positions equals `forward` of the pooled features."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bn = nn.BatchNorm1d(out_features, eps=NEON_BN_EPS)
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        return self.bn(F.linear(x, self.weight))

    def forward_dense(self, x):
        scores = F.conv2d(x, self.weight[:, :, None, None])
        return self.bn(scores.flatten(2)).view_as(scores)  # BatchNorm1d takes (N, C, L)


class NeonMiniPlacesNet(ResidualNetwork):
    """miniplaces_msra.py's network: `depth` modules per stage at `widths`, `residual=False` their plain network."""

    def __init__(self, depth: int = 9, num_classes: int = 100, in_chans: int = 3, *, widths=(32, 64, 128, 256),
                 residual: bool = True, drop_rate: float = 0.0, zero_init_last: bool = False):
        super().__init__(num_classes, drop_rate)
        if depth < 1:
            raise ValueError(f"depth (modules per stage) must be >= 1, got {depth}")
        if zero_init_last and not residual:
            raise ValueError("zero_init_last on a plain network (residual=False) would zero its only path")
        widths = tuple(widths)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=NEON_BN_EPS)
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(widths)))
        in_chs = widths[0]
        for i, (name, planes) in enumerate(zip(self.stage_names, widths)):
            stride = 1 if i == 0 else 2
            units = [NeonModule(in_chs, planes, stride, residual)]
            units += [NeonModule(planes, planes, 1, residual) for _ in range(1, depth)]
            setattr(self, name, nn.Sequential(*units))
            in_chs = planes
        self.stage_channels = widths
        self.output_stride = 2 ** len(widths)  # the stem's 2, then 2 per stage after the first
        self.depth, self.residual = depth, residual
        self._make_classifier(in_chs)
        neon_init(self)
        if zero_init_last:
            self.zero_init_last()

    def _make_classifier(self, num_features: int) -> None:
        self.num_features = num_features
        self.fc = LinearBN(num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def forward_stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at every position of the last feature map, (N, classes, H, W): the classifier as a 1x1
        conv + BN (miniplaces_eval.py). Their average over positions is `forward(x)` in eval mode."""
        if self.num_classes == 0:
            raise ValueError("forward_dense needs a classifier (num_classes > 0)")
        return self.fc.forward_dense(self.forward_features(x))


# ---- The variants ------------------------------------------------------------------------------------------------
# miniplaces_msra.py's defaults: --depth 9 (4 x 9 modules x 2 convs + stem + affine = 74 layers), 100 classes,
# 112-px crops; its --network default is plain.
for _name, _residual in (("neon_miniplaces_resnet", True), ("neon_miniplaces_plain", False)):
    register_variant(_name, NeonMiniPlacesNet, input_size=(3, 112, 112),
                     doc=f"{_name}: neon Mini-Places2 net, 4 stages x depth=9 modules, 32-256 channels, "
                         f"{'fixed identity-projection shortcuts' if _residual else 'no shortcuts'}, BN classifier",
                     residual=_residual)
