"""Segmentation datasets: image files paired with class-index masks, read in each dataset's own layout.

Every reader returns a SegmentationDataset: a sorted list of (image path, mask path) plus the class names and the
lookup table that turns stored mask values into class indices. Item i is (uint8 image (3, H, W), uint8 mask
(H, W)), the mask holding class indices 0..num_classes-1 and 255 = ignore, at the image's stored size.

Layouts, relative to the root each reader takes:
- pairs (`deepres data make fashion-mnist-scenes`): classes.txt, {split}/images/<stem>.png|jpg and
  {split}/masks/<stem>.png with the same stems; masks hold the class indices (L or P PNGs).
- voc (VOCdevkit/VOC2012): JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette indices, 255 borders),
  ImageSets/Segmentation/<split>.txt. train_aug: VOC train | SBD train | SBD val, minus VOC val (10,582 ids),
  the SBD masks read from benchmark_RELEASE/dataset/cls/<id>.mat (GTcls.Segmentation) where VOC has no PNG.
- cityscapes: leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png with gtFine/<split>/<city>/<stem>_gtFine_labelIds
  .png (train_extra: gtCoarse/train_extra/.../<stem>_gtCoarse_labelIds.png); label ids mapped to the 19 train ids.
  Beside each gtFine labelIds file, <stem>_gtFine_instanceIds.png (16-bit: label id * 1000 + instance number, or a
  label id below 1000 where a region has no instance) is read only by evaluation (`with_instances`), for iIoU.
- ade20k (ADEChallengeData2016): images/{training,validation}/<stem>.jpg, annotations/.../<stem>.png (0..150,
  reduced here, once, to 0..149 with 0 -> 255); class names from objectInfo150.txt when present.
"""
from pathlib import Path

import numpy as np
import torch

from ..images import BadImageError, is_image_file, load_image, open_image, pil_to_tensor
from .folders import ImageFileDataset
from .matfiles import MatFileError, load_mat
from .seg_labels import (ADE20K_CLASSES, ADE_REDUCE_ZERO, CITYSCAPES_CLASSES, CITYSCAPES_LABELS, CITYSCAPES_MASK_TABLE,
                         IGNORE_INDEX, NOT_STORED, VOC_CLASSES, read_ade_class_names, read_mask_png)

FINE_LABEL_IDS, FINE_INSTANCE_IDS = "_gtFine_labelIds.png", "_gtFine_instanceIds.png"
INSTANCE_MODES = ("I;16", "I;16B", "I;16L", "I", "L")  # how Pillow opens a 16-bit (or 8/32-bit) gray instanceIds PNG
MAX_LABEL_ID = max(label_id for label_id, _, _ in CITYSCAPES_LABELS)


