"""Fashion-MNIST scenes: a segmentation dataset made from real images (`deepres data make fashion-mnist-scenes`).

Each scene is a black canvas (64x64 by default) with 2-4 Fashion-MNIST items pasted at random positions and scales
(0.75-1.5x, so 21-42 px), later items occluding earlier ones. Its mask holds, per pixel, 0 for background or
1 + the garment class of the item whose non-zero pixels cover it: 11 classes. Train scenes use the training split
only, test scenes the test split only, each from its own fixed seed, so the same command writes the same files.

Layout written (a pair folder: an image and a mask with the same stem):
  OUT/classes.txt                      one class name per line, line i = mask value i
  OUT/{train,test}/images/NNNNNN.png   grayscale scenes
  OUT/{train,test}/masks/NNNNNN.png    uint8 class indices (PNG mode L)
"""
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from deepres.core.files import atomic_write_text

from .augment import transforms as T
from .readers.formats import FASHION_MNIST_CLASSES, ArrayDataset, read_fashion_mnist

SCENE_CLASSES = ["background", *FASHION_MNIST_CLASSES]
SPLIT_SEEDS = {"train": 0, "test": 1}  # one generator per split: the two never share draws


def make_scene(items: ArrayDataset, rng: np.random.Generator, *, size: int = 64, min_items: int = 2,
               max_items: int = 4, scale: tuple[float, float] = (0.75, 1.5)) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask), both uint8 (size, size): items drawn from `items`, pasted in order (later ones on top)."""
    image = np.zeros((size, size), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(min_items, max_items + 1))):
        index = int(rng.integers(len(items)))
        item, label = items[index]
        side = max(1, round(item.shape[-1] * rng.uniform(*scale)))
        pixels = T.resize(item, (side, side))[0].numpy()  # (1, H, W) uint8 -> (H, W)
        top, left = (int(rng.integers(0, max(size - side, 0) + 1)) for _ in range(2))
        region = (slice(top, top + side), slice(left, left + side))
        cover = pixels[: size - top, : size - left] > 0  # the item's non-zero pixels (clipped at the border)
        image[region][cover] = pixels[: size - top, : size - left][cover]
        mask[region][cover] = 1 + int(label)
    return image, mask


def make_fashion_mnist_scenes(source, out, *, train: int = 50_000, test: int = 10_000, size: int = 64,
                              force: bool = False, progress: bool = True) -> Path:
    """Write `train` and `test` scenes from the Fashion-MNIST IDX files in `source` into `out`; returns `out`.

    An existing `out` holding scenes is replaced only with force=True; any other existing folder is refused."""
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
            image, mask = make_scene(items, rng, size=size)
            Image.fromarray(image, mode="L").save(out / split / "images" / f"{n:06d}.png")
            Image.fromarray(mask, mode="L").save(out / split / "masks" / f"{n:06d}.png")
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in SCENE_CLASSES))
    return out
