"""Known published checkpoints for deepres architectures (ImageNet-1k and CIFAR classifiers, torchvision's COCO/VOC
segmentation models), and a verified download cache.

Each checkpoint is a typed record named `arch.tag` (timm's naming: `resnet50.tv_in1k` is torchvision's first
ResNet-50 weights, `tv2` its 2021 recipe, `a1` the "ResNet strikes back" A1 recipe). Facts and their sources:
- URLs, top-1/top-5 and recipes of torchvision weights: the weight enums of torchvision/models/resnet.py
  (the same numbers as the table of torchvision's model docs), evaluated at the transform given here.
- timm weights: URL and eval transform from timm's pretrained cfgs (timm/models/resnet.py), accuracy from the
  table in timm's model cards (results-imagenet.csv), at timm's test size (test_input_size, test_crop_pct).
- mmcls/mmpretrain weights: URL and top-1/top-5 from mmpretrain's configs/resnet/metafile.yml (the tables of its
  ResNet README), eval transform from the test_pipeline and data_preprocessor of each model's config.
- Hashes: torch.hub file names end in the first 8 hex digits of the file's sha256 (`resnet50-0676ba61.pth`;
  OpenMMLab's tools/model_converters/publish_model.py names its files the same way); that prefix is checked. A full
  sha256 is stored only where it is known for certain (none yet).

Downloads go to the cache directory ($DEEPRES_CACHE/checkpoints, default ~/.cache/deepres/checkpoints) through a
temporary file that is renamed only after its hash matches; a cached file is re-checked on every use.
DEEPRES_OFFLINE=1 never touches the network.
"""
import http.client
import logging
import os
import urllib.error
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlparse

from deepres.core.download import download_verified, file_hash
from deepres.core.errors import ChecksumError
from deepres.core.files import cache_dir
from deepres.core.preprocess import Preprocess

log = logging.getLogger(__name__)



class WeightsUnavailableError(FileNotFoundError):
    """Weights that are not in the cache and cannot be downloaded (offline, or the network failed)."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint: where it lives, how to check it, how it was evaluated and what it reached."""

    name: str  # "arch.tag"; arch is a registered deepres model
    url: str
    license: str
    accuracy_source: str  # where the metrics below are published
    # Classifiers report top1/top5, segmentation models miou/pixel_acc; each with the eval transform below.
    top1: float | None = None  # reported ImageNet-1k val top-1 (%)
    top5: float | None = None  # reported top-5 (%)
    miou: float | None = None  # reported mean intersection over union (%) on the categories below
    pixel_acc: float | None = None  # reported pixel accuracy (%)
    sha256: str = ""  # full hex digest of the file, when known for certain
    sha256_prefix: str = ""  # leading hex digits of the sha256 (torch.hub file-name convention), when no full one
    recipe: str = ""  # how the weights were trained (link)
    # label set: "imagenet-1k" (class i is ImageNet-1k class i, sorted synsets), "voc-21" (background, then the
    # 20 Pascal VOC categories in VOC's order), "cifar-10" / "cifar-100" (the datasets' label indices)
    categories: str = "imagenet-1k"
    num_classes: int = 1000
    # The eval transform the accuracy above was measured with (torchvision's Weights.transforms, timm's
    # pretrained_cfg): default shorter side 256 -> centre 224, bilinear, ImageNet mean/std
    preprocess: Preprocess = Preprocess()

    def __post_init__(self):
        arch, dot, tag = self.name.partition(".")
        if not (arch and dot and tag) or "." in tag:
            raise ValueError(f"pretrained weights name {self.name!r} must be 'arch.tag', e.g. 'resnet50.tv_in1k'")
        if not (self.sha256 or self.sha256_prefix):
            raise ValueError(f"pretrained weights {self.name}: give sha256 or sha256_prefix, so downloads are checked")
        for field_name in ("sha256", "sha256_prefix"):
            value = getattr(self, field_name)
            if value and (value != value.lower() or any(c not in "0123456789abcdef" for c in value)):
                raise ValueError(f"pretrained weights {self.name}: {field_name} {value!r} is not lower-case hex")
        if not self.metrics or None in self.metrics.values():
            raise ValueError(f"pretrained weights {self.name}: give top1 and top5 (classification) or miou and "
                             "pixel_acc (segmentation)")

    @property
    def metrics(self) -> dict[str, float]:
        """The published numbers: {"top1", "top5"} of a classifier, {"miou", "pixel_acc"} of a segmentation model."""
        if self.miou is not None or self.pixel_acc is not None:
            return {"miou": self.miou, "pixel_acc": self.pixel_acc}
        return {"top1": self.top1, "top5": self.top5} if self.top1 is not None or self.top5 is not None else {}

    @property
    def arch(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]

    @property
    def filename(self) -> str:
        """The cached file's name: the URL's last path component (e.g. resnet50-0676ba61.pth)."""
        return Path(urlparse(self.url).path).name

    @property
    def crop_pct(self) -> float:
        return self.preprocess.crop_pct


