"""From a DataConfig to the (train, eval) dataset pair: the built-in format records and root resolution."""
from dataclasses import replace
from pathlib import Path

import torch

from deepres.core.config import DataConfig, validate_data_config

from .fetch import DATASETS
from .imagenet_classes import imagenet_class_names, imagenet_synsets
from .packing.packed_reader import read_packed
from .readers.folders import (ImageFileDataset, UnknownClassesError, image_folder, image_list, imagenet_val,
                              read_class_names, relabel)
from .readers.formats import (CIFAR10_CLASSES, CIFAR_SIDE, FASHION_MNIST_CLASSES, MNIST_CLASSES, MNIST_SIDE,
                              ArrayDataset, make_synthetic, read_cifar10, read_cifar100, read_fashion_mnist, read_mnist)
from .readers.seg_labels import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from .readers.segmentation import (SegmentationDataset, ade20k_class_names, ade20k_dataset, cityscapes_dataset,
                                   pairs_dataset, read_pair_classes, voc_dataset)
from .readers.transfer import (FLOWERS102_CLASSES, aircraft_classes, aircraft_dataset, cub200_classes, cub200_dataset,
                               flowers102_dataset, food101_classes, food101_dataset, pets_classes, pets_dataset,
                               stanford_cars_classes, stanford_cars_dataset)
from .registry import (SEGMENTATION_OPTIONS, DatasetFormat, get_format, kept_class_indices, list_formats,
                       register_format)

Dataset = ArrayDataset | ImageFileDataset  # SegmentationDataset is an ImageFileDataset


def _format(cfg: DataConfig) -> DatasetFormat:
    """cfg's format record, after checking the data section (a DataConfig made in Python is unchecked)."""
    validate_data_config(cfg)
    return get_format(cfg.name)


def resolve_root(cfg: DataConfig) -> Path:
    """data.root, or the format's default location (the Debian Fashion-MNIST folder); else a clear error."""
    if cfg.root:
        root = Path(cfg.root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"data.root {root} does not exist")
        return root
    key = get_format(cfg.name).fetch
    for directory in DATASETS[key].local_dirs if key else ():
        if Path(directory).is_dir():
            return Path(directory)
    hint = f" (`deepres data get {key} --dest DIR` fetches it)" if key else ""
    raise ValueError(f"data.root is not set and data.name={cfg.name} has no default location; "
                     f"set data.root=DIR{hint}")


def _under(root: Path, value: str) -> Path | None:
    """A config path, relative to root unless absolute; None when unset."""
    return root / Path(value).expanduser() if value else None


def _file_options(cfg: DataConfig) -> dict:
    return dict(on_bad_image=cfg.on_bad_image, bad_image_cap=cfg.bad_image_cap, exif_rotate=cfg.exif_rotate,
                max_pixels=cfg.max_image_pixels)


def _split_dir(cfg: DataConfig, split: str) -> str:
    return cfg.train_split if split == "train" else cfg.val_split


# ------------------------------------------------------------------------------------------------ readers
# Each takes (cfg, split, root, classes, training): see deepres.data.registry.Reader.
def _read_synthetic(cfg: DataConfig, split: str, root, classes, training) -> ArrayDataset:
    num_train, num_val = cfg.synthetic_size
    shape = dict(num_classes=cfg.num_classes or 10, image_size=cfg.synthetic_image_size, in_chans=cfg.in_chans or 3)
    if split == "train":
        return make_synthetic(num_train, seed=1, **shape)
    return make_synthetic(num_val, seed=2, **shape)


def _read_folder(cfg: DataConfig, split: str, root: Path, classes, training) -> ImageFileDataset:
    """A class-per-folder split; a val folder for a trained model may hold a subset of its classes."""
    split_dir = root / _split_dir(cfg, split)
    dataset = image_folder(split_dir, class_depth=cfg.class_depth, **_file_options(cfg))
    if classes is None or dataset.classes == classes:
        return dataset
    unknown = sorted(set(dataset.classes) - set(classes))
    if training or unknown:
        differ = unknown or sorted(set(classes) - set(dataset.classes))
        against = root / cfg.train_split if training else f"the model's {len(classes)} classes"
        why = "both splits need the same classes" if training else "the val split has classes the model lacks"
        raise ValueError(f"class folders differ between {against} and {split_dir} (e.g. {differ[:3]}); {why}")
    return relabel(dataset, classes)  # a subset onto the model's class list