class SegmentationDataset(ImageFileDataset):
    """Image and mask files decoded on access; item i is (uint8 image (3, H, W), uint8 mask (H, W)).

    samples: (image path, mask path) pairs; a mask path ending in .mat is an SBD GTcls file, any other a PNG.
    mask_table: stored mask value -> class index (256 entries; NOT_STORED for a value the dataset's masks never
    hold), None when stored values are the indices. Bad images (and undecodable masks) follow on_bad_image like an
    ImageFileDataset's; a mask value that is no class index (or NOT_STORED), or a mask whose size differs from its
    image's, is a ValueError naming the file and the value as stored.

    instances (with_instances; evaluation only): item i's mask is int32 (2, H, W), the class indices and the
    Cityscapes instanceIds map of the image."""

    def __init__(self, samples: list[tuple[str, str]], classes, *, mask_table: np.ndarray | None = None,
                 instances: bool = False, **options):
        super().__init__(samples, classes, **options)
        self.mask_table = mask_table
        self.instances = instances

    @property
    def image_paths(self) -> list[str]:
        return [image for image, _ in self.samples]

    @property
    def mask_paths(self) -> list[str]:
        return [mask for _, mask in self.samples]

    @property
    def targets(self) -> list[str]:
        return self.mask_paths  # a mask per image, not a class label

    def subset(self, n: int) -> "SegmentationDataset":
        """The first n samples (all if n <= 0)."""
        samples = self.samples[:n] if n > 0 else self.samples
        return SegmentationDataset(samples, self.classes, mask_table=self.mask_table, instances=self.instances,
                                   **self._options())

    def instance_paths(self) -> list[str] | None:
        """Each mask's Cityscapes instanceIds file (<stem>_gtFine_instanceIds.png beside <stem>_gtFine_labelIds.png,
        the file cityscapesScripts' evaluator reads), or None unless the masks are Cityscapes gtFine labelIds files
        read as the 19 train ids. The names only: whether the files exist is the caller's question."""
        masks = self.mask_paths
        if self.mask_table is not CITYSCAPES_MASK_TABLE or not all(mask.endswith(FINE_LABEL_IDS) for mask in masks):
            return None
        return [mask[:-len(FINE_LABEL_IDS)] + FINE_INSTANCE_IDS for mask in masks]

    def with_instances(self) -> "SegmentationDataset":
        """This dataset with each mask as int32 (2, H, W): class indices and the instanceIds map (read_instances)."""
        if self.instance_paths() is None:
            raise ValueError("only Cityscapes gtFine masks (*_gtFine_labelIds.png) have instanceIds files")
        return SegmentationDataset(self.samples, self.classes, mask_table=self.mask_table, instances=True,
                                   **self._options())

    def read_instances(self, index: int) -> np.ndarray:
        """Mask `index`'s Cityscapes instanceIds as int32 (H, W): label id * 1000 + instance number for an instance,
        a label id (< 1000) elsewhere. A value naming no label id is a ValueError naming the file."""
        paths = self.instance_paths()
        if paths is None:
            raise ValueError(f"{self.samples[index][1]} has no instanceIds file (only Cityscapes gtFine masks do)")
        path = paths[index]
        image = open_image(path, max_pixels=self.max_pixels)
        if image.mode not in INSTANCE_MODES:
            raise ValueError(f"{path}: an instanceIds map must be a 16-bit grayscale image, got mode {image.mode}")
        ids = np.array(image, dtype=np.int32)
        label_ids = np.where(ids >= 1000, ids // 1000, ids)
        if ids.size and (ids.min() < 0 or label_ids.max() > MAX_LABEL_ID):
            value = int(ids[(ids < 0) | (label_ids > MAX_LABEL_ID)][0])
            raise ValueError(f"{path}: instance id {value} names no label id (0..{MAX_LABEL_ID}, times 1000 plus an "
                             f"instance number)")
        return ids

    def read_mask(self, index: int) -> np.ndarray:
        """Mask `index` as class indices (H, W) uint8, checked against num_classes."""
        path = self.samples[index][1]
        mask = read_sbd_mask(path) if path.endswith(".mat") else read_mask_png(path, max_pixels=self.max_pixels)
        stored = np.unique(mask)
        table = self.mask_table
        classes = stored if table is None else table[stored]
        if table is not None and (classes == NOT_STORED).any():
            held = np.flatnonzero(table != NOT_STORED)
            raise ValueError(f"{path}: mask value {int(stored[classes == NOT_STORED][0])} is not one this dataset's "
                             f"masks hold ({held[0]}..{held[-1]})")
        wrong = (classes >= self.num_classes) & (classes != IGNORE_INDEX)
        if wrong.any():
            value, index = int(stored[wrong][0]), int(classes[wrong][0])
            mapped = "" if table is None else f" (class index {index})"
            raise ValueError(f"{path}: mask value {value}{mapped} is neither a class index (0..{self.num_classes - 1}"
                             f") nor {IGNORE_INDEX} (ignore)")
        return mask if table is None else table[mask].astype(np.uint8, copy=False)

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = pil_to_tensor(load_image(image_path, exif_rotate=self.exif_rotate, max_pixels=self.max_pixels))
        mask = self.read_mask(index)
        if tuple(image.shape[-2:]) != mask.shape:
            raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                             f"{image.shape[-1]}x{image.shape[-2]}")
        if not self.instances:
            return image, torch.from_numpy(mask)
        instances = self.read_instances(index)
        if instances.shape != mask.shape:
            raise ValueError(f"{self.instance_paths()[index]}: instanceIds map is {instances.shape[1]}x"
                             f"{instances.shape[0]} but its labelIds mask {mask_path} is {mask.shape[1]}x"
                             f"{mask.shape[0]}")
        return image, torch.from_numpy(np.stack([mask.astype(np.int32), instances]))