_registry: dict[str, PretrainedWeights] = {}


def register_pretrained(record: PretrainedWeights, *, replace_existing: bool = False) -> PretrainedWeights:
    """Add a record (e.g. a private mirror of a checkpoint); an existing name needs replace_existing=True."""
    if record.name in _registry and not replace_existing:
        raise ValueError(f"pretrained weights {record.name!r} are already registered")
    _registry[record.name] = record
    return record


def list_pretrained(pattern: str = "*") -> list[str]:
    """Names of the known checkpoints matching a shell-style `pattern` (e.g. "resnet50*"), sorted."""
    return sorted(name for name in _registry if fnmatch(name, pattern))


def get_pretrained(name: str) -> PretrainedWeights:
    """The record for `name`; KeyError naming the known tags of the same architecture."""
    if name not in _registry:
        arch = name.partition(".")[0]
        same_arch = list_pretrained(f"{arch}.*")
        hint = f"; known for {arch}: {', '.join(same_arch)}" if same_arch else "; see list_pretrained()"
        raise KeyError(f"unknown pretrained weights {name!r}{hint}")
    return _registry[name]


def default_pretrained(arch: str) -> PretrainedWeights:
    """The weights `create_model(arch, pretrained=True)` loads: the first registered for the arch (torchvision's
    original `tv_in1k` weights where there are several); KeyError when none are known."""
    for record in _registry.values():
        if record.arch == arch:
            return record
    raise KeyError(f"no published weights are registered for {arch!r}; see list_pretrained()")


def is_pretrained_name(name: str) -> bool:
    return name in _registry


# ------------------------------------------------------------------------------------------- cache / download
def default_cache_dir() -> Path:
    """$DEEPRES_CACHE/checkpoints, else ~/.cache/deepres/checkpoints."""
    return cache_dir() / "checkpoints"


def sha256sum(path) -> str:
    """Hex sha256 of a file."""
    return file_hash(path, "sha256")


def _hash_matches(record: PretrainedWeights, actual: str) -> bool:
    return actual == record.sha256 if record.sha256 else actual.startswith(record.sha256_prefix)


def _expected(record: PretrainedWeights) -> str:
    return f"sha256 {record.sha256}" if record.sha256 else f"sha256 starting {record.sha256_prefix}"


# What a failed connection or an interrupted transfer raises (URLError also covers HTTP error statuses).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def _offline() -> bool:
    return os.environ.get("DEEPRES_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def load_pretrained_weights(name: str, cache_dir: str | os.PathLike | None = None, *, progress: bool = False,
                            timeout: float = 60.0) -> Path:
    """Path of the verified checkpoint file for `name`, downloading it into the cache first if needed."""
    record = get_pretrained(name)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / record.filename
    if path.is_file():
        actual = sha256sum(path)
        if not _hash_matches(record, actual):
            # Not deleted: it may be a file the user placed by hand; they decide what to do with it.
            raise ChecksumError(f"{name}: cached file {path} has sha256 {actual}, expected {_expected(record)}; "
                                f"delete it to download {record.url} again")
        return path
    if _offline():
        raise WeightsUnavailableError(f"{name}: not in the cache and DEEPRES_OFFLINE is set; download {record.url} "
                                      f"by hand and place it at {path}")
    try:
        _download_verified(record, path, progress=progress, timeout=timeout)
    except _NETWORK_ERRORS as e:  # disk errors (no space, permissions) are not caught: they mean something else
        reason = getattr(e, "reason", None) or e
        raise WeightsUnavailableError(f"{name}: could not download {record.url} ({reason}); download it by hand "
                                      f"and place it at {path}") from None
    log.info("downloaded %s to %s", record.url, path)
    return path


