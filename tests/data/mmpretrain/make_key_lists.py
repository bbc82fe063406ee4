"""Writes the state-dict key lists (name, shape) of mmpretrain/mmcls ResNet checkpoints, from mmpretrain's module
code; run it from anywhere (`python tests/data/mmpretrain/make_key_lists.py`). Uses neither torch, mmpretrain nor
deepres: it restates how mmpretrain names and sizes each module, so the lists stay independent of deepres's layout.

Source: github.com/open-mmlab/mmpretrain at ee7f2e88501f61aa95c742dd5f429f039935ee90 (2024-11-01); the module code
has kept these names since mmcls v0.15 (the checkpoints of 2021-22 were saved by mmcls 0.x).
- mmpretrain/models/backbones/resnet.py
  - L468-474 `arch_settings`: depth -> block and blocks per stage (18/34 BasicBlock, 50/101/152 Bottleneck).
  - L302-310 `get_expansion`: BasicBlock 1, Bottleneck 4; L532-559 stage widths base_channels(64)*expansion,
    doubled per stage; L561-562 stages are registered as `layer1`..`layer4`.
  - L576-619 `_make_stem_layer`: without deep_stem `conv1` (7x7, no bias) + `bn1` (build_norm_layer postfix=1:
    BN's abbreviation "bn"); with deep_stem `stem` = Sequential of three mmcv ConvModules (in->32 stride 2,
    32->32, 32->64, 3x3), each holding `conv` (bias "auto" = no bias under a norm) and `bn`.
  - L71-93 BasicBlock: conv1, bn1, conv2, bn2 (3x3); L198-230 Bottleneck: conv1 1x1, bn1, conv2 3x3, bn2,
    conv3 1x1, bn3 (mid = out/4); then `downsample`.
  - L366-386 ResLayer: a first block whose stride or width changes gets `downsample` = Sequential([AvgPool2d] if
    avg_down and stride != 1, conv 1x1 no bias, BN). So under avg_down (ResNetV1d) layer1 (stride 1) has
    downsample.0/.1 and layers 2-4 downsample.1/.2 (index 0 is the pool, no parameters).
  - L739-768 ResNetV1c = deep_stem; ResNetV1d = deep_stem + avg_down.
- mmpretrain/models/backbones/resnet_cifar.py L10-68: ResNet_CIFAR is ResNet with `_make_stem_layer` replaced by
  `conv1` 3x3 stride 1 (no bias) + `bn1`, and no max-pool; no deep stem (L55).
- mmpretrain/models/classifiers/image.py L77-79: ImageClassifier registers `backbone`, `neck`, `head`;
  GlobalAveragePooling (neck) has no parameters; heads/linear_head.py L45: LinearClsHead `fc` = nn.Linear.
  The data preprocessor's mean/std buffers are non-persistent (utils/data_preprocessor.py L78-81): not saved.
- configs/_base_/models/resnet50.py, resnetv1c50.py, resnetv1d50.py: ImageClassifier(backbone=ResNet / ResNetV1c /
  ResNetV1d depth 50, neck=GlobalAveragePooling, head=LinearClsHead(1000 classes, in_channels 2048));
  resnet50_cifar.py: backbone ResNet_CIFAR depth 50, LinearClsHead(10 classes).
- Every BatchNorm has weight, bias, running_mean, running_var, num_batches_tracked (a scalar); a published mmcls
  checkpoint holding a deep stem lists exactly `backbone.stem.0.conv.weight, backbone.stem.0.bn.weight, ...bias,
  ...running_mean, ...running_var, ...num_batches_tracked, backbone.stem.1.conv.weight, ...` and ends in
  `head.fc.weight, head.fc.bias` (a printout of a CSPNeXt mmcls checkpoint's state_dict keys in a public conversion
  script; same ConvModule and LinearClsHead).
"""
from pathlib import Path

ARCH_SETTINGS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                 101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


