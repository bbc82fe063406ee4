"""From a DataConfig to the (train, eval) dataset pair: format dispatch and root resolution."""
from pathlib import Path

from deepres.core.config import DataConfig, validate_data_config

from .fetch import DATASETS
from .imagenet_classes import imagenet_synsets
from .folders import ImageFileDataset, image_folder, image_list, imagenet_val, read_class_names, relabel
from .packed_reader import read_packed
from .formats import ArrayDataset, make_synthetic, read_cifar10, read_cifar100, read_fashion_mnist, read_mnist

FORMATS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "folder", "imagenet", "list", "packed", "synthetic")

Dataset = ArrayDataset | ImageFileDataset


def resolve_root(cfg: DataConfig) -> Path:
    """data.root, or the format's default location (the Debian Fashion-MNIST folder); else a clear error."""
    if cfg.root:
        root = Path(cfg.root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"data.root {root} does not exist")
        return root
    key = cfg.name.replace("_", "-")
    for directory in DATASETS[key].local_dirs if key in DATASETS else ():
        if Path(directory).is_dir():
            return Path(directory)
    hint = f" (`deepres data get {key} --dest DIR` fetches it)" if key in DATASETS else ""
    raise ValueError(f"data.root is not set and data.name={cfg.name} has no default location; "
                     f"set data.root=DIR{hint}")


def _under(root: Path, value: str) -> Path | None:
    """A config path, relative to root unless absolute; None when unset."""
    return root / Path(value).expanduser() if value else None


def _file_options(cfg: DataConfig) -> dict:
    return dict(on_bad_image=cfg.on_bad_image, bad_image_cap=cfg.bad_image_cap, exif_rotate=cfg.exif_rotate,
                max_pixels=cfg.max_image_pixels)


def _file_train_split(cfg: DataConfig, root: Path) -> Dataset:
    """The training split of a folder, imagenet, list or packed dataset (it alone decides the class list)."""
    options = _file_options(cfg)
    if cfg.name == "list":
        classes = read_class_names(_under(root, cfg.class_names)) if cfg.class_names else None
        image_root = _under(root, cfg.image_root) or root
        return image_list(root / cfg.train_split, image_root, classes=classes, suffix=cfg.list_suffix, **options)
    if cfg.name == "packed":
        return read_packed(root / cfg.train_split, **options)
    return image_folder(root / cfg.train_split, class_depth=cfg.class_depth, **options)


def build_train_dataset(cfg: DataConfig) -> ImageFileDataset:
    """Only the training split of a file dataset (folder, imagenet, list), cut to limit_train."""
    validate_data_config(cfg)
    if cfg.name not in ("folder", "imagenet", "list"):
        raise ValueError(f"build_train_dataset reads folder, imagenet or list datasets, not data.name={cfg.name}")
    return _file_train_split(cfg, resolve_root(cfg)).subset(cfg.limit_train)


def _read_in_memory(cfg: DataConfig, split: str) -> ArrayDataset | None:
    """The "train" or "val" split of an in-memory format (each split is its own file); None for file formats."""
    name = cfg.name
    if name == "synthetic":
        num_train, num_val = cfg.synthetic_size
        shape = dict(num_classes=cfg.num_classes or 10, image_size=cfg.synthetic_image_size,
                     in_chans=cfg.in_chans or 3)
        if split == "train":
            return make_synthetic(num_train, seed=1, **shape)
        return make_synthetic(num_val, seed=2, **shape)
    if name not in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        return None
    root = resolve_root(cfg)
    split_name = cfg.train_split if split == "train" else cfg.val_split
    if name in ("mnist", "fashion_mnist"):
        return (read_mnist if name == "mnist" else read_fashion_mnist)(root, split_name)
    if name == "cifar10":
        return read_cifar10(root, split_name)
    return read_cifar100(root, split_name, coarse=cfg.coarse_labels)


def _read_val(cfg: DataConfig, root: Path, classes: list[str], *, training: bool) -> Dataset:
    """The evaluation split of a file dataset with labels indexing `classes`. For training (`classes` from the
    training split) a folder or packed val split must have exactly those classes; for evaluating a trained model
    a val folder may hold a subset of them."""
    options = _file_options(cfg)
    val_dir = root / cfg.val_split
    if cfg.name == "imagenet":
        return imagenet_val(val_dir, classes, ground_truth=_under(root, cfg.val_ground_truth),
                            synset_map=_under(root, cfg.synset_map), **options)
    if cfg.name == "list":
        return image_list(val_dir, _under(root, cfg.image_root) or root, classes=classes, suffix=cfg.list_suffix,
                          **options)
    if cfg.name == "packed":
        val = read_packed(val_dir, **options)
        if val.classes != classes:
            against = root / cfg.train_split if training else "the model's classes"
            raise ValueError(f"packed split {val_dir} has a different class list from {against}; pack both "
                             f"splits from one source in one `deepres data pack` run")
        return val
    val = image_folder(val_dir, class_depth=cfg.class_depth, **options)
    if val.classes == classes:
        return val
    unknown = sorted(set(val.classes) - set(classes))
    if training or unknown:
        differ = unknown or sorted(set(classes) - set(val.classes))
        against = root / cfg.train_split if training else f"the model's {len(classes)} classes"
        why = "both splits need the same classes" if training else "the val split has classes the model lacks"
        raise ValueError(f"class folders differ between {against} and {val_dir} (e.g. {differ[:3]}); {why}")
    return relabel(val, classes)  # a subset onto the model's class list


def _read_pair(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    train = _read_in_memory(cfg, "train")
    if train is not None:
        return train, _read_in_memory(cfg, "val")
    root = resolve_root(cfg)
    train = _file_train_split(cfg, root)
    return train, _read_val(cfg, root, train.classes, training=True)


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """The (train, eval) datasets the config names, cut to limit_train / limit_val."""
    validate_data_config(cfg)
    train, val = _read_pair(cfg)
    return train.subset(cfg.limit_train), val.subset(cfg.limit_val)


def build_eval_dataset(cfg: DataConfig, classes: list[str] | None = None) -> Dataset:
    """Only the evaluation split (data.val_split), cut to limit_val: for evaluating a trained model.

    classes: the class list the model was trained with (a deepres checkpoint stores it). With it, a folder,
    imagenet, list or packed dataset needs no training split: labels index `classes`, and a val folder may hold
    a subset of them. Without it the class list comes from the training split, as in training, except for a
    list dataset with data.class_names, and imagenet without a train folder: the 1000 ImageNet-1k synsets, sorted
    (shipped with deepres)."""
    validate_data_config(cfg)
    val = _read_in_memory(cfg, "val")
    if val is None:
        root = resolve_root(cfg)
        if classes is None and cfg.name == "imagenet" and not (root / cfg.train_split).is_dir():
            classes = imagenet_synsets()
        if classes is None and cfg.name == "list" and cfg.class_names:
            classes = read_class_names(_under(root, cfg.class_names))
        if classes is None:
            return _read_pair(cfg)[1].subset(cfg.limit_val)
        val = _read_val(cfg, root, list(classes), training=False)
    elif classes is not None and len(classes) != val.num_classes:
        raise ValueError(f"data.name={cfg.name} has {val.num_classes} classes but the model was trained with "
                         f"{len(classes)}")
    return val.subset(cfg.limit_val)