def _download_verified(record: PretrainedWeights, path: Path, *, progress: bool, timeout: float) -> None:
    """Download `record.url` to `path`, kept only if its sha256 matches the record."""
    def verify(actual: str) -> None:
        if not _hash_matches(record, actual):
            raise ChecksumError(f"{record.name}: download from {record.url} has sha256 {actual}, expected "
                                f"{_expected(record)}; the file was deleted")

    download_verified(record.url, path, "sha256", verify, timeout=timeout, progress=progress)


# -------------------------------------------------------------------------------------------------- records
_TV_DOCS = "torchvision/models/resnet.py weight enums (torchvision model docs table)"
_TV_RECIPE = "https://github.com/pytorch/vision/tree/main/references/classification#resnet"
_TV_RECIPE_V2 = "https://github.com/pytorch/vision/issues/3995#new-recipe"
_TV_BASE = "https://download.pytorch.org/models/"
_TIMM_TABLE = "timm model card table / results-imagenet.csv (timm test size)"


def _tv(name: str, file: str, top1: float, top5: float, *, v2: bool = False, recipe: str = "") -> PretrainedWeights:
    """A torchvision record; the hash prefix is the file name's suffix. v2 weights are evaluated at 232 -> 224."""
    return PretrainedWeights(
        name=name, url=_TV_BASE + file, license="BSD-3-Clause (torchvision)", top1=top1, top5=top5,
        accuracy_source=_TV_DOCS, sha256_prefix=file.rsplit("-", 1)[1].split(".")[0],
        recipe=recipe or (_TV_RECIPE_V2 if v2 else _TV_RECIPE), preprocess=Preprocess(resize=232 if v2 else 256))


for _record in (
    _tv("resnet18.tv_in1k", "resnet18-f37072fd.pth", 69.758, 89.078),
    _tv("resnet34.tv_in1k", "resnet34-b627a593.pth", 73.314, 91.420),
    _tv("resnet50.tv_in1k", "resnet50-0676ba61.pth", 76.130, 92.862),
    _tv("resnet50.tv2_in1k", "resnet50-11ad3fa6.pth", 80.858, 95.434, v2=True,
        recipe="https://github.com/pytorch/vision/issues/3995#issuecomment-1013906621"),
    _tv("resnet101.tv_in1k", "resnet101-63fe2227.pth", 77.374, 93.546),
    _tv("resnet101.tv2_in1k", "resnet101-cd907fc2.pth", 81.886, 95.780, v2=True),
    _tv("resnet152.tv_in1k", "resnet152-394f9c45.pth", 78.312, 94.046),
    _tv("resnet152.tv2_in1k", "resnet152-f82ba261.pth", 82.284, 96.002, v2=True),
    _tv("wide_resnet50_2.tv_in1k", "wide_resnet50_2-95faca4d.pth", 78.468, 94.086,
        recipe="https://github.com/pytorch/vision/pull/912#issue-445437439"),
    _tv("wide_resnet50_2.tv2_in1k", "wide_resnet50_2-9ba9bcbe.pth", 81.602, 95.758, v2=True,
        recipe="https://github.com/pytorch/vision/issues/3995#new-recipe-with-fixres"),
    _tv("wide_resnet101_2.tv_in1k", "wide_resnet101_2-32ee1156.pth", 78.848, 94.284,
        recipe="https://github.com/pytorch/vision/pull/912#issue-445437439"),
    _tv("wide_resnet101_2.tv2_in1k", "wide_resnet101_2-d733dc28.pth", 82.510, 96.020, v2=True),
    _tv("resnext50_32x4d.tv_in1k", "resnext50_32x4d-7cdf4587.pth", 77.618, 93.698,
        recipe="https://github.com/pytorch/vision/tree/main/references/classification#resnext"),
    _tv("resnext50_32x4d.tv2_in1k", "resnext50_32x4d-1a0047aa.pth", 81.198, 95.340, v2=True),
    _tv("resnext101_32x8d.tv_in1k", "resnext101_32x8d-8ba56ff5.pth", 79.312, 94.526,
        recipe="https://github.com/pytorch/vision/tree/main/references/classification#resnext"),
    _tv("resnext101_32x8d.tv2_in1k", "resnext101_32x8d-110c445d.pth", 82.834, 96.228, v2=True,
        recipe="https://github.com/pytorch/vision/issues/3995#new-recipe-with-fixres"),
    # torchvision's only ResNeXt-101 64x4d weights (IMAGENET1K_V1) were trained with the new recipe: 232 -> 224
    _tv("resnext101_64x4d.tv_in1k", "resnext101_64x4d-173b62eb.pth", 83.246, 96.454, v2=True,
        recipe="https://github.com/pytorch/vision/pull/5935"),
    # timm "ResNet strikes back" A1 (Wightman et al. 2021, arXiv:2110.00476): 600 epochs, LAMB, BCE loss.
    # Evaluated at timm's test size: 288 px, crop_pct 1.0, bicubic (80.38 / 94.6 at 224 px, crop_pct 0.95).
    PretrainedWeights(
        name="resnet50.a1_in1k", license="Apache-2.0 (timm model card)",
        url="https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"
            "resnet50_a1_0-14fe96d1.pth",
        top1=81.22, top5=95.11, accuracy_source=_TIMM_TABLE, sha256_prefix="14fe96d1",
        recipe="https://arxiv.org/abs/2110.00476",
        preprocess=Preprocess(resize=288, crop_size=288, interpolation="bicubic")),
    # timm ResNet-50-D, RandAugment recipe "ra2"; test size 288 px at crop_pct 0.95 -> shorter side 303.
    PretrainedWeights(
        name="resnet50d.ra2_in1k", license="Apache-2.0 (timm model card)",
        url="https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
            "resnet50d_ra2-464e36ba.pth",
        top1=81.37, top5=95.74, accuracy_source=_TIMM_TABLE, sha256_prefix="464e36ba",
        recipe="https://github.com/huggingface/pytorch-image-models",
        preprocess=Preprocess(resize=303, crop_size=288, interpolation="bicubic")),
):
    register_pretrained(_record)