def _read_imagenet(cfg: DataConfig, split: str, root: Path, classes, training) -> ImageFileDataset:
    """Train as a folder; val as class folders or flat files with a ground-truth file, labels indexing classes."""
    if split == "train":
        return _read_folder(cfg, split, root, classes, training)
    return imagenet_val(root / cfg.val_split, classes, ground_truth=_under(root, cfg.val_ground_truth),
                        synset_map=_under(root, cfg.synset_map), **_file_options(cfg))


def _imagenet_eval_classes(cfg: DataConfig, root: Path) -> list[str] | None:
    """Without a train folder: the 1000 ImageNet-1k synsets, sorted (shipped with deepres)."""
    return None if (root / cfg.train_split).is_dir() else imagenet_synsets()


def _list_class_names(cfg: DataConfig, root: Path) -> list[str] | None:
    return read_class_names(_under(root, cfg.class_names)) if cfg.class_names else None


def _read_list(cfg: DataConfig, split: str, root: Path, classes, training) -> ImageFileDataset:
    """A list file of "path label" lines; labels name classes (data.class_names, else "0".."K-1")."""
    if classes is None:
        classes = _list_class_names(cfg, root)
    image_root = _under(root, cfg.image_root) or root
    return image_list(root / _split_dir(cfg, split), image_root, classes=classes, suffix=cfg.list_suffix,
                      **_file_options(cfg))


def _read_packed(cfg: DataConfig, split: str, root: Path, classes, training):
    split_dir = root / _split_dir(cfg, split)
    dataset = read_packed(split_dir, **_file_options(cfg))
    if classes is not None and dataset.classes != classes:
        against = root / cfg.train_split if training else "the model's classes"
        raise ValueError(f"packed split {split_dir} has a different class list from {against}; pack both "
                         f"splits from one source in one `deepres data pack` run")
    return dataset


def _split_files(reader):
    """The reader of an in-memory format whose splits are files under root (data.train_split / val_split)."""
    return lambda cfg, split, root, classes, training: reader(root, _split_dir(cfg, split))


def _read_cifar100(cfg: DataConfig, split: str, root: Path, classes, training) -> ArrayDataset:
    return read_cifar100(root, _split_dir(cfg, split), coarse=cfg.coarse_labels)


# Segmentation readers: the class list is the format's (or the pairs folder's classes file); a model's list
# (`classes`) must have as many entries, since mask values index it.
def _seg_classes(dataset: SegmentationDataset, classes, against: str) -> SegmentationDataset:
    if classes is None or list(classes) == dataset.classes:
        return dataset
    if len(classes) != dataset.num_classes:
        raise ValueError(f"{against} has {dataset.num_classes} classes but {len(classes)} were expected")
    return SegmentationDataset(dataset.samples, classes, mask_table=dataset.mask_table, **dataset._options())


def _pairs_class_names(cfg: DataConfig, root: Path) -> list[str]:
    """data.class_names (relative to root), else root/classes.txt: line i names mask value i."""
    return read_pair_classes(_under(root, cfg.class_names) or root / "classes.txt")


def _read_pairs(cfg: DataConfig, split: str, root: Path, classes, training) -> SegmentationDataset:
    split_dir = root / _split_dir(cfg, split)
    dataset = pairs_dataset(split_dir, _pairs_class_names(cfg, root), **_file_options(cfg))
    return _seg_classes(dataset, classes, split_dir)


def _read_voc(cfg: DataConfig, split: str, root: Path, classes, training) -> SegmentationDataset:
    dataset = voc_dataset(root, _split_dir(cfg, split), sbd_root=_under(root, cfg.sbd_root), **_file_options(cfg))
    return _seg_classes(dataset, classes, f"VOC {_split_dir(cfg, split)}")


