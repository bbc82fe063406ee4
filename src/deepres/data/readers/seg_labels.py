"""Label tables and colour palettes of the segmentation datasets, and class-index mask PNGs.

Masks are uint8 class indices, 255 = ignore. The tables here are data:
- VOC: 21 classes (background + 20) and the VOC colour map (each index's bits interleaved into R, G, B: the
  palette of VOC's own SegmentationClass PNGs, 255 = the (224, 224, 192) border colour).
- Cityscapes: the official labels table (cityscapesScripts helpers/labels.py: 34 label ids + license plate -1),
  its 19 train classes and their colours; gtFine *_labelIds.png hold label ids, models see train ids.
- ADE20K (SceneParsing, ADEChallengeData2016): the 150 classes in objectInfo150.txt order, short names and
  palette as mmsegmentation lists them (mmseg/datasets/ade.py); annotation PNGs hold 0 = "other" and 1..150,
  which ade_reduce_zero turns into 255 and 0..149 (the reader applies it, once per mask).
"""
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepres.core.files import atomic_write

from ..images import DEFAULT_MAX_PIXELS, open_image

IGNORE_INDEX = 255  # mask value of pixels that are neither scored nor trained on
NOT_STORED = -1  # a reader's mask-table entry for a value the dataset's masks never hold: such a mask is refused

# ------------------------------------------------------------------------------------------------------ VOC
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap() -> np.ndarray:
    """(256, 3) uint8: the VOC palette; bit k of index i goes to bit 7 - k // 3 of R, G or B (k % 3)."""
    colours = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, rgb = index, [0, 0, 0]
        for shift in range(7, -1, -1):  # three bits per round, most significant output bit first
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colours[index] = rgb
    return colours


