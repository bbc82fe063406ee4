"""Writing packed datasets (`deepres data pack`): the layout is described in deepres.data.packing.packed_reader."""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from deepres.core.config import DataConfig
from deepres.core.files import temp_dir

from ..augment import transforms as T
from ..datasets import build_datasets, build_train_dataset
from ..images import DEFAULT_MAX_PIXELS, BadImageError, init_decode_worker, load_image, pil_to_tensor
from ..readers.folders import ImageFileDataset
from ..registry import list_formats
from .packed_reader import ENCODINGS, PACK_FILE, PACK_VERSION, RECORD_DTYPE, SPLITS

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_byte_size(text: str) -> int:
    """'256MB' -> 256_000_000; units B, KB, MB, GB (powers of 10) and KiB, MiB, GiB; a plain number is bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?I?B?)\s*", str(text).upper())
    if not match or match.group(2) not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"shard size {text!r}: expected a positive size such as 256MB, 1GB or 64MiB")
    return max(int(float(match.group(1)) * _SIZE_UNITS[match.group(2)]), 1)


# ------------------------------------------------------------------------------------------------ writing


@dataclass(frozen=True)
class PackOptions:
    size: int = 160  # shorter side after packing, pixels; larger images are resized down; 0 = keep all sizes
    encoding: str = "jpeg"  # "jpeg" (re-encoded) or "raw" (uint8 arrays: exact, for small images)
    quality: int = 90  # JPEG quality, 1-95
    shard_bytes: int = 256 * 10**6  # a new shard starts before one would grow past this, bytes
    exif_rotate: bool = False  # apply EXIF orientation while packing (data.exif_rotate)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images count as bad (data.max_image_pixels)


def encode_image(path: str, options: PackOptions) -> tuple[bytes, int, int]:
    """(encoded bytes, height, width) of one source image, resized as the pack says; raises BadImageError."""
    image = pil_to_tensor(load_image(path, exif_rotate=options.exif_rotate, max_pixels=options.max_pixels))
    height, width = image.shape[-2:]
    if options.size and min(height, width) > options.size:
        image = T.resize_shorter(image, options.size)
        height, width = image.shape[-2:]
    if options.encoding == "raw":
        return image.numpy().tobytes(), height, width
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=options.quality)
    return buffer.getvalue(), height, width


def _encode_or_error(item: tuple[str, PackOptions]):
    path, options = item
    try:
        return encode_image(path, options)
    except BadImageError as e:
        return e


class _ShardWriter:
    """Appends records to shard-00000.bin, shard-00001.bin, ... in `directory`, each at most shard_bytes
    (a single record larger than that gets a shard of its own)."""

    def __init__(self, directory: Path, shard_bytes: int):
        self.directory, self.shard_bytes = directory, shard_bytes
        self.shards: list[tuple[str, int]] = []  # (file name, bytes) of closed shards
        self.file = None
        self.size = 0

    def add(self, data: bytes) -> tuple[int, int]:
        """Write one record; returns (shard number, byte offset)."""
        if self.file is None or (self.size and self.size + len(data) > self.shard_bytes):
            self._close_shard()
            self.file = open(self.directory / f"shard-{len(self.shards):05d}.bin", "wb")
            self.size = 0
        offset = self.size
        self.file.write(data)
        self.size += len(data)
        return len(self.shards), offset

    def _close_shard(self) -> None:
        if self.file is not None:
            _fsync_close(self.file)
            self.shards.append((Path(self.file.name).name, self.size))
            self.file = None

    def close(self) -> list[tuple[str, int]]:
        self._close_shard()
        return self.shards


def _fsync_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class SplitReport:
    split: str
    images: int = 0
    bytes: int = 0  # shard bytes
    shards: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    seconds: float = 0.0

    def summary(self) -> str:
        per_image = self.bytes / max(self.images, 1) / 1e3
        return (f"{self.split}: {self.images} images in {self.shards} shard(s), {self.bytes / 1e6:.1f} MB "
                f"({per_image:.1f} kB/image), {len(self.skipped)} skipped, {self.seconds:.1f} s "
                f"({self.images / max(self.seconds, 1e-9):.0f} images/s)")


def _pack_split(dataset: ImageFileDataset, directory: Path, split: str, options: PackOptions, *, skip_bad: bool,
                pool, progress: bool) -> SplitReport:
    directory.mkdir()
    report, start = SplitReport(split), time.perf_counter()
    records, sources = [], []
    writer = _ShardWriter(directory, options.shard_bytes)
    items = [(path, options) for path, _ in dataset.samples]
    try:
        encoded = pool.imap(_encode_or_error, items, chunksize=16) if pool else map(_encode_or_error, items)
        bar = tqdm(encoded, total=len(items), desc=f"pack {split}", unit="img", disable=not progress)
        for (path, label), result in zip(dataset.samples, bar):
            if isinstance(result, BadImageError):
                if not skip_bad:
                    raise result
                report.skipped.append((path, result.reason))
                continue
            data, height, width = result
            shard, offset = writer.add(data)
            records.append((shard, offset, len(data), label, height, width))
            if "\n" in path:
                raise ValueError(f"{path!r}: a file name with a line break cannot be listed in sources.txt")
            sources.append(path)
    finally:
        shards = writer.close()
    if not records:
        raise ValueError(f"split {split}: no decodable image among the {len(items)} source images")
    array = np.array(records, dtype=RECORD_DTYPE)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    _write_file(directory / "samples.npy", buffer.getvalue())
    _write_file(directory / "sources.txt", "".join(f"{s}\n" for s in sources).encode())
    if report.skipped:
        _write_file(directory / "skipped.txt", "".join(f"{p}\t{r}\n" for p, r in report.skipped).encode())
    index = {"version": PACK_VERSION, "encoding": options.encoding, "size": options.size,
             "quality": options.quality if options.encoding == "jpeg" else None, "channels": 3,
             "num_images": len(records), "classes": list(dataset.classes),
             "shards": [{"file": name, "bytes": size} for name, size in shards]}
    _write_file(directory / "index.json", (json.dumps(index, indent=1) + "\n").encode())
    report.images, report.shards, report.bytes = len(records), len(shards), sum(size for _, size in shards)
    report.seconds = time.perf_counter() - start
    return report


def _check_options(options: PackOptions, splits: Sequence[str], workers: int) -> None:
    if options.encoding not in ENCODINGS:
        raise ValueError(f"pack format {options.encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if not 1 <= options.quality <= 95:
        raise ValueError(f"JPEG quality {options.quality}: expected 1-95 (Pillow: above 95 only grows files)")
    if options.size < 0:
        raise ValueError(f"size {options.size}: expected a shorter side in pixels >= 1, or 0 to keep sizes")
    if options.shard_bytes < 1:
        raise ValueError(f"shard size {options.shard_bytes}: expected a positive number of bytes")
    if not splits or len(set(splits)) != len(splits) or any(s not in SPLITS for s in splits):
        raise ValueError(f"splits {list(splits)}: expected one or both of {', '.join(SPLITS)}, each once")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")


def _check_out(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it (only a packed dataset is "
                              f"replaced, and only once the new one is complete)")
    if not (out / PACK_FILE).is_file():
        raise FileExistsError(f"{out} exists and is not a packed dataset (no {PACK_FILE}); refusing to replace "
                              f"it even with --force: choose another OUT")


def pack_dataset(cfg: DataConfig, out, *, splits: Sequence[str] = SPLITS, options: PackOptions = PackOptions(),
                 val_size: int | None = None, workers: int = 0, skip_bad: bool = False, force: bool = False,
                 progress: bool = True) -> list[SplitReport]:
    """Pack the file dataset `cfg` describes (folder, imagenet, list; data.root = the source) into `out`.

    val_size: the val split's shorter side (pixels) when it should differ from options.size, e.g. 256 for
    a crop224_resize256 evaluation of a model trained on 160-pixel crops.

    Everything is written into a hidden temporary folder beside `out`, fsynced, then renamed to `out`; an
    existing `out` is replaced only with force=True, only if it is itself a pack, and only at that rename."""
    _check_options(options, splits, workers)
    if val_size is not None and val_size < 0:
        raise ValueError(f"val size {val_size}: expected a shorter side in pixels >= 1, or 0 to keep sizes")
    sources = list_formats(packable=True)
    if cfg.name not in sources:
        raise ValueError(f"data.name={cfg.name}: packing reads file datasets ({', '.join(sources)}); "
                         f"in-memory sets (CIFAR, MNIST) load fast as they are")
    out = Path(out)
    _check_out(out, force)
    options = replace(options, exif_rotate=cfg.exif_rotate, max_pixels=cfg.max_image_pixels)
    split_options = {"train": options, "val": options if val_size is None else replace(options, size=val_size)}
    # val alone still needs train (imagenet and list val take the train classes)
    train, val = build_datasets(cfg) if "val" in splits else (build_train_dataset(cfg), None)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_dir(out.parent, prefix=f".{out.name}.packing-")  # renamed to out: mode 0777 & ~umask
    pool = mp.get_context("spawn").Pool(workers, initializer=init_decode_worker) if workers > 0 else None
    try:
        reports = [_pack_split(train if split == "train" else val, temp / split, split, split_options[split],
                               skip_bad=skip_bad, pool=pool, progress=progress) for split in splits]
        source_splits = {"train": cfg.train_split, "val": cfg.val_split}
        pack = {"format": "deepres-packed", "version": PACK_VERSION, "source": str(Path(cfg.root).resolve()),
                "source_format": cfg.name,
                "splits": {s: {"source_split": source_splits[s], "size": split_options[s].size} for s in splits},
                "encoding": options.encoding, "quality": options.quality,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_file(temp / PACK_FILE, (json.dumps(pack, indent=1) + "\n").encode())
        _check_out(out, force)  # again: something may have appeared there while packing
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.replaced-"))  # deleted below
            os.replace(out, old / out.name)
            os.replace(temp, out)
            shutil.rmtree(old)
        else:
            os.replace(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
    return reports
