"""Fashion-MNIST scenes: a segmentation dataset made from real images (`deepres data make fashion-mnist-scenes`).

Each scene is a black canvas (64x64 by default) with 2-4 Fashion-MNIST items pasted at random positions and scales
(0.75-1.5x, so 21-42 px), later items occluding earlier ones. Its mask holds, per pixel, 0 for background or
1 + the garment class of the item on top there: 11 classes. Train scenes use the training split only, test scenes
the test split only, each from its own fixed seed, so the same command writes the same files.

Two generator versions, drawing the same items at the same places (one seed, the same draws):
  2 (default)  an item covers its filled silhouette: pixels > SILHOUETTE_THRESHOLD, 1-pixel gaps closed, holes
               filled (a sandal's straps with the space between them, a dark print inside a shirt); the image
               there is the item's, dark interior pixels included, so image and mask agree
  1            an item covers its non-zero pixels only (sandals and dark regions are background with holes); kept
               bit for bit: the scenes the README's first results were measured on

Layout written (a pair folder: an image and a mask with the same stem):
  OUT/classes.txt                      one class name per line, line i = mask value i
  OUT/scenes.json                      the generator version and counts; a folder without it is version 1
  OUT/{train,test}/images/NNNNNN.png   grayscale scenes
  OUT/{train,test}/masks/NNNNNN.png    uint8 class indices (PNG mode L)
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from deepres.core.files import atomic_write_text

from .augment import transforms as T
from .readers.formats import FASHION_MNIST_CLASSES, ArrayDataset, read_fashion_mnist

SCENE_CLASSES = ["background", *FASHION_MNIST_CLASSES]
SPLIT_SEEDS = {"train": 0, "test": 1}  # one generator per split: the two never share draws
SCENES_VERSIONS = (1, 2)
SCENES_VERSION = 2  # what `deepres data make fashion-mnist-scenes` writes unless --scenes-version says otherwise
RECORD_FILE = "scenes.json"
# Fashion-MNIST's backgrounds carry faint noise (1-10 of 255) around many items: `> 0` gave speckled silhouettes,
# `> 10` clean ones on the sandals, bags, shirts and boots looked at (resized to 21 and 42 px).
SILHOUETTE_THRESHOLD = 10
_CLOSING = np.ones((3, 3), bool)  # bridges 1-pixel gaps, e.g. between a sandal's straps


def silhouette(pixels: np.ndarray) -> np.ndarray:
    """The filled silhouette (bool, same shape) of one item's uint8 pixels: version 2's cover."""
    shape = pixels > SILHOUETTE_THRESHOLD
    shape |= ndimage.binary_closing(shape, _CLOSING)  # the OR keeps pixels on the array border that closing erodes
    return ndimage.binary_fill_holes(shape)


def read_scenes_version(root) -> int:
    """The generator version of a scenes folder: its scenes.json's, or 1 for a folder written before the record."""
    path = Path(root) / RECORD_FILE
    if not path.is_file():
        return 1
    try:
        version = json.loads(path.read_text())["scenes_version"]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
        raise ValueError(f"{path}: not a scenes record (JSON with a scenes_version)") from None
    if version not in SCENES_VERSIONS:
        raise ValueError(f"{path}: scenes_version {version!r} is not one of {SCENES_VERSIONS}")
    return version


def make_scene(items: ArrayDataset, rng: np.random.Generator, *, size: int = 64, min_items: int = 2,
               max_items: int = 4, scale: tuple[float, float] = (0.75, 1.5),
               version: int = SCENES_VERSION) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask), both uint8 (size, size): items drawn from `items`, pasted in order (later ones on top), each
    covering its filled silhouette (version 2) or its non-zero pixels (version 1)."""
    if version not in SCENES_VERSIONS:
        raise ValueError(f"scenes version must be one of {SCENES_VERSIONS}, got {version!r}")
    image = np.zeros((size, size), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(min_items, max_items + 1))):
        index = int(rng.integers(len(items)))
        item, label = items[index]
        side = max(1, round(item.shape[-1] * rng.uniform(*scale)))
        pixels = T.resize(item, (side, side))[0].numpy()  # (1, H, W) uint8 -> (H, W)
        top, left = (int(rng.integers(0, max(size - side, 0) + 1)) for _ in range(2))
        region = (slice(top, top + side), slice(left, left + side))
        cover = pixels > 0 if version == 1 else silhouette(pixels)
        cover = cover[: size - top, : size - left]  # clipped at the canvas border (after filling the whole item)
        image[region][cover] = pixels[: size - top, : size - left][cover]
        mask[region][cover] = 1 + int(label)
    return image, mask


def make_fashion_mnist_scenes(source, out, *, train: int = 50_000, test: int = 10_000, size: int = 64,
                              version: int = SCENES_VERSION, force: bool = False, progress: bool = True) -> Path:
    """Write `train` and `test` scenes of generator `version` from the Fashion-MNIST IDX files in `source` into
    `out`; returns `out`.

    An existing `out` holding scenes is replaced only with force=True; any other existing folder is refused."""
    if version not in SCENES_VERSIONS:
        raise ValueError(f"--scenes-version must be one of {', '.join(map(str, SCENES_VERSIONS))}, got {version}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force or not (out / "classes.txt").is_file():
            raise FileExistsError(f"{out} is not empty; choose another folder (or --force to rewrite a scenes "
                                  f"folder written before)")
    for split, count in (("train", train), ("test", test)):
        if count < 0:
            raise ValueError(f"--{split} must be >= 0 scenes, got {count}")
        items = read_fashion_mnist(source, split)
        rng = np.random.default_rng(SPLIT_SEEDS[split])
        for folder in ("images", "masks"):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        for n in tqdm(range(count), desc=f"{split} scenes", unit="scene", disable=not progress):
            image, mask = make_scene(items, rng, size=size, version=version)
            Image.fromarray(image, mode="L").save(out / split / "images" / f"{n:06d}.png")
            Image.fromarray(mask, mode="L").save(out / split / "masks" / f"{n:06d}.png")
    record = {"generator": "deepres data make fashion-mnist-scenes", "scenes_version": version, "size": size,
              "train": train, "test": test}
    atomic_write_text(out / RECORD_FILE, json.dumps(record, indent=1) + "\n")
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in SCENE_CLASSES))
    return out