def bn(prefix, channels):
    return [(f"{prefix}.weight", (channels,)), (f"{prefix}.bias", (channels,)), (f"{prefix}.running_mean", (channels,)),
            (f"{prefix}.running_var", (channels,)), (f"{prefix}.num_batches_tracked", ())]


def classifier_keys(depth, *, deep_stem=False, avg_down=False, cifar_stem=False, num_classes=1000):
    """(key, shape) of an mmpretrain ImageClassifier(ResNet[V1c|V1d|_CIFAR](depth), GAP, LinearClsHead) state dict."""
    block, stage_blocks = ARCH_SETTINGS[depth]
    expansion = 1 if block == "basic" else 4
    rows = []
    if deep_stem:
        for i, (cin, cout) in enumerate(((3, 32), (32, 32), (32, 64))):
            rows += [(f"backbone.stem.{i}.conv.weight", (cout, cin, 3, 3))] + bn(f"backbone.stem.{i}.bn", cout)
    else:
        kernel = 3 if cifar_stem else 7
        rows += [("backbone.conv1.weight", (64, 3, kernel, kernel))] + bn("backbone.bn1", 64)
    in_ch, out_ch = 64, 64 * expansion
    for stage, num_blocks in enumerate(stage_blocks):
        stride = 1 if stage == 0 else 2
        for b in range(num_blocks):
            p = f"backbone.layer{stage + 1}.{b}"
            block_in = in_ch if b == 0 else out_ch
            if block == "basic":
                rows += [(f"{p}.conv1.weight", (out_ch, block_in, 3, 3))] + bn(f"{p}.bn1", out_ch)
                rows += [(f"{p}.conv2.weight", (out_ch, out_ch, 3, 3))] + bn(f"{p}.bn2", out_ch)
            else:
                mid = out_ch // expansion
                rows += [(f"{p}.conv1.weight", (mid, block_in, 1, 1))] + bn(f"{p}.bn1", mid)
                rows += [(f"{p}.conv2.weight", (mid, mid, 3, 3))] + bn(f"{p}.bn2", mid)
                rows += [(f"{p}.conv3.weight", (out_ch, mid, 1, 1))] + bn(f"{p}.bn3", out_ch)
            if b == 0 and (stride != 1 or in_ch != out_ch):
                first = 1 if avg_down and stride != 1 else 0  # index 0 is the AvgPool2d when there is one
                rows += [(f"{p}.downsample.{first}.weight", (out_ch, in_ch, 1, 1))]
                rows += bn(f"{p}.downsample.{first + 1}", out_ch)
        in_ch, out_ch = out_ch, out_ch * 2
    rows += [("head.fc.weight", (num_classes, in_ch)), ("head.fc.bias", (num_classes,))]
    return rows


HEADER = """\
# {what}: the keys and shapes of checkpoint['state_dict'] (mmcls/mmpretrain ImageClassifier), in order.
# Written by make_key_lists.py from mmpretrain's module code (see that file for the files and lines).
# Do not regenerate from deepres.
"""

LISTS = {
    "resnet50": ("ResNet-50 (resnet50_8xb32_in1k)", dict(depth=50)),
    "resnetv1c50": ("ResNetV1c-50 (resnetv1c50_8xb32_in1k)", dict(depth=50, deep_stem=True)),
    "resnetv1d50": ("ResNetV1d-50 (resnetv1d50_8xb32_in1k)", dict(depth=50, deep_stem=True, avg_down=True)),
    "resnet50_cifar": ("ResNet_CIFAR-50 (resnet50_8xb16_cifar10)", dict(depth=50, cifar_stem=True, num_classes=10)),
}

if __name__ == "__main__":
    here = Path(__file__).parent
    for name, (what, kwargs) in LISTS.items():
        lines = [f"{key} {'x'.join(map(str, shape)) or 'scalar'}" for key, shape in classifier_keys(**kwargs)]
        (here / f"{name}_state_dict.txt").write_text(HEADER.format(what=what) + "\n".join(lines) + "\n")
