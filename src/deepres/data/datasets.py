"""From a DataConfig to the (train, eval) dataset pair: format dispatch and root resolution."""
from pathlib import Path

from .config import DataConfig
from .fetch import DATASETS
from .folders import ImageFileDataset, image_folder, image_list, imagenet_val, read_class_names
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


def _file_train_split(cfg: DataConfig, root: Path) -> ImageFileDataset:
    """The training split of a folder, imagenet or list dataset (it alone decides the class list)."""
    options = _file_options(cfg)
    if cfg.name == "list":
        classes = read_class_names(_under(root, cfg.class_names)) if cfg.class_names else None
        image_root = _under(root, cfg.image_root) or root
        return image_list(root / cfg.train_split, image_root, classes=classes, suffix=cfg.list_suffix, **options)
    return image_folder(root / cfg.train_split, class_depth=cfg.class_depth, **options)


def build_train_dataset(cfg: DataConfig) -> ImageFileDataset:
    """Only the training split of a file dataset (folder, imagenet, list), cut to limit_train."""
    if cfg.name not in ("folder", "imagenet", "list"):
        raise ValueError(f"build_train_dataset reads folder, imagenet or list datasets, not data.name={cfg.name}")
    return _file_train_split(cfg, resolve_root(cfg)).subset(cfg.limit_train)


def _read_pair(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    name = cfg.name
    if name == "synthetic":
        num_train, num_val = cfg.synthetic_size
        shape = dict(num_classes=cfg.num_classes or 10, image_size=cfg.synthetic_image_size,
                     in_chans=cfg.in_chans or 3)
        return make_synthetic(num_train, seed=1, **shape), make_synthetic(num_val, seed=2, **shape)
    root = resolve_root(cfg)
    if name in ("mnist", "fashion_mnist"):
        read = read_mnist if name == "mnist" else read_fashion_mnist
        return read(root, cfg.train_split), read(root, cfg.val_split)
    if name == "cifar10":
        return read_cifar10(root, cfg.train_split), read_cifar10(root, cfg.val_split)
    if name == "cifar100":
        return (read_cifar100(root, cfg.train_split, coarse=cfg.coarse_labels),
                read_cifar100(root, cfg.val_split, coarse=cfg.coarse_labels))
    options = _file_options(cfg)
    if name == "folder":
        train = _file_train_split(cfg, root)
        val = image_folder(root / cfg.val_split, class_depth=cfg.class_depth, **options)
        if val.classes != train.classes:
            missing = sorted(set(train.classes) ^ set(val.classes))
            raise ValueError(f"class folders differ between {root / cfg.train_split} and {root / cfg.val_split} "
                             f"(e.g. {missing[:3]}); both splits need the same classes")
        return train, val
    if name == "imagenet":
        train = _file_train_split(cfg, root)
        val = imagenet_val(root / cfg.val_split, train.classes, ground_truth=_under(root, cfg.val_ground_truth),
                           synset_map=_under(root, cfg.synset_map), **options)
        return train, val
    if name == "packed":
        from .packed import read_packed

        train, val = read_packed(root / cfg.train_split, **options), read_packed(root / cfg.val_split, **options)
        if val.classes != train.classes:
            raise ValueError(f"packed splits {root / cfg.train_split} and {root / cfg.val_split} have different "
                             f"class lists; pack both splits from one source in one `deepres data pack` run")
        return train, val
    if name == "list":
        image_root = _under(root, cfg.image_root) or root
        train = _file_train_split(cfg, root)
        val = image_list(root / cfg.val_split, image_root, classes=train.classes, suffix=cfg.list_suffix,
                         **options)
        return train, val
    raise ValueError(f"unknown data.name {name!r}; expected one of {', '.join(FORMATS)}")


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """The (train, eval) datasets the config names, cut to limit_train / limit_val."""
    if cfg.name not in FORMATS:
        raise ValueError(f"unknown data.name {cfg.name!r}; expected one of {', '.join(FORMATS)}")
    if cfg.limit_train < 0 or cfg.limit_val < 0:
        raise ValueError(f"data.limit_train / limit_val must be >= 0, got {cfg.limit_train} / {cfg.limit_val}")
    train, val = _read_pair(cfg)
    return train.subset(cfg.limit_train), val.subset(cfg.limit_val)