# mmcls/mmpretrain (OpenMMLab) ImageNet-1k ResNets, the models of mmpretrain's ResNet page. Their checkpoints hold
# an ImageClassifier's `backbone.` / `head.fc.` keys (and ResNetV1c/V1d's `backbone.stem.*`), which load_pretrained
# maps (weights.py; tested on the key lists in tests/data/mmpretrain/). ResNetV1c is deepres's ResNet-C (deep
# stem), ResNetV1d its ResNet-D (deep stem + avg-pool shortcut). Evaluation (configs/_base_/datasets/):
# imagenet_bs32.py (ResNet-18..152): shorter side 256 -> centre 224, bilinear with OpenCV, which does not antialias
# (deepres's bilinear does; the effect on top-1 is not measured here); imagenet_bs32_pil_resize.py
# (V1c, V1d): the same with Pillow's bilinear; imagenet_bs256_rsb_a12.py / _a3.py (rsb): shorter side 236 -> 224,
# Pillow bicubic. All normalise with mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) on 0-255 RGB,
# which is the ImageNet mean/std of Preprocess on the 0-1 scale (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).
_MMCLS_TABLE = "mmpretrain configs/resnet/metafile.yml (mmpretrain ResNet README table)"
_MMCLS_BASE = "https://download.openmmlab.com/mmclassification/v0/resnet/"
_MMCLS_CONFIGS = "https://github.com/open-mmlab/mmpretrain/blob/main/configs/resnet/"


def _mmcls(name: str, file: str, top1: float, top5: float, config: str,
           preprocess: Preprocess = Preprocess()) -> PretrainedWeights:
    """An mmcls/mmpretrain record; the hash prefix is the file name's suffix, the recipe its config."""
    return PretrainedWeights(
        name=name, url=_MMCLS_BASE + file, license="Apache-2.0 (mmpretrain)", top1=top1, top5=top5,
        accuracy_source=_MMCLS_TABLE, sha256_prefix=file.rsplit("-", 1)[1].split(".")[0],
        recipe=_MMCLS_CONFIGS + config + ".py", preprocess=preprocess)