# ----------------------------------------------------------------------------------------------- Cityscapes
# (label id, name, train id), cityscapesScripts labels.py; train id 255: not trained or scored. License plate has
# no label id (-1) and is never written into a labelIds PNG.
CITYSCAPES_LABELS = (
    (0, "unlabeled", 255), (1, "ego vehicle", 255), (2, "rectification border", 255), (3, "out of roi", 255),
    (4, "static", 255), (5, "dynamic", 255), (6, "ground", 255), (7, "road", 0), (8, "sidewalk", 1),
    (9, "parking", 255), (10, "rail track", 255), (11, "building", 2), (12, "wall", 3), (13, "fence", 4),
    (14, "guard rail", 255), (15, "bridge", 255), (16, "tunnel", 255), (17, "pole", 5), (18, "polegroup", 255),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8), (22, "terrain", 9), (23, "sky", 10),
    (24, "person", 11), (25, "rider", 12), (26, "car", 13), (27, "truck", 14), (28, "bus", 15),
    (29, "caravan", 255), (30, "trailer", 255), (31, "train", 16), (32, "motorcycle", 17), (33, "bicycle", 18),
    (-1, "license plate", -1),
)
CITYSCAPES_CLASSES = tuple(name for _, name, train_id in CITYSCAPES_LABELS if 0 <= train_id < 255)
CITYSCAPES_COLORS = (  # train id order, as labels.py colours them
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def _cityscapes_tables() -> tuple[np.ndarray, np.ndarray]:
    to_train = np.full(256, IGNORE_INDEX, np.uint8)  # any id outside the table: ignore
    to_label = np.zeros(256, np.uint8)  # train id 255 (and unused values) -> 0 "unlabeled", as labels.py inverts
    for label_id, _, train_id in CITYSCAPES_LABELS:
        if label_id >= 0:
            to_train[label_id] = train_id
    for label_id, _, train_id in reversed(CITYSCAPES_LABELS):  # the first label of a train id wins (labels.py)
        if 0 <= train_id < 255:
            to_label[train_id] = label_id
    return to_train, to_label


CITYSCAPES_LABEL_TO_TRAIN, CITYSCAPES_TRAIN_TO_LABEL = _cityscapes_tables()  # uint8 lookup tables of 256
# The reader's table (int16): a labelIds PNG holds the label ids 0..33 only, so any other value marks a damaged or
# wrong file and is refused, where cityscapes_label_to_train (for predictions) maps it to ignore.
CITYSCAPES_MASK_TABLE = np.where(np.arange(256) <= max(i for i, _, _ in CITYSCAPES_LABELS),
                                 CITYSCAPES_LABEL_TO_TRAIN.astype(np.int16), np.int16(NOT_STORED))


def _lookup(table: np.ndarray, mask):
    """table[mask] for a uint8 numpy array or tensor, returned as the same type."""
    if isinstance(mask, torch.Tensor):
        return torch.from_numpy(table).to(mask.device)[mask.long()]
    return table[np.asarray(mask, np.uint8)]


def cityscapes_label_to_train(mask):
    """Label ids (gtFine *_labelIds.png) -> train ids 0..18, 255 for everything not trained on."""
    return _lookup(CITYSCAPES_LABEL_TO_TRAIN, mask)


def cityscapes_train_to_label(mask):
    """Train ids -> label ids (for files the Cityscapes evaluation server reads); 255 -> 0 "unlabeled"."""
    return _lookup(CITYSCAPES_TRAIN_TO_LABEL, mask)


# --------------------------------------------------------------------------------------------------- ADE20K
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
    'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)
_ADE20K_PALETTE_HEX = (
    "787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 e005ff ebff07 96053d 787846 08ff33 "
    "ff0652 8fff8c ccff04 ff3307 cc4603 0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff "
    "08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207 ff7a08 00ff14 ff0829 ff0599 0633ff "
    "eb0cff a09614 00a3ff 8c8c8c fa0a0f 14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff "
    "0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00 008fff 33ff00 0052ff 00ff29 00ffad "
    "0a00ff adff00 00ff99 ff5c00 ff00ff ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 "
    "00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 8fff00 5200ff a3ff00 ffeb00 08b8aa "
    "8500ff 00ff5c b800ff ff001f 00b8ff 00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3 "
    "ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00 00ccff 1400ff ffff00 0099ff 0029ff "
    "00ffcc 2900ff 29ff00 ad00ff 00f5ff 4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff "
)
ADE20K_PALETTE = tuple(tuple(bytes.fromhex(c)) for c in "".join(_ADE20K_PALETTE_HEX).split())

# 0 ("other objects") -> 255, k -> k - 1; a 255 already there stays 255 (mmseg's reduce_zero_label)
ADE_REDUCE_ZERO = np.array([IGNORE_INDEX, *range(254), IGNORE_INDEX], np.uint8)


def ade_reduce_zero(mask):
    """ADE20K annotation values (0 = other, 1..150) -> class indices 0..149 with 0 -> 255. Apply it once: the
    ade20k reader does (deepres.data.readers.segmentation), so nothing after it may."""
    return _lookup(ADE_REDUCE_ZERO, mask)


def read_ade_class_names(path) -> list[str]:
    """Class names from objectInfo150.txt (a header, then "Idx Ratio Train Val Name" rows, tab-separated; the
    csv copy object150_info.csv, comma-separated, reads too): the first synonym of each Name, in Idx order
    ("person, individual, someone" or "person;individual;someone" -> "person")."""
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    separator = "\t" if lines and "\t" in lines[0] else ","
    names: dict[int, str] = {}
    for line_no, line in enumerate(lines[1:], 2):
        fields = line.split(separator, 4)
        if len(fields) < 5 or not fields[0].strip().isdecimal():
            raise ValueError(f"{path}:{line_no}: expected Idx, Ratio, Train, Val, Name, got {line!r}")
        names[int(fields[0])] = re.split(r"[;,]", fields[4])[0].strip()
    if not names or sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"{path}: class indices must be 1..{len(names)} without gaps")
    return [names[i] for i in range(1, len(names) + 1)]


# ---------------------------------------------------------------------------------------------- palettes
def palette_for(dataset_name: str, num_classes: int) -> np.ndarray:
    """(256, 3) uint8 colours for class-index masks: cityscapes' and ade20k's own (others black, 255 too) when
    the model has no more classes than the table, else (voc, any other format) the VOC colour map."""
    own = {"cityscapes": CITYSCAPES_COLORS, "ade20k": ADE20K_PALETTE}.get(dataset_name)
    if own is None or num_classes > len(own):
        return voc_colormap()
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(own)] = own
    return palette


def write_mask_png(path, mask, palette: np.ndarray | None = None) -> Path:
    """Write a class-index mask (H, W) as a palette PNG (mode "P": the file holds the indices; viewers show
    `palette`, default the VOC colour map); written atomically."""
    path = Path(path)
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"a mask is a uint8 (H, W) array, got {array.dtype} {array.shape}")
    image = Image.fromarray(array, mode="P")
    image.putpalette((voc_colormap() if palette is None else np.asarray(palette, np.uint8)).tobytes())
    atomic_write(path, lambda f: image.save(f, format="PNG"))
    return path


def read_mask_png(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file as uint8 (H, W) values: a palette ("P") image gives its indices, never its colours; a
    grayscale ("L") image its values. Anything else (RGB colours) is a ValueError naming the file; a file that
    does not decode is a BadImageError, as for images."""
    image = open_image(path, max_pixels=max_pixels)
    if image.mode not in ("P", "L"):
        raise ValueError(f"{path}: a mask must be a palette (P) or grayscale (L) image of class indices, got mode "
                         f"{image.mode}; convert colour masks to indices first")
    return np.array(image, dtype=np.uint8)