def read_sbd_mask(path) -> np.ndarray:
    """GTcls.Segmentation of an SBD cls/<id>.mat file: uint8 (H, W) VOC class indices. A file that does not read is
    a BadImageError (on_bad_image applies); a value no uint8 holds (256, -1, 1.5: astype would wrap 256 to
    background and -1 to ignore) a ValueError naming the file and the field."""
    try:
        # squeeze_me: 1x1 MATLAB structs and cells become scalars; struct_as_record=False: fields as attributes
        gtcls = load_mat(path, squeeze_me=True, struct_as_record=False, variable_names=["GTcls"]).get("GTcls")
    except MatFileError as e:
        raise BadImageError(path, e.reason) from None
    segmentation = getattr(gtcls, "Segmentation", None)
    if segmentation is None or np.ndim(segmentation) != 2:
        raise ValueError(f"{path}: expected a struct GTcls with a 2-D field Segmentation (SBD cls/*.mat)")
    segmentation = np.asarray(segmentation)
    if segmentation.dtype.kind not in "biuf":
        raise ValueError(f"{path}: GTcls.Segmentation holds {segmentation.dtype} values, not class indices")
    if segmentation.dtype != np.uint8 and segmentation.size:
        bad = ~np.isin(segmentation, np.arange(256))  # fractions, NaN and values outside 0..255
        if bad.any():
            raise ValueError(f"{path}: GTcls.Segmentation holds {segmentation[bad][0].item()}, not a mask value "
                             f"0..255 (VOC classes 0..{len(VOC_CLASSES) - 1}, {IGNORE_INDEX} ignore)")
    return segmentation.astype(np.uint8)


# ----------------------------------------------------------------------------------------------- helpers
def not_found(message: str, path: Path) -> FileNotFoundError:
    """A FileNotFoundError saying `message`, with the missing path as its .missing_path (for a caller that names the
    split folders that do exist; .filename would change the message)."""
    error = FileNotFoundError(message)
    error.missing_path = str(path)
    return error


def _stems(folder: Path, keep) -> dict[str, Path]:
    """stem -> file for the visible files of `folder` that `keep(name)`; a stem twice is an error."""
    if not folder.is_dir():
        raise not_found(f"folder not found: {folder}", folder)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not keep(path.name):
            continue
        if path.stem in found:
            raise ValueError(f"{folder}: two files for {path.stem!r} ({found[path.stem].name}, {path.name})")
        found[path.stem] = path
    return found


def _matched(images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path) -> list[tuple]:
    """(image, mask) path pairs by stem, sorted; stems on one side only are an error naming both folders."""
    lone_images, lone_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if lone_images or lone_masks:
        raise ValueError(f"{image_dir} and {mask_dir} do not pair up: {len(lone_images)} images without a mask "
                         f"(e.g. {lone_images[:3]}), {len(lone_masks)} masks without an image (e.g. {lone_masks[:3]})")
    if not images:
        raise FileNotFoundError(f"no image files in {image_dir}")
    return [(str(images[stem]), str(masks[stem])) for stem in sorted(images)]


def _is_png(name: str) -> bool:
    return name.lower().endswith(".png")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None


def _read_ids(path: Path) -> list[str]:
    """The ids of a VOC / SBD split list, one per line; an id names files (JPEGImages/<id>.jpg), so one that is
    a path ('/', '..') is refused: it would send the reader outside the dataset."""
    if not path.is_file():
        raise not_found(f"split list not found: {path}", path)
    ids = []
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if "/" in image_id or "\\" in image_id or "\0" in image_id or image_id in (".", ".."):
            raise ValueError(f"{path}:{line_no}: image id {image_id!r} is not a file name (ids name "
                             f"JPEGImages/<id>.jpg; no '/' or '..')")
        ids.append(image_id)
    return ids


# ----------------------------------------------------------------------------------------------- readers
def read_pair_classes(path) -> list[str]:
    """A pairs folder's class names: one per line, the whole line ("Ankle boot"), line i naming mask value i."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file {path} not found (pairs: set data.class_names)")
    names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def pairs_dataset(split_dir, classes: list[str], **options) -> SegmentationDataset:
    """split_dir/images/<stem>.{png,jpg,..} with split_dir/masks/<stem>.png holding indices into `classes`."""
    split_dir = Path(split_dir)
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    samples = _matched(_stems(image_dir, is_image_file), _stems(mask_dir, _is_png), image_dir, mask_dir)
    return SegmentationDataset(samples, classes, **options)


def voc_root(root) -> Path:
    """The VOC2012 folder: root itself, root/VOC2012 or root/VOCdevkit/VOC2012 (the one holding JPEGImages)."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"no VOC2012 folder (with JPEGImages/) at {root}, {root / 'VOC2012'} or "
                            f"{root / 'VOCdevkit' / 'VOC2012'}")