_RSB_EVAL = Preprocess(resize=236, crop_size=224, interpolation="bicubic")
for _record in (
    _mmcls("resnet18.mmcls_in1k", "resnet18_8xb32_in1k_20210831-fbbb1da6.pth", 69.90, 89.43, "resnet18_8xb32_in1k"),
    _mmcls("resnet34.mmcls_in1k", "resnet34_8xb32_in1k_20210831-f257d4e6.pth", 73.62, 91.59, "resnet34_8xb32_in1k"),
    _mmcls("resnet50.mmcls_in1k", "resnet50_8xb32_in1k_20210831-ea4938fc.pth", 76.55, 93.06, "resnet50_8xb32_in1k"),
    _mmcls("resnet101.mmcls_in1k", "resnet101_8xb32_in1k_20210831-539c63f8.pth", 77.97, 94.06,
           "resnet101_8xb32_in1k"),
    _mmcls("resnet152.mmcls_in1k", "resnet152_8xb32_in1k_20210901-4d7582fa.pth", 78.48, 94.13,
           "resnet152_8xb32_in1k"),
    _mmcls("resnet50c.mmcls_in1k", "resnetv1c50_8xb32_in1k_20220214-3343eccd.pth", 77.01, 93.58,
           "resnetv1c50_8xb32_in1k"),
    _mmcls("resnet101c.mmcls_in1k", "resnetv1c101_8xb32_in1k_20220214-434fe45f.pth", 78.30, 94.27,
           "resnetv1c101_8xb32_in1k"),
    _mmcls("resnet152c.mmcls_in1k", "resnetv1c152_8xb32_in1k_20220214-c013291f.pth", 78.76, 94.41,
           "resnetv1c152_8xb32_in1k"),
    _mmcls("resnet50d.mmcls_in1k", "resnetv1d50_b32x8_imagenet_20210531-db14775a.pth", 77.54, 93.57,
           "resnetv1d50_8xb32_in1k"),
    _mmcls("resnet101d.mmcls_in1k", "resnetv1d101_b32x8_imagenet_20210531-6e13bcd3.pth", 78.93, 94.48,
           "resnetv1d101_8xb32_in1k"),
    _mmcls("resnet152d.mmcls_in1k", "resnetv1d152_b32x8_imagenet_20210531-278cf22a.pth", 79.41, 94.70,
           "resnetv1d152_8xb32_in1k"),
    # "ResNet strikes back" (arXiv:2110.00476) recipes reproduced in mmcls: LAMB, BCE loss, A1 600 / A2 300 / A3 100
    # epochs, trained and evaluated at 224 px (mmcls's A3 config trains at 224, not the paper's 160).
    _mmcls("resnet50.mmcls_rsb_a1_in1k", "resnet50_8xb256-rsb-a1-600e_in1k_20211228-20e21305.pth", 80.12, 94.78,
           "resnet50_8xb256-rsb-a1-600e_in1k", _RSB_EVAL),
    _mmcls("resnet50.mmcls_rsb_a2_in1k", "resnet50_8xb256-rsb-a2-300e_in1k_20211228-0fd8be6e.pth", 79.55, 94.37,
           "resnet50_8xb256-rsb-a2-300e_in1k", _RSB_EVAL),
    _mmcls("resnet50.mmcls_rsb_a3_in1k", "resnet50_8xb256-rsb-a3-100e_in1k_20211228-3493673c.pth", 78.30, 93.80,
           "resnet50_8xb256-rsb-a3-100e_in1k", _RSB_EVAL),
):
    register_pretrained(_record)


# mmcls's CIFAR ResNets (ResNet_CIFAR: the ImageNet stages behind a 3x3 stride-1 stem, deepres's cifar_resnet*),
# 200 epochs. Top-1 from metafile.yml; top-5 from the tables of mmpretrain's ResNet README (metafile.yml gives no
# CIFAR-10 top-5). Evaluated on the 32x32 images as stored (cifar10_bs16.py / cifar100_bs16.py: no resize, no crop),
# normalised with each set's mean/std, given there on 0-255 RGB.
def _mmcls_cifar(name: str, file: str, top1: float, top5: float, config: str, classes: int,
                 mean_255: tuple[float, ...], std_255: tuple[float, ...]) -> PretrainedWeights:
    preprocess = Preprocess(resize=32, crop_size=32, mean=tuple(v / 255 for v in mean_255),
                            std=tuple(v / 255 for v in std_255))
    return replace(_mmcls(name, file, top1, top5, config, preprocess), categories=f"cifar-{classes}",
                   num_classes=classes)