def _read_cityscapes(cfg: DataConfig, split: str, root: Path, classes, training) -> SegmentationDataset:
    dataset = cityscapes_dataset(root, _split_dir(cfg, split), **_file_options(cfg))
    return _seg_classes(dataset, classes, f"Cityscapes {_split_dir(cfg, split)}")


def _read_ade20k(cfg: DataConfig, split: str, root: Path, classes, training) -> SegmentationDataset:
    dataset = ade20k_dataset(root, _split_dir(cfg, split), **_file_options(cfg))
    return _seg_classes(dataset, classes, f"ADE20K {_split_dir(cfg, split)}")


# Transfer-learning readers (deepres.data.readers.transfer): the class list is the dataset's own, the same for every
# split; labels are moved onto a trained model's list when it differs (it must hold every class of the dataset).
def _transfer(read_split):
    """The reader of a transfer-learning format from its (root, split word, **options) reader."""
    def read(cfg: DataConfig, split: str, root: Path, classes, training) -> ImageFileDataset:
        dataset = read_split(root, _split_dir(cfg, split), **_file_options(cfg))
        if classes is None or list(classes) == dataset.classes:
            return dataset
        try:
            return relabel(dataset, list(classes))
        except UnknownClassesError as e:
            raise ValueError(f"data.name={cfg.name} {_split_dir(cfg, split)}: {len(e.unknown)} classes are not among "
                             f"the model's {len(classes)}, e.g. {e.unknown[:3]}") from None
    return read


def _from_files(read_classes):
    """eval_classes of a format whose class list is in its files."""
    return lambda cfg, root: read_classes(root)


def _fixed(names):
    """eval_classes of a format whose class list is fixed."""
    return lambda cfg, root: list(names)


