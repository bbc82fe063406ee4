"""Datasets of image files decoded per item: class-per-folder trees, list files, and ImageNet val.

Every reader returns an ImageFileDataset: a sorted list of (path, label) plus the class names. Sample order
is deterministic: classes sorted by their path relative to the root (torchvision ImageFolder order), files
sorted within a class. Entries whose name starts with "." are ignored (e.g. macOS "._x.JPEG" shadows).
"""
import csv
import logging
import multiprocessing as mp
import os
import re
from pathlib import Path, PurePosixPath

import torch

from ..images import DEFAULT_MAX_PIXELS, BadImageError, is_image_file, load_image, pil_to_tensor

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")


class TooManyBadImagesError(ValueError):
    """More bad images were skipped than `bad_image_cap` allows."""


class UnknownClassesError(ValueError):
    """A dataset has classes that the class list it is relabelled onto lacks; `.unknown` lists them."""

    def __init__(self, unknown: list[str]):
        self.unknown = unknown
        super().__init__(f"{len(unknown)} classes not in the class list, e.g. {unknown[:3]}")


class _BadImageLedger:
    """Which samples were found bad, shared with DataLoader worker processes (fork or spawn inheritance)."""

    def __init__(self, size: int):
        self._marks = mp.RawArray("B", max(size, 1))  # 1 byte per sample: 1 = known bad
        self._count = mp.Value("q", 0)

    def is_bad(self, index: int) -> bool:
        return bool(self._marks[index])

    def record(self, index: int) -> tuple[bool, int]:
        """Mark a sample bad; returns (whether it is newly found, distinct bad samples so far)."""
        with self._count.get_lock():
            new = not self._marks[index]
            if new:
                self._marks[index] = 1
                self._count.value += 1
            return new, self._count.value

    @property
    def count(self) -> int:
        return self._count.value


class ImageFileDataset:
    """Images decoded from files on access; item i is (uint8 tensor (3, H, W), label)."""

    in_chans = 3  # every file is decoded to RGB

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], *, on_bad_image: str = "error",
                 bad_image_cap: int = 100, exif_rotate: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"data.on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        if bad_image_cap < 0:
            raise ValueError(f"data.bad_image_cap must be >= 0, got {bad_image_cap}")
        self.samples = samples
        self.classes = list(classes)
        self.on_bad_image = on_bad_image
        self.bad_image_cap = bad_image_cap
        self.exif_rotate = exif_rotate
        self.max_pixels = max_pixels
        self._ledger = _BadImageLedger(len(samples)) if on_bad_image == "skip" else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def bad_image_count(self) -> int:
        """Distinct bad images skipped so far, across all worker processes."""
        return self._ledger.count if self._ledger is not None else 0

    def __len__(self) -> int:
        return len(self.samples)

    def _options(self) -> dict:
        """The keyword options this dataset was built with (for a dataset built like it)."""
        return dict(on_bad_image=self.on_bad_image, bad_image_cap=self.bad_image_cap, exif_rotate=self.exif_rotate,
                    max_pixels=self.max_pixels)

    def subset(self, n: int) -> "ImageFileDataset":
        """The first n samples (all if n <= 0)."""
        samples = self.samples[:n] if n > 0 else self.samples
        return ImageFileDataset(samples, self.classes, **self._options())

    def _decode(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_image(path, exif_rotate=self.exif_rotate, max_pixels=self.max_pixels)
        return pil_to_tensor(image), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index)

    def load(self, index: int, *, substitute: bool = True) -> tuple[torch.Tensor, int] | None:
        """Item `index`. A bad image raises BadImageError (policy "error"); with policy "skip" it is replaced by
        the next good one (`substitute`, for training) or gives None (for evaluation, which drops it)."""
        try:
            return self._decode(index)
        except BadImageError as error:
            if self.on_bad_image == "error":
                raise
            if not substitute:
                self._skip(index, error)
                return None
            return self._substitute(index, error)

    def _skip(self, index: int, error: BadImageError, substitute: bool = False) -> None:
        new, count = self._ledger.record(index)
        if new:
            # Said once per dataset (the first bad image found by any process): training replaces, never drops.
            note = "; in training the next good image stands in for each bad one" if substitute and count == 1 else ""
            log.warning("skipping bad image %s (%s); %d skipped so far%s", error.path, error.reason, count, note)
        if count > self.bad_image_cap:
            raise TooManyBadImagesError(
                f"{count} bad images skipped, more than data.bad_image_cap={self.bad_image_cap}; the last was "
                f"{error.path} ({error.reason}). List them all with `deepres data verify DIR --manifest bad.csv`.")

    def _substitute(self, index: int, error: BadImageError) -> tuple[torch.Tensor, int]:
        """Policy "skip": return the next good sample after `index` (wrapping), so the choice is deterministic."""
        self._skip(index, error, substitute=True)
        n = len(self.samples)
        for step in range(1, n):
            candidate = (index + step) % n
            if self._ledger.is_bad(candidate):
                continue
            try:
                return self._decode(candidate)
            except BadImageError as next_error:
                self._skip(candidate, next_error, substitute=True)
        raise TooManyBadImagesError(f"no decodable image among the {n} samples (first bad: {error})")