def voc_train_aug_ids(voc: Path, sbd: Path) -> tuple[list[str], set[str]]:
    """(sorted train_aug ids, those with a VOC PNG): VOC train | SBD train | SBD val, minus VOC val."""
    voc_lists = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = set(_read_ids(voc_lists / "train.txt")), set(_read_ids(voc_lists / "val.txt"))
    sbd_ids = set(_read_ids(sbd / "dataset" / "train.txt")) | set(_read_ids(sbd / "dataset" / "val.txt"))
    return sorted((voc_train | sbd_ids) - voc_val), voc_train


def voc_dataset(root, split: str, *, sbd_root=None, **options) -> SegmentationDataset:
    """PASCAL VOC 2012 segmentation; split names a list in ImageSets/Segmentation, or "train_aug" (with
    sbd_root, SBD's benchmark_RELEASE folder). Nothing is written into either folder."""
    voc = voc_root(root)
    if split == "train_aug":
        if sbd_root is None:
            raise ValueError("voc train_split=train_aug needs data.sbd_root (SBD's benchmark_RELEASE folder)")
        sbd = Path(sbd_root)
        if not (sbd / "dataset" / "cls").is_dir():
            raise FileNotFoundError(f"data.sbd_root {sbd} holds no dataset/cls/ (expected benchmark_RELEASE)")
        ids, with_png = voc_train_aug_ids(voc, sbd)
        masks = [voc / "SegmentationClass" / f"{i}.png" if i in with_png else sbd / "dataset" / "cls" / f"{i}.mat"
                 for i in ids]
    else:
        ids = _read_ids(voc / "ImageSets" / "Segmentation" / f"{split}.txt")
        masks = [voc / "SegmentationClass" / f"{i}.png" for i in ids]
    if not ids:
        raise ValueError(f"VOC split {split!r} lists no images")
    samples = [(str(voc / "JPEGImages" / f"{i}.jpg"), str(mask)) for i, mask in zip(ids, masks)]
    return SegmentationDataset(samples, list(VOC_CLASSES), **options)


def cityscapes_dataset(root, split: str, **options) -> SegmentationDataset:
    """Cityscapes fine annotations of `split` (train, val, test), or the coarse ones of train_extra; label ids
    are mapped to the 19 train ids."""
    root = Path(root)
    annotation = "gtCoarse" if split == "train_extra" else "gtFine"
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise not_found(f"Cityscapes image folder not found: {image_dir}", image_dir)
    samples = []
    for city in sorted(d for d in image_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for image in sorted(city.glob("*_leftImg8bit.png")):
            stem = image.name[:-len("_leftImg8bit.png")]
            mask = root / annotation / split / city.name / f"{stem}_{annotation}_labelIds.png"
            if not mask.is_file():
                raise FileNotFoundError(f"{image} has no annotation {mask}")
            samples.append((str(image), str(mask)))
    if not samples:
        raise FileNotFoundError(f"no *_leftImg8bit.png files in the city folders of {image_dir}")
    return SegmentationDataset(samples, list(CITYSCAPES_CLASSES), mask_table=CITYSCAPES_MASK_TABLE, **options)


ADE_SPLITS = {"train": "training", "val": "validation"}  # deepres' split words -> ADEChallengeData2016's folders


def ade20k_class_names(root) -> list[str]:
    """The 150 names of root/objectInfo150.txt when present, else the built-in list (same order)."""
    info = Path(root) / "objectInfo150.txt"
    return read_ade_class_names(info) if info.is_file() else list(ADE20K_CLASSES)


def ade20k_dataset(root, split: str, **options) -> SegmentationDataset:
    """ADE20K SceneParsing: split "training"/"validation" (or "train"/"val"); annotation value 0 ("other") is
    ignored and 1..150 become classes 0..149 (applied here, once)."""
    root = Path(root)
    folder = ADE_SPLITS.get(split, split)
    image_dir, mask_dir = root / "images" / folder, root / "annotations" / folder
    samples = _matched(_stems(image_dir, is_image_file), _stems(mask_dir, _is_png), image_dir, mask_dir)
    return SegmentationDataset(samples, ade20k_class_names(root), mask_table=ADE_REDUCE_ZERO, **options)