# ------------------------------------------------------------------------------------ the built-in formats
for _fmt in (
    DatasetFormat("fashion_mnist", _split_files(read_fashion_mnist), in_memory=True, num_classes=10, in_chans=1,
                  class_names=FASHION_MNIST_CLASSES, stored_side=MNIST_SIDE, fetch="fashion-mnist", options=()),
    DatasetFormat("mnist", _split_files(read_mnist), in_memory=True, num_classes=10, in_chans=1,
                  class_names=MNIST_CLASSES, stored_side=MNIST_SIDE, fetch="mnist", options=()),
    DatasetFormat("cifar10", _split_files(read_cifar10), in_memory=True, num_classes=10, in_chans=3,
                  class_names=CIFAR10_CLASSES, stored_side=CIFAR_SIDE, options=()),
    DatasetFormat("cifar100", _read_cifar100, in_memory=True, num_classes=lambda cfg: 20 if cfg.coarse_labels else 100,
                  in_chans=3, stored_side=CIFAR_SIDE, options=("coarse_labels",)),  # class names: in the files' meta
    DatasetFormat("folder", _read_folder, packable=True, options=("class_depth",)),
    # num_classes, in_chans, class_names: ImageNet-1k, for a model built without data (inference)
    DatasetFormat("imagenet", _read_imagenet, num_classes=1000, in_chans=3,
                  class_names=lambda cfg: imagenet_class_names(), eval_classes=_imagenet_eval_classes,
                  packable=True, options=("class_depth", "val_ground_truth", "synset_map")),
    DatasetFormat("list", _read_list, eval_classes=_list_class_names, packable=True,
                  options=("image_root", "list_suffix", "class_names")),
    DatasetFormat("packed", _read_packed, options=()),
    DatasetFormat("synthetic", _read_synthetic, in_memory=True, stored_side=lambda cfg: cfg.synthetic_image_size,
                  needs_root=False, options=("synthetic_size", "synthetic_image_size")),
    # Segmentation: uint8 class-index masks, 255 = ignore (deepres.data.readers.segmentation)
    DatasetFormat("pairs", _read_pairs, task="segmentation", eval_classes=_pairs_class_names,
                  options=(*SEGMENTATION_OPTIONS, "class_names")),
    DatasetFormat("voc", _read_voc, task="segmentation", num_classes=len(VOC_CLASSES), in_chans=3,
                  class_names=VOC_CLASSES, eval_classes=_fixed(VOC_CLASSES),
                  options=(*SEGMENTATION_OPTIONS, "sbd_root")),
    DatasetFormat("cityscapes", _read_cityscapes, task="segmentation", num_classes=len(CITYSCAPES_CLASSES),
                  in_chans=3, class_names=CITYSCAPES_CLASSES, eval_classes=_fixed(CITYSCAPES_CLASSES),
                  options=SEGMENTATION_OPTIONS),
    DatasetFormat("ade20k", _read_ade20k, task="segmentation", num_classes=len(ADE20K_CLASSES), in_chans=3,
                  class_names=ADE20K_CLASSES, eval_classes=lambda cfg, root: ade20k_class_names(root),
                  options=SEGMENTATION_OPTIONS),
    # Transfer-learning classification sets in their official layouts; class names are in the files (flowers102:
    # numbers only, names fixed here). num_classes: the published sets', for a model built without data.
    DatasetFormat("food101", _transfer(food101_dataset), num_classes=101, in_chans=3,
                  eval_classes=_from_files(food101_classes), options=()),
    DatasetFormat("cub200", _transfer(cub200_dataset), num_classes=200, in_chans=3,
                  eval_classes=_from_files(cub200_classes), options=()),
    DatasetFormat("stanford_cars", _transfer(stanford_cars_dataset), num_classes=196, in_chans=3,
                  eval_classes=_from_files(stanford_cars_classes), options=()),
    DatasetFormat("flowers102", _transfer(flowers102_dataset), num_classes=len(FLOWERS102_CLASSES), in_chans=3,
                  class_names=FLOWERS102_CLASSES, eval_classes=_fixed(FLOWERS102_CLASSES), options=()),
    DatasetFormat("pets", _transfer(pets_dataset), num_classes=37, in_chans=3, eval_classes=_from_files(pets_classes),
                  options=()),
    DatasetFormat("aircraft", _transfer(aircraft_dataset), num_classes=100, in_chans=3,
                  eval_classes=_from_files(aircraft_classes), options=()),
):
    register_format(_fmt)


# ----------------------------------------------------------------------------------------------- building
def _root(fmt: DatasetFormat, cfg: DataConfig) -> Path | None:
    return resolve_root(cfg) if fmt.needs_root else None


def build_train_dataset(cfg: DataConfig) -> ImageFileDataset:
    """Only the training split of a file dataset `deepres data pack` reads (folder, imagenet, list), cut to
    limit_train."""
    fmt = _format(cfg)
    if not fmt.packable:
        raise ValueError(f"build_train_dataset reads {', '.join(list_formats(packable=True))} datasets, not "
                         f"data.name={cfg.name}")
    return fmt.read(cfg, "train", resolve_root(cfg), None, True).subset(cfg.limit_train)