def relabel(dataset: ImageFileDataset, classes: list[str]) -> ImageFileDataset:
    """The same images with labels indexing `classes`, which must hold every class of `dataset` (else
    UnknownClassesError naming the others, in the dataset's class order)."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in dataset.classes if name not in index]
    if unknown:
        raise UnknownClassesError(unknown)
    samples = [(path, index[dataset.classes[label]]) for path, label in dataset.samples]
    return ImageFileDataset(samples, classes, **dataset._options())


# ----------------------------------------------------------------------------------------------- scanning
def _visible(name: str) -> bool:
    return not name.startswith(".")


def _real_dir(path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the directory `path` leads to, following links; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk_images(root: Path, visited: set | None = None):
    """(folder, sorted names of its image files) for root and every folder below it, top-down, sub-folders in
    sorted order; hidden entries skipped, symbolic links followed, each real folder visited once (the first path
    to it in that order), so a link back up the tree is not a loop. Folders in `visited` (real ids, see _real_dir)
    are not entered below root, and those walked are added to it."""
    visited = set() if visited is None else visited
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = _real_dir(dirpath)
        if real in visited and dirpath != str(root):
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        yield Path(dirpath), sorted(f for f in filenames if _visible(f) and is_image_file(f))


def _image_files(root: Path, visited: set | None = None) -> list[Path]:
    found = [folder / name for folder, names in _walk_images(root, visited) for name in names]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def list_image_files(root) -> list[Path]:
    """Every image file under `root`, recursively, sorted by relative path (hidden entries skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image directory not found: {root}")
    return _image_files(root)


def _class_dirs(root: Path, class_depth: int) -> dict[Path, list[Path]]:
    """Class directories, each with its image files: exactly `class_depth` levels below root, or (0) every folder
    holding images. A folder reached twice through links counts once, where first met in sorted order."""
    if class_depth > 0:
        level = [root]
        visited = {_real_dir(root)}  # a folder reached again through a link is not another class
        for _ in range(class_depth):
            entries = [e for parent in level for e in sorted(parent.iterdir()) if _visible(e.name)]
            stray = [e for e in entries if e.is_file() and is_image_file(e.name)]
            if stray:
                raise ValueError(f"{stray[0]} lies above the class folders (data.class_depth={class_depth}); "
                                 "move it into a class folder or change data.class_depth")
            level = []
            for entry in entries:
                real = _real_dir(entry) if entry.is_dir() else None
                if real is not None and real not in visited:
                    visited.add(real)
                    level.append(entry)
        # A class's images lie below it, in no folder seen above (a link up the tree) nor another class's.
        return {d: _image_files(d, visited) for d in sorted(level, key=lambda d: d.relative_to(root).as_posix())}
    if any(_visible(f.name) and f.is_file() and is_image_file(f.name) for f in root.iterdir()):
        raise ValueError(f"{root} holds images directly, not in class folders; for a flat folder use a list "
                         "file (data.name=list) or ImageNet val with data.val_ground_truth")
    dirs = {folder: [folder / name for name in names] for folder, names in _walk_images(root)
            if names and folder != root}
    for child in dirs:
        parent = next((p for p in child.parents if p in dirs), None)
        if parent is not None:
            raise ValueError(f"ambiguous class folders: {parent} holds images and so does its sub-folder "
                             f"{child}; set data.class_depth to say which level names the classes")
    # No class folder has a sub-folder holding images, so its own images are all its images.
    return dirs


def image_folder(root, *, class_depth: int = 0, **options) -> ImageFileDataset:
    """Class-per-folder tree (ImageNet train, Food-101 images/, CUB images/, Mini-Places2 train/a/abbey).

    class_depth=1: classes are root's sub-folders; 2: sub-sub-folders (class name "a/abbey"); 0: every folder
    that directly holds images is a class. Images are collected recursively inside each class folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if class_depth < 0:
        raise ValueError(f"data.class_depth must be >= 0, got {class_depth}")
    listed = _class_dirs(root, class_depth)
    class_dirs = sorted(listed, key=lambda d: d.relative_to(root).as_posix())
    classes = [d.relative_to(root).as_posix() for d in class_dirs]
    samples = []
    for label, class_dir in enumerate(class_dirs):
        files = listed[class_dir]
        if not files:
            raise FileNotFoundError(f"class folder {class_dir} holds no image files")
        samples.extend((str(f), label) for f in files)
    if not samples:
        raise FileNotFoundError(f"no image files found under {root}")
    return ImageFileDataset(samples, classes, **options)


# -------------------------------------------------------------------------------------------- list files
def read_text_file(path: Path) -> str:
    """A list or annotation file's text; ValueError naming the file when it is no UTF-8 text or cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder where a text file was expected") from None
    except OSError as e:  # unreadable permissions, an I/O error
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None


def inside_folder(folder: Path, name: str, where: str) -> str:
    """folder/name for an image path read from a list or annotation file, which must stay below `folder`: an
    absolute path or a '..' would let a list file make the reader open any file on the machine. Lexical, so a
    symbolic link the user placed under the root is still followed."""
    relative = PurePosixPath(name)
    if not name or "\0" in name or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{where}: image path {name!r} is not a relative path inside {folder} (absolute, "
                         f"'..' or empty)")
    return str(Path(folder) / relative)


def read_class_names(path) -> list[str]:
    """Class names from a text file: "name" per line (index = line order) or "name index" per line
    (Mini-Places2 categories.txt: "/a/abbey 0"; a leading "/" is dropped)."""
    path = Path(path)
    lines = [(n, line.split()) for n, line in enumerate(read_text_file(path).splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no class names")
    if all(len(fields) == 1 for _, fields in lines):
        return [fields[0].lstrip("/") for _, fields in lines]
    names: dict[int, str] = {}
    for line_no, fields in lines:
        if len(fields) != 2 or not re.fullmatch(r"[0-9]+", fields[1]):
            raise ValueError(f"{path}:{line_no}: expected 'name index', got {' '.join(fields)!r}")
        index = int(fields[1])
        if index in names:
            raise ValueError(f"{path}:{line_no}: class index {index} appears twice")
        names[index] = fields[0].lstrip("/")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: class indices must be 0..{len(names) - 1} without gaps")
    return [names[i] for i in range(len(names))]


def image_list(list_file, image_root=None, *, classes: list[str] | None = None, suffix: str = "",
               **options) -> ImageFileDataset:
    """Images named in a list file, one "relative/path label" per line (Caffe lists, Mini-Places2 train.txt).

    Paths are relative to `image_root` (default: the list's folder) with `suffix` appended (".jpg" for
    Food-101's meta/train.txt). A line holding only a path takes its label from its parent folder's name.
    Without `classes`, integer labels are named "0".."K-1"; blank lines are ignored."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"list file not found: {list_file}")
    image_root = Path(image_root) if image_root else list_file.parent
    entries: list[tuple[str, str | int]] = []
    has_labels = None
    for line_no, line in enumerate(read_text_file(list_file).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.strip().rsplit(None, 1)
        inside_folder(image_root, fields[0] + suffix, f"{list_file}:{line_no}")
        labelled = len(fields) == 2
        if has_labels is None:
            has_labels = labelled
        if labelled != has_labels:
            raise ValueError(f"{list_file}:{line_no}: expected {'path label' if has_labels else 'path'}, "
                             f"got {line.strip()!r} (every line must have the same form)")
        if labelled:
            if not re.fullmatch(r"\d+", fields[1]):
                raise ValueError(f"{list_file}:{line_no}: label must be a non-negative integer, got {fields[1]!r}")
            entries.append((fields[0], int(fields[1])))
        else:
            parent = Path(fields[0]).parent.as_posix()
            if parent in ("", "."):
                raise ValueError(f"{list_file}:{line_no}: {fields[0]!r} has no label and no class folder")
            entries.append((fields[0], parent))
    if not entries:
        raise ValueError(f"{list_file}: no entries")
    if has_labels:
        max_label = max(label for _, label in entries)
        if classes is None:
            classes = [str(i) for i in range(max_label + 1)]
        elif max_label >= len(classes):
            line_no = _line_of(list_file, max_label)
            raise ValueError(f"{list_file}:{line_no}: label {max_label} out of range for {len(classes)} classes")
        samples = [(str(image_root / (path + suffix)), label) for path, label in entries]
    else:
        if classes is None:
            classes = sorted({name for _, name in entries})
        index = {name: i for i, name in enumerate(classes)}
        for path, name in entries:
            if name not in index:
                raise ValueError(f"{list_file}: class folder {name!r} of {path!r} is not among the "
                                 f"{len(classes)} classes")
        samples = [(str(image_root / (path + suffix)), index[name]) for path, name in entries]
    return ImageFileDataset(samples, classes, **options)


def _line_of(list_file: Path, label: int) -> int:
    for line_no, line in enumerate(read_text_file(list_file).splitlines(), 1):
        fields = line.strip().rsplit(None, 1)
        if len(fields) == 2 and fields[1] == str(label):
            return line_no
    return 0


# ------------------------------------------------------------------------------------------- ImageNet val
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")


def read_synset_map(path) -> list[str]:
    """Synsets in ILSVRC2012 id order (line k = id k), first token per line ("n02119789 kit fox" is fine).

    This is NOT Kaggle's LOC_synset_mapping.txt, which is sorted by synset; the id order is the devkit's
    (meta.mat: ILSVRC2012_ID 1 = n02119789, 2 = n02100735, ...)."""
    path = Path(path)
    synsets = [line.split()[0] for line in read_text_file(path).splitlines() if line.strip()]
    if not synsets:
        raise ValueError(f"{path}: empty synset map")
    for line_no, synset in enumerate(synsets, 1):
        if not re.fullmatch(r"n\d{8}", synset):
            raise ValueError(f"{path}:{line_no}: expected a WordNet id like n01440764, got {synset!r}")
    return synsets


def _val_synsets_from_ground_truth(path: Path, synset_map) -> dict[int, str]:
    """ILSVRC2012_validation_ground_truth.txt: line k holds the 1-based ILSVRC id of val image k."""
    if synset_map is None:
        raise ValueError(f"{path} holds ILSVRC2012 ids; mapping them to synsets needs data.synset_map "
                         "(a text file of synsets in ILSVRC2012 id order, one per line)")
    synsets = read_synset_map(synset_map)
    by_number = {}
    for line_no, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        if not re.fullmatch(r"[0-9]+", line.strip()) or not 1 <= int(line) <= len(synsets):
            raise ValueError(f"{path}:{line_no}: expected an ILSVRC2012 id in 1..{len(synsets)}, got {line.strip()!r}")
        by_number[line_no] = synsets[int(line) - 1]
    return by_number


def _val_synsets_from_csv(path: Path) -> dict[int, str]:
    """Kaggle LOC_val_solution.csv: ImageId,PredictionString; the prediction string starts with the synset."""
    by_number = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the header ImageId,PredictionString, got {reader.fieldnames}")
        for row_no, row in enumerate(reader, 2):
            match = _VAL_NUMBER.fullmatch(row["ImageId"] or "")
            tokens = (row["PredictionString"] or "").split()
            if not match or not tokens:
                raise ValueError(f"{path}:{row_no}: expected ILSVRC2012_val_NNNNNNNN,<synset> ..., got {row}")
            by_number[int(match.group(1))] = tokens[0]
    return by_number


def imagenet_val(val_dir, classes: list[str], *, ground_truth=None, synset_map=None, **options) -> ImageFileDataset:
    """ImageNet val with labels indexing `classes` (the sorted train synsets), from either layout:
    class folders (val/n01440764/*.JPEG), or flat ILSVRC2012_val_NNNNNNNN.JPEG files plus `ground_truth`:
    ILSVRC2012_validation_ground_truth.txt (with `synset_map`) or Kaggle's LOC_val_solution.csv."""
    val_dir = Path(val_dir)
    if not val_dir.is_dir():
        raise FileNotFoundError(f"ImageNet val folder not found: {val_dir}")
    walk = _walk_images(val_dir)
    _, flat = next(walk, (val_dir, []))  # val_dir's own images (none if it cannot be read)
    if any(names for _, names in walk):  # some sub-folder holds images: class folders
        folders = image_folder(val_dir, class_depth=1, **options)
        try:
            return relabel(folders, classes)
        except UnknownClassesError as e:
            unknown = e.unknown
        raise ValueError(f"val class folder {val_dir / unknown[0]} is not a training class "
                         f"({len(unknown)} unknown in all)")
    index = {synset: i for i, synset in enumerate(classes)}
    if ground_truth is None:
        raise ValueError(f"{val_dir} holds flat val images; set data.val_ground_truth to "
                         "ILSVRC2012_validation_ground_truth.txt (plus data.synset_map) or LOC_val_solution.csv")
    ground_truth = Path(ground_truth)
    if not ground_truth.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {ground_truth}")
    if ground_truth.suffix.lower() == ".csv":
        by_number = _val_synsets_from_csv(ground_truth)
    else:
        by_number = _val_synsets_from_ground_truth(ground_truth, synset_map)
    samples = []
    for path in (val_dir / name for name in flat):  # no sub-folder holds images: these are all of them, sorted
        match = _VAL_NUMBER.fullmatch(path.stem)
        if not match:
            raise ValueError(f"{path}: not named ILSVRC2012_val_NNNNNNNN, so it has no ground-truth entry")
        number = int(match.group(1))
        if number not in by_number:
            raise ValueError(f"{path}: no entry for image {number} in {ground_truth}")
        synset = by_number[number]
        if synset not in index:
            raise ValueError(f"{path}: synset {synset} (from {ground_truth}) is not a training class")
        samples.append((str(path), index[synset]))
    if not samples:
        raise FileNotFoundError(f"no image files in {val_dir}")
    return ImageFileDataset(samples, classes, **options)
