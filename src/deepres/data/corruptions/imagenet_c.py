"""ImageNet-C on disk (Hendrycks & Dietterich, ICLR 2019): <root>/<corruption>/<severity>/<wnid>/*.JPEG.

Every image is a 224x224 JPEG: an ImageNet val image resized to 256 and centre-cropped to 224, then corrupted.
Hendrycks' ImageNet-C/test.py evaluates them with a 224 centre crop and no resize. The Zenodo archives
(noise.tar, blur.tar, weather.tar, digital.tar, extra.tar) unpack to corruption folders at the top level; a tree
that keeps each archive in a folder of its own name (<root>/noise/gaussian_noise/1/...) is read too.
"""
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..augment import transforms as T
from ..readers.folders import ImageFileDataset, UnknownClassesError, image_folder, relabel
from .corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, corrupt  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# The Zenodo archive each corruption comes in; its name may be a folder level above the corruption folders.
CORRUPTION_GROUPS = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": EXTRA_CORRUPTIONS,
}
_KNOWN = CORRUPTIONS + EXTRA_CORRUPTIONS


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _corruption_dirs(root: Path) -> tuple[dict[str, Path], list[Path]]:
    """({corruption: its folder}, entries that are neither a corruption nor an archive-named folder of them)."""
    found: dict[str, Path] = {}
    unknown: list[Path] = []

    def add(name: str, path: Path) -> None:
        if name in found:
            raise ValueError(f"ImageNet-C corruption {name!r} is in two places: {found[name]} and {path}")
        found[name] = path

    for entry in _visible_entries(root):
        if entry.is_dir() and entry.name in _KNOWN:
            add(entry.name, entry)
        elif entry.is_dir() and entry.name in CORRUPTION_GROUPS:
            for inner in _visible_entries(entry):
                if inner.is_dir() and inner.name in _KNOWN:
                    add(inner.name, inner)
                else:
                    unknown.append(inner)
        else:
            unknown.append(entry)
    return found, unknown


def _severities(corruption_dir: Path) -> tuple[list[int], list[Path]]:
    """(severity folders 1..5 present, other entries) of one corruption folder."""
    present, unknown = [], []
    for entry in _visible_entries(corruption_dir):
        if entry.is_dir() and entry.name in {str(s) for s in SEVERITIES}:
            present.append(int(entry.name))
        else:
            unknown.append(entry)
    return sorted(present), unknown


def imagenet_c_contents(root) -> dict[str, list[int]]:
    """{corruption: the severities present} under `root`, corruptions in Hendrycks' order (the 15, then the 4
    extra). Entries that are no ImageNet-C corruption or severity are left out and named in a warning."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet-C folder not found: {root}")
    found, unknown = _corruption_dirs(root)
    contents = {}
    for name in _KNOWN:
        if name in found:
            severities, strays = _severities(found[name])
            unknown += strays
            if severities:
                contents[name] = severities
    if unknown:
        log.warning("ignoring %d entries under %s that are no ImageNet-C corruption/severity folder: %s", len(unknown),
                    root, ", ".join(str(p.relative_to(root)) for p in unknown[:10]))
    if not contents:
        raise FileNotFoundError(f"no ImageNet-C corruption folders under {root} (expected e.g. "
                                f"{root / CORRUPTIONS[0] / '1' / 'n01440764'}/*.JPEG)")
    return contents


def class_folder(name: str) -> str:
    """The folder a class's images go in: its name, with path separators replaced ("T-shirt/top" -> "T-shirt_top")."""
    return name.replace("/", "_").replace(os.sep, "_")


def imagenet_c_dataset(root, corruption: str, severity: int, classes: list[str], **options) -> ImageFileDataset:
    """The images of one corruption at one severity, labels indexing `classes` (the model's class list, e.g. the
    1000 sorted ImageNet synsets). A folder may hold a subset of the classes; a class folder not in `classes` is
    an error naming it. `options` go to ImageFileDataset (on_bad_image, max_pixels, ...)."""
    if corruption not in _KNOWN:
        raise ValueError(f"unknown ImageNet-C corruption {corruption!r}; expected one of {', '.join(_KNOWN)}")
    if severity not in SEVERITIES:
        raise ValueError(f"ImageNet-C severity must be one of {SEVERITIES}, got {severity!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet-C folder not found: {root}")
    found, _ = _corruption_dirs(root)
    if corruption not in found:
        raise FileNotFoundError(f"ImageNet-C corruption folder {root / corruption} not found")
    folder = found[corruption] / str(severity)
    if not folder.is_dir():
        present = _severities(found[corruption])[0]
        raise FileNotFoundError(f"ImageNet-C severity folder {folder} not found (severities present: "
                                f"{', '.join(map(str, present)) or 'none'})")
    dataset = image_folder(folder, class_depth=1, **options)
    try:  # folders are named class_folder(class): a class name may hold a "/"
        dataset = relabel(dataset, [class_folder(name) for name in classes])
        return ImageFileDataset(dataset.samples, classes, **dataset._options())
    except UnknownClassesError as e:
        raise ValueError(f"ImageNet-C class folder {folder / e.unknown[0]} is not among the model's "
                         f"{len(classes)} classes ({len(e.unknown)} unknown in all)") from None


JPEG_QUALITY = 85  # Hendrycks' make_imagenet_c.py saves every corrupted image at this quality


def write_imagenet_c(dataset, out, corruptions, severities, *, resize: int = 0, crop: int = 0, seed: int = 0,
                     scale: str = "auto", quality: int = JPEG_QUALITY, batch_size: int = 64,
                     progress: bool = True) -> int:
    """Write `dataset` (any deepres dataset: uint8 images, class names) corrupted, in the ImageNet-C layout
    OUT/<corruption>/<severity>/<class folder>/<name>.JPEG. Each image is first resized (shorter side `resize`)
    and centre-cropped to `crop` when they are set (Hendrycks: 256 and 224 for ImageNet), then corrupted with
    corrupt() seeded by its dataset index, so the copy equals what `deepres robustness` evaluates on the fly up
    to the JPEG step. OUT must not exist; it is written as OUT.partial and renamed when complete. Returns the
    number of files written."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder (nothing is written over)")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # a copy an earlier call left half-written
    samples = getattr(dataset, "samples", None)
    names = [Path(path).stem for path, _ in samples] if samples is not None else [f"{i:08d}" for i in
                                                                                   range(len(dataset))]
    written = 0
    bar = tqdm(total=len(dataset) * len(corruptions) * len(severities), disable=not progress, unit="img")
    for start in range(0, len(dataset), batch_size):
        index = list(range(start, min(start + batch_size, len(dataset))))
        items = [dataset[i] for i in index]
        images = [image for image, _ in items]
        if resize or crop:
            images = [T.resize_center_crop(image, resize or crop, crop or resize) for image in images]
        if len({tuple(image.shape) for image in images}) > 1:
            raise ValueError("images of different sizes: set a centre crop (--crop) so they share one")
        batch = torch.stack(images)
        for corruption in corruptions:
            for severity in severities:
                corrupted = corrupt(batch, corruption, severity, seed=seed, indices=index, scale=scale)
                for i, image, (_, label) in zip(index, corrupted, items):
                    folder = partial / corruption / str(severity) / class_folder(dataset.classes[label])
                    folder.mkdir(parents=True, exist_ok=True)
                    array = image.permute(1, 2, 0).cpu().numpy()
                    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array)).save(
                        folder / f"{names[i]}.JPEG", quality=quality)
                    written += 1
                bar.update(len(index))
    bar.close()
    partial.rename(out)
    return written