def _read_pair(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    fmt = _format(cfg)
    root = _root(fmt, cfg)
    train = fmt.read(cfg, "train", root, None, True)
    return train, fmt.read(cfg, "val", root, list(train.classes), True)


def _labels_of(dataset: Dataset) -> list[int]:
    return dataset.labels.tolist() if isinstance(dataset, ArrayDataset) else dataset.targets


def _select(dataset: Dataset, keep: list[int], labels: list[int], classes: list[str]) -> Dataset:
    """Samples `keep` of `dataset`, relabelled `labels`, over `classes`."""
    if isinstance(dataset, ArrayDataset):
        return ArrayDataset(dataset.images[torch.tensor(keep, dtype=torch.long)], torch.tensor(labels), classes)
    if isinstance(dataset, SegmentationDataset):
        raise ValueError("data.keep_classes / labels_per_class select images of classes: they are for "
                         "classification formats, not segmentation")
    samples = [(dataset.samples[i][0], label) for i, label in zip(keep, labels)]
    return ImageFileDataset(samples, classes, **dataset._options())


def keep_classes(dataset: Dataset, wanted: list) -> Dataset:
    """Only the images of the classes `wanted` names (indices or names), renumbered in that order."""
    kept = kept_class_indices(dataset.classes, wanted)
    new_label = {old: new for new, old in enumerate(kept)}
    keep = [i for i, label in enumerate(_labels_of(dataset)) if label in new_label]
    labels = [new_label[label] for label in _labels_of(dataset) if label in new_label]
    return _select(dataset, keep, labels, [dataset.classes[i] for i in kept])


def labels_per_class(dataset: Dataset, n: int, seed: int) -> Dataset:
    """n images of every class, drawn at random with `seed` (the same draw for the same data and seed), in the
    dataset's order; ValueError naming a class with fewer."""
    labels = torch.tensor(_labels_of(dataset))
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label, name in enumerate(dataset.classes):
        members = (labels == label).nonzero().flatten()
        if len(members) < n:
            raise ValueError(f"data.labels_per_class={n} but class {name!r} has {len(members)} training images")
        keep += members[torch.randperm(len(members), generator=generator)[:n]].tolist()
    keep.sort()
    return _select(dataset, keep, labels[keep].tolist(), list(dataset.classes))


def _restricted(cfg: DataConfig, dataset: Dataset, train: bool) -> Dataset:
    """data.keep_classes (both splits) and data.labels_per_class (training only) applied."""
    if cfg.keep_classes:
        dataset = keep_classes(dataset, cfg.keep_classes)
    if train and cfg.labels_per_class:
        dataset = labels_per_class(dataset, cfg.labels_per_class, cfg.subset_seed)
    return dataset


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """The (train, eval) datasets the config names (data.keep_classes / labels_per_class applied), cut to
    limit_train / limit_val."""
    train, val = _read_pair(cfg)
    train, val = _restricted(cfg, train, True), _restricted(cfg, val, False)
    return train.subset(cfg.limit_train), val.subset(cfg.limit_val)


def build_eval_dataset(cfg: DataConfig, classes: list[str] | None = None, split: str = "val") -> Dataset:
    """Only the evaluation split (data.val_split), cut to limit_val: for evaluating a trained model.

    classes: the class list the model was trained with (a deepres checkpoint stores it). With it, a folder,
    imagenet, list or packed dataset needs no training split: labels index `classes`, and a val folder may hold
    a subset of them. Without it the class list comes from the training split, as in training, except for a
    list dataset with data.class_names, imagenet without a train folder (the 1000 ImageNet-1k synsets, sorted,
    shipped with deepres), and the formats whose class list is their own (voc, cityscapes, ade20k, the transfer
    sets of deepres.data.readers.transfer). split="train": the training split read the same way (in order, cut to
    limit_train), e.g. for a teacher's logits on every training image."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    limit = cfg.limit_train if split == "train" else cfg.limit_val
    fmt = _format(cfg)
    root = _root(fmt, cfg)
    if cfg.keep_classes:  # the split as the format labels it, then the kept classes; a model's list must be them
        whole = replace(cfg, keep_classes=[], limit_train=0, limit_val=0)
        kept = _restricted(cfg, build_eval_dataset(whole, None, split), split == "train")
        if classes is not None and list(classes) != kept.classes:
            raise ValueError(f"data.keep_classes gives the classes {kept.classes[:5]}... but the model was trained "
                             f"with {list(classes)[:5]}...")
        return kept.subset(limit)
    if classes is None and not fmt.in_memory:
        classes = fmt.eval_classes(cfg, root) if fmt.eval_classes else None
        if classes is None:
            return _read_pair(cfg)[0 if split == "train" else 1].subset(limit)
    val = fmt.read(cfg, split, root, None if classes is None else list(classes), False)
    if classes is not None and len(classes) != val.num_classes:
        raise ValueError(f"data.name={cfg.name} has {val.num_classes} classes but the model was trained with "
                         f"{len(classes)}")
    return val.subset(limit)
