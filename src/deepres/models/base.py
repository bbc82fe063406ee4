"""What every deepres network shares: the classifier head, per-stage features and output-stride bookkeeping."""
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


def stage_strides_and_dilations(strides, stem_stride: int, output_stride: int | None):
    """Per stage (stride, dilation, first_dilation): stages past `output_stride` dilate instead of striding.

    Same rule as torchvision's replace_stride_with_dilation: the first unit of a dilated stage keeps the previous
    dilation in its strided conv, later units use the new one.
    """
    if output_stride is not None and output_stride not in (4, 8, 16, 32):
        raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride!r}")
    out, current, dilation = [], stem_stride, 1
    for stride in strides:
        previous = dilation
        if output_stride is not None and current * stride > output_stride:
            dilation, stride = dilation * stride, 1
        else:
            current *= stride
        out.append((stride, dilation, previous))
    return out


def init_weights(model: nn.Module) -> None:
    """He init (fan_out) for convs, unit BN, torchvision's default for the classifier."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResidualNetwork(nn.Module):
    """Base of every family. A subclass sets `stage_names`, `num_features`, `fc` and implements `forward_stem`
    (and `forward_final` if the last stage needs a final norm, as pre-activation nets do)."""

    stage_names: tuple[str, ...] = ()
    stage_channels: tuple[int, ...] = ()  # channels of each forward_stages map (segmentation heads size from them)
    output_stride = 32  # input pixels per pixel of the last stage map (after any dilation)
    first_conv = "conv1.weight"  # key of the stem conv, adapted when loading weights for another in_chans
    # Prefix of the classifier keys, dropped when num_classes differs. Not "classifier": torchvision's segmentation
    # models have a submodule of that name.
    classifier_key = "fc"

    def __init__(self, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate

    def _make_classifier(self, num_features: int) -> None:
        self.num_features = num_features
        self.fc = nn.Linear(num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_final(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each stage (the last one after any final norm), for segmentation and extract_feat."""
        x = self.forward_stem(x)
        features = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features.append(x)
        features[-1] = self.forward_final(features[-1])
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for `num_classes` (0 = no classifier, pooled features out)."""
        self.num_classes = num_classes
        device = module_device(self)
        self._make_classifier(self.num_features)
        self.fc.to(device)

    def zero_init_last(self) -> None:
        """Make every residual branch start as zero, so each unit starts as the identity (Goyal et al. 2017)."""
        for m in self.modules():
            if m is not self and hasattr(m, "zero_init_last"):
                m.zero_init_last()


def _network_of(model: nn.Module) -> tuple["ResidualNetwork", str]:
    """The ResidualNetwork inside `model` (itself, or a segmentation model's backbone) and its key prefix."""
    backbone = getattr(model, "backbone", None)
    net, prefix = (backbone, "backbone.") if isinstance(backbone, ResidualNetwork) else (model, "")
    if not isinstance(net, ResidualNetwork) or not net.stage_names:
        raise ValueError(f"{type(model).__name__} is not a deepres ResNet-family network: it has no stages")
    return net, prefix


def layer_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: depth}, number of stages S): 0 the stem (every module registered before the first
    stage), k for stage k (1..S; modules after the last stage, e.g. a final norm, count as stage S), S + 1 the
    classifier and anything outside the network (a segmentation model's heads). Layer-wise lr decay and frozen
    stages read depths from here."""
    net, prefix = _network_of(model)
    stages = len(net.stage_names)
    depth_of_child, depth = {}, 0
    for name, _ in net.named_children():
        if name in net.stage_names:
            depth = net.stage_names.index(name) + 1
        depth_of_child[name] = stages + 1 if name == net.classifier_key else depth
    depths = {}
    for name, _ in model.named_parameters():
        inside = name.startswith(prefix)
        child = name[len(prefix):].split(".")[0] if inside else None
        depths[name] = depth_of_child.get(child, stages + 1)
    return depths, stages


def frozen_modules(model: nn.Module, frozen_stages: int) -> list[nn.Module]:
    """The modules mmpretrain's `frozen_stages` freezes: -1 none, 0 the stem, k the stem and stages 1..k."""
    if frozen_stages == -1:
        return []
    net, _ = _network_of(model)
    stages = len(net.stage_names)
    if not -1 <= frozen_stages <= stages:
        raise ValueError(f"model.frozen_stages={frozen_stages}: the network has {stages} stages (use -1..{stages})")
    if frozen_stages < 0:
        return []
    out = []
    for name, child in net.named_children():
        if name in net.stage_names[frozen_stages:] or name == net.classifier_key:
            break
        out.append(child)
    return out


def freeze_stages(model: nn.Module, frozen_stages: int) -> int:
    """Stop gradients to the frozen modules (see frozen_modules) and put them in eval mode (BatchNorm statistics
    stay as loaded); call `frozen_modules(...)`'s .eval() again after every model.train(). Returns how many
    parameters were frozen."""
    count = 0
    for module in frozen_modules(model, frozen_stages):
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
            count += p.numel()
    return count


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` for the duration of the block, then every module's own training flag back as it was.

    Per module, so a model with some submodules deliberately kept in eval mode (frozen BatchNorm) comes back
    unchanged; restored also when the block raises."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in flags:
            module.train(was_training)
