"""Packed datasets: a file dataset rewritten as a few large shard files of pre-resized images plus an index.

Training from a folder opens, reads and decodes one full-size file per image; from a pack it reads images
that are already small, back to back from a few memory-mapped files (neon's "macrobatches", FFCV's .beton).
`deepres data pack SRC OUT` writes one; `data.name: packed` with `data.root: OUT` reads it through the same
loaders as a folder, with the same sample order, so shuffling, set_epoch, workers, rank sharding and the
bad-image policy work unchanged.

Layout of OUT:
  pack.json              what was packed: source, dataset format, splits and their sizes, encoding, quality
  <split>/index.json     encoding, size, class names, shard files with their byte sizes, number of images
  <split>/samples.npy    one record per image (RECORD_DTYPE): shard, offset, length (bytes), label, height, width
  <split>/sources.txt    the source file of each image, one per line (error messages, provenance)
  <split>/skipped.txt    source files left out as undecodable (with --on-bad-image skip), "path<TAB>reason"
  <split>/shard-NNNNN.bin  images back to back: JPEG files, or raw uint8 (3, H, W) arrays
Splits are named "train" and "val" whatever the source calls them (data.train_split / val_split defaults).
Images whose shorter side exceeds `size` are resized down (deepres.data.augment.transforms.resize_shorter, the
resize training uses); smaller ones are kept as they are, never enlarged.
"""
from __future__ import annotations

import io
import json
import mmap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import BadImageError, pil_to_tensor, pillow_limit_off, to_rgb
from ..readers.folders import ImageFileDataset

PACK_VERSION = 1
PACK_FILE = "pack.json"
ENCODINGS = ("jpeg", "raw")
SPLITS = ("train", "val")
RECORD_DTYPE = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("length", "<u8"), ("label", "<i8"),
                         ("height", "<u4"), ("width", "<u4")])


# ------------------------------------------------------------------------------------------------ reading


class _PackedSamples(Sequence):
    """(source path, label) pairs; the paths are read from sources.txt only when first needed."""

    def __init__(self, directory: Path, labels: np.ndarray):
        self.directory, self.labels = directory, labels
        self._sources: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[str, int]:
        if self._sources is None:
            self._sources = (self.directory / "sources.txt").read_text().splitlines()
        return self._sources[index], int(self.labels[index])


class PackedDataset(ImageFileDataset):
    """One split of a pack: item i is (uint8 tensor (3, H, W), label), decoded from memory-mapped shards."""

    def __init__(self, directory, index: dict, records: np.ndarray, **options):
        super().__init__(_PackedSamples(Path(directory), records["label"]), index["classes"], **options)
        self.directory, self.index, self.records = Path(directory), index, records
        self._maps: dict[int, mmap.mmap] = {}  # opened lazily in each process (DataLoader workers)

    @property
    def targets(self) -> list[int]:
        return self.records["label"].tolist()

    def subset(self, n: int) -> "PackedDataset":
        """The first n samples (all if n <= 0)."""
        records = self.records[:n] if n > 0 else self.records
        return PackedDataset(self.directory, self.index, records, **self._options())

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps do not travel to spawned workers; each maps the shards itself
        return state

    def _shard(self, number: int) -> mmap.mmap:
        if number not in self._maps:
            with open(self.directory / self.index["shards"][number]["file"], "rb") as f:
                self._maps[number] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[number]

    def _where(self, index: int) -> str:
        shard = self.index["shards"][int(self.records[index]["shard"])]["file"]
        return f"{self.directory / shard} at byte {int(self.records[index]['offset'])} (packed from " \
               f"{self.samples[index][0]})"

    def _decode(self, index: int) -> tuple[torch.Tensor, int]:
        shard, offset, length, label, height, width = self.records[index].tolist()
        if height * width > self.max_pixels:
            raise BadImageError(self._where(index), f"too many pixels ({width}x{height} > {self.max_pixels})")
        data = self._shard(shard)
        if self.index["encoding"] == "raw":
            pixels = np.frombuffer(data, dtype=np.uint8, count=length, offset=offset).reshape(3, height, width)
            return torch.from_numpy(pixels.copy()), label
        # max_pixels (checked above on the index's size) is the limit that applies, not Pillow's; the header must
        # agree with the index before any pixel is decoded.
        with pillow_limit_off():
            try:
                image = Image.open(io.BytesIO(data[offset:offset + length]))
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise BadImageError(self._where(index), f"corrupt packed JPEG ({e})") from None
            if image.size != (width, height):
                raise BadImageError(self._where(index), f"decoded {image.size[0]}x{image.size[1]}, the index "
                                                        f"says {width}x{height}")
            try:
                image.load()
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise BadImageError(self._where(index), f"corrupt packed JPEG ({e})") from None
        return pil_to_tensor(to_rgb(image)), label


def read_packed(directory, **options) -> PackedDataset:
    """Open one split of a pack (OUT/train or OUT/val), checking that its files are complete."""
    directory = Path(directory)
    index_path = directory / "index.json"
    if not index_path.is_file():
        parent = directory.parent
        found = sorted(p.parent.name for p in parent.glob("*/index.json")) if parent.is_dir() else []
        hint = f"; packed splits in {parent}: {', '.join(found)}" if found else \
            " (write one with `deepres data pack SRC OUT`)"
        raise FileNotFoundError(f"{directory}: not a packed split, no index.json{hint}")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index_path}: not valid JSON ({e})") from None
    if index.get("version") != PACK_VERSION or index.get("encoding") not in ENCODINGS:
        raise ValueError(f"{index_path}: pack version {index.get('version')!r} / encoding {index.get('encoding')!r}; "
                         f"this deepres reads version {PACK_VERSION} ({', '.join(ENCODINGS)})")
    try:
        records = np.load(directory / "samples.npy", allow_pickle=False)  # never a pickle: a data file runs no code
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{directory / 'samples.npy'}: not a table of packed records ({e}); re-pack with "
                         "--force") from None
    if records.dtype != RECORD_DTYPE or len(records) != index["num_images"]:
        raise ValueError(f"{directory / 'samples.npy'}: {len(records)} records of {records.dtype}, index.json "
                         f"says {index['num_images']} of {RECORD_DTYPE}; re-pack with --force")
    for shard in index["shards"]:
        if not isinstance(shard["file"], str) or Path(shard["file"]).name != shard["file"] or \
                shard["file"] in ("", ".", ".."):
            raise ValueError(f"{index_path}: shard file {shard['file']!r} is not a file name in {directory} (a "
                             "pack reads only its own shards)")
        path = directory / shard["file"]
        actual = path.stat().st_size if path.is_file() else None
        if actual != shard["bytes"]:
            found = "missing" if actual is None else f"{actual} bytes"
            raise ValueError(f"{path}: {found}, index.json says {shard['bytes']} bytes; the pack is incomplete or "
                             f"damaged, re-pack with `deepres data pack ... --force`")
    return PackedDataset(directory, index, records, **options)