_CIFAR10_MEAN_STD = (125.307, 122.961, 113.8575), (51.5865, 50.847, 51.255)  # cifar10_bs16.py, 0-255
_CIFAR100_MEAN_STD = (129.304, 124.070, 112.434), (68.170, 65.392, 70.418)  # cifar100_bs16.py, 0-255
for _record in (
    _mmcls_cifar("cifar_resnet18.mmcls_cifar10", "resnet18_b16x8_cifar10_20210528-bd6371c8.pth", 94.82, 99.87,
                 "resnet18_8xb16_cifar10", 10, *_CIFAR10_MEAN_STD),
    _mmcls_cifar("cifar_resnet34.mmcls_cifar10", "resnet34_b16x8_cifar10_20210528-a8aa36a6.pth", 95.34, 99.87,
                 "resnet34_8xb16_cifar10", 10, *_CIFAR10_MEAN_STD),
    _mmcls_cifar("cifar_resnet50.mmcls_cifar10", "resnet50_b16x8_cifar10_20210528-f54bfad9.pth", 95.55, 99.91,
                 "resnet50_8xb16_cifar10", 10, *_CIFAR10_MEAN_STD),
    _mmcls_cifar("cifar_resnet101.mmcls_cifar10", "resnet101_b16x8_cifar10_20210528-2d29e936.pth", 95.58, 99.87,
                 "resnet101_8xb16_cifar10", 10, *_CIFAR10_MEAN_STD),
    _mmcls_cifar("cifar_resnet152.mmcls_cifar10", "resnet152_b16x8_cifar10_20210528-3e8e9178.pth", 95.76, 99.89,
                 "resnet152_8xb16_cifar10", 10, *_CIFAR10_MEAN_STD),
    _mmcls_cifar("cifar_resnet50.mmcls_cifar100", "resnet50_b16x8_cifar100_20210528-67b58a1b.pth", 79.90, 95.19,
                 "resnet50_8xb16_cifar100", 100, *_CIFAR100_MEAN_STD),
):
    register_pretrained(_record)


# torchvision's segmentation weights: trained on a COCO train2017 subset holding the 20 Pascal VOC categories
# (21 classes with background); mIoU / pixel accuracy on COCO val2017 with VOC labels, from the weight enums of
# torchvision/models/segmentation/{fcn,deeplabv3}.py. Their transform (SemanticSegmentation): shorter side
# resized to 520, bilinear, no crop, ImageNet mean/std. The checkpoints include the aux_classifier.
_TV_SEG_DOCS = "torchvision/models/segmentation weight enums (COCO-val2017-VOC-labels)"
_TV_SEG_RECIPE = "https://github.com/pytorch/vision/tree/main/references/segmentation"


def _tv_seg(name: str, file: str, miou: float, pixel_acc: float) -> PretrainedWeights:
    return PretrainedWeights(
        name=name, url=_TV_BASE + file, license="BSD-3-Clause (torchvision)", miou=miou, pixel_acc=pixel_acc,
        accuracy_source=_TV_SEG_DOCS, sha256_prefix=file.rsplit("-", 1)[1].split(".")[0], recipe=_TV_SEG_RECIPE,
        categories="voc-21", num_classes=21, preprocess=Preprocess(resize=520, crop_size=0))


for _record in (
    _tv_seg("fcn_resnet50.tv_coco_voc", "fcn_resnet50_coco-1167a1af.pth", 60.5, 91.4),
    _tv_seg("fcn_resnet101.tv_coco_voc", "fcn_resnet101_coco-7ecb50ca.pth", 63.7, 91.9),
    _tv_seg("deeplabv3_resnet50.tv_coco_voc", "deeplabv3_resnet50_coco-cd0a2569.pth", 66.4, 92.4),
    _tv_seg("deeplabv3_resnet101.tv_coco_voc", "deeplabv3_resnet101_coco-586e9e4e.pth", 67.4, 92.4),
):
    register_pretrained(_record)
del _record

