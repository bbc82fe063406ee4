"""Writers for small dataset fixtures in the datasets' real on-disk formats (used by tests/test_data_*.py)."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from deepres.data.readers.seg_labels import voc_colormap

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def random_pixels(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    array = np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return array[:, :, 0] if channels == 1 else array


def write_image(path, array: np.ndarray | None = None, *, size=(20, 16), fmt=None, seed=0) -> Path:
    """Save an RGB (or given) array with Pillow; `size` is (width, height); `fmt` overrides the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = random_pixels(size[1], size[0], seed=seed)
    Image.fromarray(array).save(path, format=fmt)
    return path


def write_cifar10(root, images_per_batch: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta; returns (train data, labels)."""
    directory = Path(root) / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train_data, train_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(images_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=images_per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(images_per_batch)]}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        if name != "test_batch":
            train_data.append(data)
            train_labels.extend(labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": images_per_batch, b"label_names": names, b"num_vis": 3072}, f,
                    protocol=2)
    return np.concatenate(train_data), np.array(train_labels)


def write_cifar100(root, num_images: int = 6, seed: int = 0) -> dict:
    """cifar-100-python/ with train, test, meta; returns the train batch dict."""
    directory = Path(root) / "cifar-100-python"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in ("train", "test"):
        batch = {b"filenames": [b"x.png"] * num_images, b"batch_label": name.encode(),
                 b"fine_labels": [int(v) for v in rng.integers(0, 100, size=num_images)],
                 b"coarse_labels": [int(v) for v in rng.integers(0, 20, size=num_images)],
                 b"data": rng.integers(0, 256, size=(num_images, 3072), dtype=np.uint8)}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = batch
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    with open(directory / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return batches["train"]


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: magic (0x0000 08 ndim) then big-endian dims then the data."""
    magic = magic if magic is not None else 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(root, num_train: int = 12, num_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    """{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; returns the arrays by prefix."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
        arrays[prefix] = (images, labels)
    return arrays


def python2_pickle(obj) -> bytes:
    """Protocol-2 pickle as Python 2 and numpy 1.x wrote the official CIFAR batches: byte strings as BINSTRING (no
    `_codecs.encode`), arrays through `numpy.core.multiarray._reconstruct`. Handles dicts, lists, bytes, ints and
    uint8 arrays, which is all those files hold."""
    def emit(value) -> bytes:
        if isinstance(value, dict):
            return b"}(" + b"".join(emit(k) + emit(v) for k, v in value.items()) + b"u"  # EMPTY_DICT MARK SETITEMS
        if isinstance(value, list):
            return b"](" + b"".join(emit(v) for v in value) + b"e"  # EMPTY_LIST MARK APPENDS
        if isinstance(value, bytes):
            return b"T" + struct.pack("<i", len(value)) + value  # BINSTRING: a Python 2 str
        if isinstance(value, bool) or value is None:
            return {True: b"\x88", False: b"\x89", None: b"N"}[value]
        if isinstance(value, int):
            return b"J" + struct.pack("<i", value)  # BININT
        if isinstance(value, tuple):
            return b"(" + b"".join(emit(v) for v in value) + b"t"  # MARK ... TUPLE
        if isinstance(value, np.ndarray):
            assert value.dtype == np.uint8
            dtype = (b"cnumpy\ndtype\n" + emit((b"u1", 0, 1)) + b"R"
                     + emit((3, b"|", None, None, None, -1, -1, 0)) + b"b")  # REDUCE, then BUILD with its state
            return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"(cnumpy\nndarray\n" + emit((0,)) + emit(b"b")
                    + b"tR(" + emit(1) + emit(tuple(value.shape)) + dtype + emit(False)
                    + emit(value.tobytes()) + b"tb")
        raise TypeError(type(value))
    return b"\x80\x02" + emit(obj) + b"."


# ------------------------------------------------------------------------------------- segmentation
def write_palette_png(path, mask: np.ndarray, palette: np.ndarray | None = None):
    """A mask as VOC ships them: mode "P", the VOC colour map as palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, mode="P")
    image.putpalette((voc_colormap() if palette is None else palette).tobytes())
    image.save(path)


def write_gray_png(path, mask: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask, mode="L").save(path)


def blob_mask(height, width, values, seed, block=4) -> np.ndarray:
    """Random blocky regions of `values`."""
    rng = np.random.default_rng(seed)
    small = rng.choice(np.array(values, np.uint8), size=(-(-height // block), -(-width // block)))
    return np.kron(small, np.ones((block, block), np.uint8))[:height, :width]


def write_voc(root, ids_by_split: dict[str, list[str]], size=(14, 11), masks=None) -> dict[str, np.ndarray]:
    """VOCdevkit/VOC2012 with JPEG images, palette masks (random blobs with a 255 border unless `masks`: id -> mask)
    and the split lists."""
    voc = root / "VOCdevkit" / "VOC2012"
    written = {}
    for split, ids in ids_by_split.items():
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for n, i in enumerate(ids):
            write_image(voc / "JPEGImages" / f"{i}.jpg", size=size, seed=n)
            if masks is None:
                mask = blob_mask(size[1], size[0], [0, 5, 15], seed=hash(i) % 1000)
                mask[0, :] = mask[-1, :] = mask[:, 0] = 255  # VOC's object borders
            else:
                mask = masks[i]
            write_palette_png(voc / "SegmentationClass" / f"{i}.png", mask)
            written[i] = mask
    return written


def write_ade(root, split: str, annotation: np.ndarray, count: int = 2):
    prefix = "ADE_train" if split == "training" else "ADE_val"
    for n in range(1, count + 1):
        write_image(root / "images" / split / f"{prefix}_{n:08d}.jpg", size=annotation.shape[::-1], seed=n)
        write_gray_png(root / "annotations" / split / f"{prefix}_{n:08d}.png", annotation)


def read_reference(name, source="torchvision"):
    """(key, shape) rows of tests/data/<source>_<name>_state_dict.txt: that library's state-dict layout."""
    rows = []
    for line in (Path(__file__).parent / "data" / f"{source}_{name}_state_dict.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            rows.append((key, () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))))
    return rows
