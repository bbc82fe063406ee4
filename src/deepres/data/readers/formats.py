"""Small datasets held in memory as one uint8 tensor: CIFAR-10/100 pickles, MNIST-style IDX files, synthetic."""
import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_SIDE = 28  # pixels: IDX images of MNIST and Fashion-MNIST are 28x28
CIFAR_SIDE = 32  # pixels: CIFAR-10/100 images are 32x32


class ArrayDataset:
    """Images as one uint8 tensor (N, C, H, W) with int64 labels (N,); item i is (images[i], label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        labels = labels.long()
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"labels span {labels.min()}..{labels.max()} but there are {len(classes)} classes")
        self.images = images
        self.labels = labels
        self.classes = list(classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, n: int) -> "ArrayDataset":
        """The first n samples (all if n <= 0)."""
        if n <= 0:
            return self
        return ArrayDataset(self.images[:n], self.labels[:n], self.classes)


# ------------------------------------------------------------------------------------------------- CIFAR
def _test_split(split: str, path_hint) -> bool:
    """CIFAR and MNIST ship train and test only; "val" means the test set."""
    if split == "train":
        return False
    if split in ("test", "val", "t10k"):
        return True
    raise ValueError(f"split {split!r} for {path_hint}: expected train or test (val = test)")


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as protocol-2 pickles written by Python 3 use it for bytes, for latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}: only latin1 bytes are allowed")
    return text.encode("latin1")


# Every global a CIFAR pickle may name: numpy's array reconstruction (numpy 1.x wrote numpy.core, 2.x writes
# numpy._core) and the bytes encoding of Python-3 protocol-2 pickles. Anything else could call arbitrary code.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """Reads dicts, lists, strings, bytes, numbers and numpy arrays; refuses every other global, naming it."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(f"{self.path}: refusing to unpickle global {module}.{name} (a CIFAR batch holds only "
                             "dicts, lists, bytes, numbers and numpy arrays; this file may run code)") from None

    def persistent_load(self, pid):
        raise ValueError(f"{self.path}: refusing a pickle persistent id (not a CIFAR batch)")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path}")
    with open(path, "rb") as f:
        # The official batches were pickled by Python 2: byte-string keys, read with encoding="bytes".
        try:
            batch = _CifarUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: a CIFAR pickle holds a dict, found a {type(batch).__name__}")
    return batch


def _key(batch: dict, key: str, path: Path):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise KeyError(f"{path}: no key {key!r} (found {sorted(k.decode() if isinstance(k, bytes) else k for k in batch)})")


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _cifar_dir(root, folder: str) -> Path:
    root = Path(root)
    return root / folder if (root / folder).is_dir() else root


def _integers(batch: dict, key: str, path: Path, low: int, high: int, dtype) -> np.ndarray:
    """batch[key] as an integer array of `dtype`, every value in low..high; ValueError naming the file and key."""
    try:
        values = np.asarray(_key(batch, key, path))
    except (ValueError, TypeError, OverflowError) as e:  # ragged or mixed lists
        raise ValueError(f"{path}: {key} is not an array of numbers ({e})") from None
    if values.size and values.dtype.kind not in "iub":
        raise ValueError(f"{path}: {key} holds {values.dtype} values; a CIFAR batch holds integers")
    if values.size and not (low <= values.min() and values.max() <= high):
        raise ValueError(f"{path}: {key} values span {values.min()}..{values.max()}, expected {low}..{high}")
    return values.astype(dtype)


def _cifar_arrays(paths: list[Path], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        data = _integers(batch, "data", path, 0, 255, np.uint8)
        batch_labels = _integers(batch, label_key, path, 0, num_classes - 1, np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch_labels) != data.shape[0]:
            raise ValueError(f"{path}: expected data (N, 3072) and N labels, got data {data.shape}, "
                             f"{len(batch_labels)} labels")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are channel-major: 1024 R, 1024 G, 1024 B
        labels.append(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def read_cifar10(root, split: str = "train") -> ArrayDataset:
    """CIFAR-10 python pickles: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    directory = _cifar_dir(root, "cifar-10-batches-py")
    test = _test_split(split, directory)
    names = ["test_batch"] if test else [f"data_batch_{i}" for i in range(1, 6)]
    meta_path = directory / "batches.meta"
    classes = _names(_key(_unpickle(meta_path), "label_names", meta_path))
    images, labels = _cifar_arrays([directory / n for n in names], "labels", len(classes))
    return ArrayDataset(images, labels, classes)


def read_cifar100(root, split: str = "train", *, coarse: bool = False) -> ArrayDataset:
    """CIFAR-100 python pickles: cifar-100-python/{train, test, meta}; coarse=True uses the 20 superclasses."""
    directory = _cifar_dir(root, "cifar-100-python")
    test = _test_split(split, directory)
    kind = "coarse" if coarse else "fine"
    meta_path = directory / "meta"
    classes = _names(_key(_unpickle(meta_path), f"{kind}_label_names", meta_path))
    images, labels = _cifar_arrays([directory / ("test" if test else "train")], f"{kind}_labels", len(classes))
    return ArrayDataset(images, labels, classes)


# --------------------------------------------------------------------------------------------- IDX (MNIST)
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its first bytes) into an array of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number is {magic:#010x}, expected {expected_magic:#010x} "
                         f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'})")
    dtype_code, ndim = raw[2], raw[3]
    if raw[:2] != b"\0\0" or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (magic number {magic:#010x})")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} data bytes) but the file holds "
                         f"{len(raw) - header} (truncated or wrong file)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _idx_path(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: neither {stem}.gz nor {stem} found")


def read_mnist(root, split: str = "train", *, classes: list[str] = MNIST_CLASSES) -> ArrayDataset:
    """MNIST-style IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]) as (N, 1, 28, 28) uint8."""
    root = Path(root)
    prefix = "t10k" if _test_split(split, root) else "train"
    images_path = _idx_path(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_path(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} {labels.shape[0]} labels")
    if labels.size and labels.max() >= len(classes):
        raise ValueError(f"{labels_path}: label {labels.max()} out of range for {len(classes)} classes")
    images_t = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, H, W): gray stays one channel
    return ArrayDataset(images_t, torch.from_numpy(labels.astype(np.int64)), classes)


def read_fashion_mnist(root, split: str = "train") -> ArrayDataset:
    """Fashion-MNIST: MNIST's IDX layout with ten clothing classes."""
    return read_mnist(root, split, classes=FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------------------------------------- synthetic
SYNTHETIC_TEMPLATE_SEED = 1234  # class templates are shared by train and val, so val is predictable


def make_synthetic(num_images: int, *, num_classes: int = 10, image_size: int = 32, in_chans: int = 3,
                   seed: int = 0) -> ArrayDataset:
    """Random images whose class is learnable: a smooth per-class template (4x4 colour blocks upsampled)
    plus Gaussian pixel noise (std 24 on 0-255)."""
    if num_images < 1 or num_classes < 1 or image_size < 1 or in_chans < 1:
        raise ValueError(f"synthetic data needs positive sizes, got num_images={num_images}, "
                         f"num_classes={num_classes}, image_size={image_size}, in_chans={in_chans}")
    template_gen = torch.Generator().manual_seed(SYNTHETIC_TEMPLATE_SEED)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=template_gen) * 160 + 48
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (num_images,), generator=gen)
    noise = torch.randn(num_images, in_chans, image_size, image_size, generator=gen) * 24
    images = (templates[labels] + noise).round().clamp(0, 255).to(torch.uint8)
    return ArrayDataset(images, labels, [f"class_{i}" for i in range(num_classes)])
