"""A tiny registry of dataset formats: one record per data.name, `register_format`, `get_format`, `list_formats`.

A format is a row of data: how to read a split, whether the split lives in memory, what its targets are, the
facts it fixes for a model (classes, channels, stored image side) and the format options of the data section it
reads. The built-in rows are registered in deepres.data.datasets. The registry hands its names and options to the
config schema (core.config.DATASET_FORMATS) on import, so a config naming an unregistered format, or setting an
option its format does not read, fails at load.
"""
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from deepres.core.config import DATASET_FORMATS, FORMAT_OPTIONS, DataConfig

# What a target is. classification: one class index per image. segmentation: a class-index mask per image
# (no format or loader reads masks yet).
Task = Literal["classification", "segmentation"]
Split = Literal["train", "val"]  # data.train_split / data.val_split


# A reader: (cfg, split, root, classes, training) -> one split as a dataset (len, [i] -> (uint8 image (C, H, W),
# target), .classes, .num_classes, .in_chans, .subset(n)); an in-memory format returns an ArrayDataset. root:
# resolve_root(cfg), None for a format that needs none. classes: for the val split of a file format, the class
# list its labels must index (the train split's, or a trained model's); None for a train split. training:
# `classes` are the train split's (the val split must hold exactly them), not a model's (a subset is allowed).
Reader = Callable[[DataConfig, Split, Path | None, list[str] | None, bool], Any]
PerConfig = Callable[[DataConfig], Any]  # a fact that depends on other data.* keys (cifar100: coarse_labels)

# The format options every segmentation reader reads (image and mask rescaled and cropped together)
SEGMENTATION_OPTIONS = ("scale_range", "base_size", "base_side", "cat_max_ratio", "test_size")


@dataclass(frozen=True)
class DatasetFormat:
    name: str  # data.name
    read: Reader
    # One uint8 tensor per split, each split labelled on its own, small enough for the training device;
    # otherwise images are decoded one by one and the val split is labelled with the train split's classes
    in_memory: bool = False
    task: Task = "classification"
    # What the format fixes for a model built without reading the data (None: the data decides)
    num_classes: int | PerConfig | None = None
    in_chans: int | None = None
    class_names: Sequence[str] | PerConfig | None = None  # by label index; None: unnamed or in the files
    stored_side: int | PerConfig | None = None  # in-memory: side of every stored (square) image, pixels
    # The class list an eval split is labelled with when neither a model nor the train split gives one
    eval_classes: Callable[[DataConfig, Path], list[str] | None] | None = None
    fetch: str = ""  # `deepres data get` key; its package copy, if installed, is the default data.root
    packable: bool = False  # a file format `deepres data pack` reads
    needs_root: bool = True  # reads files under data.root (False: generated)
    # The format options (core.config.FORMAT_OPTIONS: data.class_depth, data.scale_range, ...) the format reads; the
    # config refuses any other set to a non-default value. None: not declared, every option passes
    options: tuple[str, ...] | None = None

    @property
    def masks(self) -> bool:
        """Whether each item is an (image, mask) pair moved together by the transforms: the dense formats."""
        return self.task in DENSE_TASKS


DENSE_TASKS = ("segmentation",)  # tasks whose targets are per-pixel masks

_formats: dict[str, DatasetFormat] = {}


def register_format(fmt: DatasetFormat) -> DatasetFormat:
    """Add a format under its name; a name is registered once."""
    if fmt.name in _formats:
        raise ValueError(f"dataset format {fmt.name!r} is already registered")
    if fmt.task not in get_args(Task):
        raise ValueError(f"dataset format {fmt.name!r}: task must be one of {', '.join(get_args(Task))}, "
                         f"got {fmt.task!r}")
    unknown = [key for key in fmt.options or () if key not in FORMAT_OPTIONS]
    if unknown:
        raise ValueError(f"dataset format {fmt.name!r}: options must be data format options "
                         f"({', '.join(FORMAT_OPTIONS)}), got {', '.join(map(repr, unknown))}")
    _formats[fmt.name] = fmt
    return fmt


# The config's data.name takes the registered names, and its format options check against what each reads
DATASET_FORMATS.provide(lambda: {name: fmt.options for name, fmt in _formats.items()})


def get_format(name: str) -> DatasetFormat:
    """The record of a registered format; KeyError naming the known ones."""
    if name not in _formats:
        raise KeyError(f"unknown dataset format {name!r}; known formats: {', '.join(_formats)}")
    return _formats[name]


def list_formats(**fields) -> list[str]:
    """Format names in registration order; keywords keep those whose record has these values (packable=True)."""
    return [name for name, fmt in _formats.items() if all(getattr(fmt, k) == v for k, v in fields.items())]


def _for(fact, cfg: DataConfig):
    return fact(cfg) if callable(fact) else fact


def kept_class_indices(classes: Sequence[str], wanted: Sequence, where: str = "the dataset") -> list[int]:
    """data.keep_classes -> indices into `classes`: each entry an index or a class name; ValueError naming one
    that is neither."""
    out = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(classes):
            out.append(item)
        elif str(item) in classes:
            out.append(list(classes).index(str(item)))
        else:
            raise ValueError(f"data.keep_classes: {item!r} is neither a class index (0..{len(classes) - 1}) nor a "
                             f"class name of {where} ({', '.join(list(classes)[:5])}...)")
    return out


def format_shape(cfg: DataConfig) -> tuple[int, int, list[str] | None] | None:
    """(num_classes, in_chans, class names or None) that cfg's format fixes (after data.keep_classes); None when
    the data decides."""
    fmt = get_format(cfg.name)
    num_classes = _for(fmt.num_classes, cfg)
    if num_classes is None or fmt.in_chans is None:
        return None
    names = _for(fmt.class_names, cfg)
    names = None if names is None else list(names)
    if cfg.keep_classes:
        num_classes = len(cfg.keep_classes)
        names = None if names is None else [names[i] for i in kept_class_indices(names, cfg.keep_classes)]
    return num_classes, fmt.in_chans, names


def stored_side(cfg: DataConfig) -> int | None:
    """Side (pixels) of the images an in-memory format stores; None for formats decoded per image."""
    return _for(get_format(cfg.name).stored_side, cfg)
