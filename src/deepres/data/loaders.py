"""Training and evaluation loaders: one iterator interface over two paths.

- In-memory sets (CIFAR, MNIST, synthetic) live on the training device as one uint8 tensor; each batch is
  gathered and augmented there with tensor ops (airbench style).
- File datasets (folders, lists, ImageNet) go through a torch DataLoader: workers decode and crop each image
  to a fixed size, the uint8 batch moves to the device, and the same batch augmentation runs there.

Every random choice comes from a generator seeded by (seed, epoch, rank, ...): the sample order, one seed per
sample for per-image crops, one seed per batch for flips/pad-crops/jitter. Nothing reads the global RNG, and
the result does not depend on the number of workers, so an epoch can be replayed exactly after a resume.
"""
import math
import os
import pickle
import signal
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

from deepres.core.config import DataConfig, validate_data_config
from deepres.core.device import local_processes, thread_plan
from deepres.core.preprocess import Preprocess, parse_eval_preset

from .augment import transforms as T
from .augment.autoaugment import AutoAugment
from .augment.seg_transforms import SegEvalTransform, SegTrainTransform, seg_eval_preprocess
from .datasets import Dataset, build_datasets, build_eval_dataset
from .images import init_decode_worker
from .registry import DatasetFormat, get_format, list_formats, stored_side

# Seed streams, so the order, per-item and per-batch draws never share a generator state.
_ORDER, _ITEM, _BATCH = 0, 1, 2


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def shard_indices(num_samples: int, *, train: bool, epoch: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's sample indices for one epoch.

    train: one permutation per (seed, epoch), shared by all ranks, strided by rank and cut so every rank has
    num_samples // world_size. eval: contiguous, in order, no padding, so the shards' union is the dataset."""
    if train:
        order = torch.randperm(num_samples, generator=_generator(seed, epoch, _ORDER))
        return order[rank::world_size][: num_samples // world_size]
    start, stop = rank * num_samples // world_size, (rank + 1) * num_samples // world_size
    return torch.arange(start, stop)


@dataclass(frozen=True)
class ItemTransform:
    """Per-image geometry to a fixed square: random resized crop, shorter side to a random size in
    `short_side_range` + random crop, or shorter side to `resize_to` + centre crop."""

    size: int  # output side, pixels
    resize_to: int = 0  # shorter side before the centre crop, pixels (unused with random_crop)
    random_crop: bool = False  # a random crop (needs the per-item generator): Inception-style, or see below
    interpolation: str = "bilinear"  # of the resize before the centre crop: "bilinear" or "bicubic" (antialiased)
    short_side_range: tuple[int, int] = (0, 0)  # with random_crop: scale jitter (data.short_side_range), pixels

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.random_crop and self.short_side_range[1]:
            low, high = self.short_side_range
            image = T.resize_shorter(image, int(torch.randint(low, high + 1, (1,), generator=generator)))
            top, left = (int(torch.randint(0, side - self.size + 1, (1,), generator=generator))
                         for side in image.shape[-2:])
            return T.crop(image, top, left, self.size, self.size)
        if self.random_crop:
            return T.random_resized_crop(image, self.size, generator)
        return T.resize_center_crop(image, self.resize_to, self.size, self.interpolation)


@dataclass(frozen=True)
class PairTransform:
    """Per-item geometry of a segmentation pair: `transform(image, mask[, generator]) -> (image, mask)` moves both
    together (deepres.data.augment.seg_transforms); random ones get a per-item generator like the random resized
    crop."""

    transform: Callable
    random_crop: bool = False  # draws random numbers: needs the per-item seed
    joint: ClassVar[bool] = True  # transforms the target too

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image, mask, generator) if self.random_crop else self.transform(image, mask)


@dataclass(frozen=True)
class BatchTransform:
    """uint8 batch on the device -> augmented, normalised float32 batch."""

    in_chans: int
    normalize: str  # "meanstd" or "mean"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0  # pixels
    hflip: bool = False
    color_jitter: float = 0.0
    pca_lighting: float = 0.0
    auto_augment: AutoAugment | None = None  # per-image policy on the uint8 batch, after the crop and flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images
        if self.crop_padding:
            x = T.pad_random_crop(x, self.crop_padding, generator)
        if self.hflip:
            x = T.random_hflip(x, generator)
        if self.auto_augment is not None:  # on the stored channels and uint8 values the ops are defined on
            x = self.auto_augment(x, generator)
        x = T.adapt_channels(x, self.in_chans).float()
        if self.color_jitter:
            x = T.color_jitter(x, generator, self.color_jitter, self.color_jitter, self.color_jitter)
        if self.pca_lighting:
            x = T.pca_lighting(x, generator, self.pca_lighting)
        if self.normalize == "mean":
            return T.subtract_mean(x, self.mean)
        return T.normalize(x, self.mean, self.std)


class _ItemSource(torch.utils.data.Dataset):
    """What DataLoader workers index: key (sample index, per-item seed) -> (uint8 image, label), or None for a bad
    image that evaluation drops (data.on_bad_image=skip; training gets a stand-in from the dataset instead)."""

    def __init__(self, dataset: Dataset, transform: ItemTransform | PairTransform | None, train: bool):
        self.dataset = dataset
        self.transform = transform
        self.train = train

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> "tuple[torch.Tensor, int] | _WorkerError | None":
        if get_worker_info() is None:
            return self._item(key)
        try:
            return self._item(key)
        except Exception as error:  # noqa: BLE001 - handed to the main process whole, see _WorkerError
            if not _WorkerError.can_carry(error):
                raise
            return _WorkerError(error)

    def _item(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        index, seed = key
        load = getattr(self.dataset, "load", None)  # file datasets: drop or substitute bad images
        item = load(index, substitute=self.train) if load is not None else self.dataset[index]
        if item is None:
            return None
        image, label = item
        if self.transform is not None:
            generator = torch.Generator().manual_seed(seed) if self.transform.random_crop else None
            if getattr(self.transform, "joint", False):  # a segmentation pair: the mask moves with the image
                image, label = self.transform(image, label, generator)
            else:
                image = self.transform(image, generator)
        return image.contiguous(), label


class _WorkerError:
    """An exception raised in a DataLoader worker, sent back as a batch and re-raised by Loader as itself.

    torch re-raises a worker's exception as `type(e)(message)` with the worker's traceback inside the message, so
    a one-line error (BadImageError naming the file) would become 20 lines ending in the file name."""

    def __init__(self, error: Exception):
        self.error = error

    @staticmethod
    def can_carry(error: Exception) -> bool:
        """Whether `error` survives the trip back (pickling) as the same type and message."""
        try:
            copy = pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 - any failure means: let torch report it its own way
            return False
        return type(copy) is type(error) and str(copy) == str(error)


def _collate(items: list) -> "tuple[torch.Tensor | None, torch.Tensor | None, int] | _WorkerError":
    """(images, labels, images dropped) of a batch; the dropped (None) items are left out, and a batch of only
    dropped items gives (None, None, dropped). A worker's error stands for the whole batch."""
    failed = next((item for item in items if isinstance(item, _WorkerError)), None)
    if failed is not None:
        return failed
    kept = [item for item in items if item is not None]
    if not kept:
        return None, None, len(items)
    if len({tuple(image.shape) for image, _ in kept}) > 1:  # segmentation eval images as stored: one batch each
        return [image[None] for image, _ in kept], [mask[None] for _, mask in kept], len(items) - len(kept)
    images, labels = default_collate(kept)
    return images, labels, len(items) - len(kept)


def _init_loader_worker(worker_id: int) -> None:
    """A DataLoader worker: one decode thread (init_decode_worker), deaf to Ctrl-C and to a SIGTERM that does not
    come from the training process.

    Ctrl-C and SLURM's SIGTERM reach every process of the job, but the training process stops only at its next
    optimizer step, after saving a checkpoint, and its workers must feed it until then; it stops them itself.
    SIGTERM from the training process (multiprocessing's terminate(), also at its exit) still ends a worker."""
    init_decode_worker(worker_id)
    # Forked with SIGINT and SIGTERM blocked (Loader.iter_from): ignoring SIGINT drops one already pending.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # Blocked here, before the worker starts any thread (threads inherit the mask), and taken by one thread below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_sigterm_from_parent, args=(os.getppid(),), daemon=True,
                     name="deepres-sigterm").start()


def _end_on_sigterm_from_parent(parent: int) -> None:
    while True:
        sender = signal.sigwaitinfo({signal.SIGTERM}).si_pid
        if sender == parent or os.getppid() != parent:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # the default action: end the process
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)


class _PlannedBatches:
    """DataLoader batch sampler that replays its loader's plan for the current epoch."""

    def __init__(self, loader: "Loader"):
        # A weak reference: a cycle Loader -> DataLoader -> sampler -> Loader would leave the workers to the
        # cyclic garbage collector, which tears their queues down first and then waits 5 s per worker to exit.
        self.loader = weakref.proxy(loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        # Not a generator: the plan and the first batch (Loader.iter_from) are read now, when the DataLoader
        # iterator is made, not at its first batch.
        order, seeds = self.loader._plan()
        size, first = self.loader.batch_size, self.loader._first_batch
        pairs = list(zip(order.tolist(), seeds.tolist()))
        return iter([pairs[start:start + size] for start in range(first * size, len(pairs), size)])


class Loader:
    """Iterates (images float32 (N, C, H, W) normalised, targets), both on `device`; targets are int64 labels (N,),
    or uint8 masks (N, H, W) for a segmentation format (whose eval images of different sizes come as lists of
    single-image batches).

    Train: shuffled per epoch, last incomplete batch dropped. Eval: in order, every sample of this rank's
    shard exactly once, except bad images dropped under data.on_bad_image=skip (batches may then be short, or
    left out when empty; `skipped` counts them for the pass). Call set_epoch(epoch) before iterating; a given
    (seed, epoch, rank) always yields the same batches."""

    def __init__(self, dataset: Dataset, *, batch_size: int, device: torch.device, train: bool, seed: int,
                 rank: int, world_size: int, item_transform: ItemTransform | None, batch_transform: BatchTransform,
                 on_device: bool, workers: int):
        self.dataset = dataset
        self.batch_size = batch_size
        self.dataset_size = len(dataset)
        self.device = device
        self.train = train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.item_transform = item_transform
        self.batch_transform = batch_transform
        self.epoch = 0
        self.skipped = 0  # bad images the last pass dropped (evaluation with data.on_bad_image=skip)
        self._first_batch = 0  # the batch the DataLoader's sampler starts at (iter_from)
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its sample order): batch_indices
        self.on_device = on_device
        self.workers = 0 if on_device else workers  # DataLoader worker processes (fit sizes its threads around them)
        if on_device:
            self._images = dataset.images.to(device)
            self._labels = dataset.labels.to(device)
        else:
            self._loader = DataLoader(
                _ItemSource(dataset, item_transform, train), batch_sampler=_PlannedBatches(self), collate_fn=_collate,
                num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                worker_init_fn=_init_loader_worker,
                # DataLoader draws its workers' base seed from this, not from the global RNG.
                generator=torch.Generator().manual_seed(seed))

    def over(self, dataset: Dataset) -> "Loader":
        """The same loader (batching, sharding, transforms, workers) over another dataset of the same images, e.g.
        one that also returns Cityscapes instance maps."""
        return Loader(dataset, batch_size=self.batch_size, device=self.device, train=self.train, seed=self.seed,
                      rank=self.rank, world_size=self.world_size, item_transform=self.item_transform,
                      batch_transform=self.batch_transform, on_device=self.on_device, workers=self.workers)

    @property
    def shard_size(self) -> int:
        """Samples this rank sees per epoch before batching."""
        if self.train:
            return self.dataset_size // self.world_size
        n, r, w = self.dataset_size, self.rank, self.world_size
        return (r + 1) * n // w - r * n // w

    def __len__(self) -> int:
        if self.train:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration replays."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sample indices, per-item seeds) for this rank and epoch, full batches only when training."""
        order = shard_indices(self.dataset_size, train=self.train, epoch=self.epoch, seed=self.seed,
                              rank=self.rank, world_size=self.world_size)
        if self.train:
            order = order[: len(self) * self.batch_size]
        if self.item_transform is not None and self.item_transform.random_crop:
            generator = _generator(self.seed, self.epoch, self.rank, _ITEM)
            seeds = torch.randint(0, 2**62, (len(order),), generator=generator)
        else:
            seeds = torch.zeros(len(order), dtype=torch.int64)
        return order, seeds

    def batch_indices(self, batch_index: int) -> torch.Tensor:
        """The dataset indices (int64, on the loader's device) of training batch `batch_index` of the current
        epoch: what train.kd_logits looks the stored teacher logits up by. A bad image's stand-in keeps its index."""
        if not self.train:
            raise ValueError("batch_indices is for training loaders: evaluation may drop bad images from a batch")
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, self._plan()[0].to(self.device))
        return self._order[1][batch_index * self.batch_size:(batch_index + 1) * self.batch_size]

    def _batch_generator(self, batch_index: int) -> torch.Generator | None:
        if not self.train:
            return None
        return _generator(self.seed, self.epoch, self.rank, _BATCH, batch_index)

    def _transform_items(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        transform = self.item_transform
        if not transform.random_crop:
            return transform(images)
        return torch.stack([transform(image, torch.Generator().manual_seed(int(seed)))
                            for image, seed in zip(images, seeds)])

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, first: int):
        """The current epoch's batches from batch `first` on, equal to those a whole iteration gives there (a
        checkpoint saved mid-epoch resumes this way); the batches before it are not read."""
        if not 0 <= first <= len(self):
            raise ValueError(f"first batch {first} is not in 0..{len(self)}")
        self.skipped = 0
        if not self.on_device:
            self._first_batch = first
            # Workers are forked here (the first time): SIGINT/SIGTERM stay blocked in this thread meanwhile, so a
            # worker starts with them blocked and a Ctrl-C cannot kill it before _init_loader_worker makes it deaf;
            # here they are delivered when unblocked.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                batches = iter(self._loader)  # the sampler reads _first_batch here
            finally:
                self._first_batch = 0
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            for batch_index, batch in enumerate(batches, start=first):
                if isinstance(batch, _WorkerError):
                    raise batch.error  # as the single-process path raises it: one line naming the file
                images, labels, dropped = batch
                self.skipped += dropped
                if images is None:  # every image of this batch was dropped
                    continue
                if isinstance(images, list):  # images of different sizes (segmentation eval): a list of batches
                    yield ([self.batch_transform(x.to(self.device, non_blocking=True)) for x in images],
                           [y.to(self.device, non_blocking=True) for y in labels])
                    continue
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                yield self.batch_transform(images, self._batch_generator(batch_index)), labels
            return
        order, seeds = self._plan()
        order_on_device = order.to(self.device)
        for batch_index in range(first, len(self)):
            batch = slice(batch_index * self.batch_size, (batch_index + 1) * self.batch_size)
            index = order_on_device[batch]
            images, labels = self._images[index], self._labels[index]
            if self.item_transform is not None:
                images = self._transform_items(images, seeds[batch])
            yield self.batch_transform(images, self._batch_generator(batch_index)), labels


# ---------------------------------------------------------------------------------------------- building
@dataclass(frozen=True)
class DataInfo:
    """What the data decides for the model and the run: set by build_loaders / build_eval_loader."""

    num_classes: int  # classifier outputs (data.num_classes, else the dataset's classes)
    in_chans: int  # channels the model sees (data.in_chans, else the images')
    classes: list[str]  # class names, index = label (the training split's, or the checkpoint's)
    train_size: int  # training images in all (after limit_train); 0 when only the eval split was read
    eval_size: int  # evaluation images in all (after limit_val)


def eval_preprocess(cfg: DataConfig, in_chans: int) -> Preprocess:
    """The eval transform of a data config as one Preprocess: the eval preset's resize and centre crop (none: the
    stored size of an in-memory set, else data.image_size), then the config's normalisation."""
    sizes = parse_eval_preset(cfg.eval_preset, cfg.image_size)
    if sizes is None:
        side = stored_side(cfg) or cfg.image_size
        sizes = (side, side)
    return Preprocess(resize=sizes[0], crop_size=sizes[1], interpolation="bilinear", mean=tuple(cfg.mean),
                      std=tuple(cfg.std), in_chans=in_chans, normalize=cfg.normalize)


def _check_process(seed: int, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _data_shape(cfg: DataConfig, dataset) -> tuple[int, int]:
    """(num_classes, in_chans) the model sees: the dataset's, unless the config sets them."""
    num_classes = dataset.num_classes
    if cfg.num_classes:
        if cfg.num_classes < num_classes:
            raise ValueError(f"data.num_classes={cfg.num_classes} but the dataset has {num_classes} classes")
        num_classes = cfg.num_classes
    in_chans = cfg.in_chans or dataset.in_chans
    if in_chans not in (1, 3) and in_chans != dataset.in_chans:
        raise ValueError(f"data.in_chans={in_chans}: images have {dataset.in_chans} channels; "
                         "only 1 <-> 3 conversion is supported")
    return num_classes, in_chans


def _checked_format(cfg: DataConfig) -> DatasetFormat:
    """cfg's format record, after checking the data section (a DataConfig made in Python is unchecked)."""
    validate_data_config(cfg)
    return get_format(cfg.name)


def _on_device(cfg: DataConfig, fmt: DatasetFormat) -> bool:
    if cfg.on_device == "yes" and not fmt.in_memory:
        raise ValueError(f"data.on_device=yes needs an in-memory dataset ({', '.join(list_formats(in_memory=True))}"
                         f"); data.name={cfg.name} is decoded per image, use auto or no")
    return fmt.in_memory and cfg.on_device != "no"


def _eval_loader(cfg: DataConfig, fmt: DatasetFormat, eval_set, in_chans: int, loader_args: dict) -> "Loader":
    """The evaluation loader applying eval_preprocess(cfg, in_chans): resize and centre crop per image, then
    normalisation per batch. Segmentation: seg_eval_preprocess(cfg, in_chans), the image resized to data.test_size
    (the mask as stored), batches of images of one size, else a list of single-image batches."""
    if fmt.masks:  # the Predictor runs the same SegEvalTransform from the same Preprocess
        pp = seg_eval_preprocess(cfg, in_chans)
        batches = BatchTransform(in_chans=pp.in_chans, normalize=pp.normalize, mean=pp.mean, std=pp.std)
        return Loader(eval_set, batch_size=cfg.eval_batch_size, train=False, batch_transform=batches,
                      item_transform=PairTransform(SegEvalTransform.from_preprocess(pp)), **loader_args)
    in_memory = fmt.in_memory
    pp = eval_preprocess(cfg, in_chans)
    # In-memory images already of the crop size (no eval preset: as stored) need no per-image step.
    as_stored = in_memory and pp.resize == pp.crop_size and tuple(eval_set.images.shape[-2:]) == (pp.crop_size,) * 2
    eval_items = None if as_stored else ItemTransform(size=pp.crop_size, resize_to=pp.resize,
                                                      interpolation=pp.interpolation)
    eval_batches = BatchTransform(in_chans=pp.in_chans, normalize=pp.normalize, mean=pp.mean, std=pp.std)
    eval_batches(torch.zeros(1, eval_set.in_chans, 1, 1, dtype=torch.uint8))  # mean/std vs channels
    return Loader(eval_set, batch_size=cfg.eval_batch_size, train=False, item_transform=eval_items,
                  batch_transform=eval_batches, **loader_args)


def build_eval_loader(cfg: DataConfig, device, *, classes: list[str] | None = None, seed: int = 0, rank: int = 0,
                      world_size: int = 1, split: str = "val"):
    """(eval_loader, info) reading only the evaluation split (see build_eval_dataset; `classes`: the class list
    the model was trained with); info (DataInfo) with train_size 0. For `deepres eval`. split="train": the
    training split through the same evaluation transform, in order."""
    _check_process(seed, rank, world_size)
    fmt = _checked_format(cfg)
    eval_set = build_eval_dataset(cfg, classes, split)
    num_classes, in_chans = _data_shape(cfg, eval_set)
    loader_args = dict(device=torch.device(device), seed=seed, rank=rank, world_size=world_size,
                       on_device=_on_device(cfg, fmt), workers=loader_workers(cfg.workers))
    info = DataInfo(num_classes=num_classes, in_chans=in_chans, classes=list(eval_set.classes), train_size=0,
                    eval_size=len(eval_set))
    return _eval_loader(cfg, fmt, eval_set, in_chans, loader_args), info


def eval_loader_of(dataset, cfg: DataConfig, device, *, in_chans: int | None = None) -> Loader:
    """An evaluation loader over image files read elsewhere (an ImageNet-C folder), through cfg's evaluation
    transform (data.eval_preset: "none" = resize and centre-crop to the stored side of cfg's in-memory format or
    to data.image_size, a no-op for images of that size; normalisation), in order, one process."""
    validate_data_config(cfg)
    in_chans = in_chans or cfg.in_chans or dataset.in_chans
    loader_args = dict(device=torch.device(device), seed=0, rank=0, world_size=1, on_device=False,
                       workers=loader_workers(cfg.workers))
    return _eval_loader(cfg, get_format("folder"), dataset, in_chans, loader_args)


def loader_workers(requested: int) -> int:
    """data.workers capped so that the workers of this node's processes leave each one a core to compute on
    (core.device.thread_plan): more processes than cores make the workers and the compute threads fight."""
    return thread_plan(requested, processes=local_processes())[0]


def build_loaders(cfg: DataConfig, device, *, seed: int = 0, rank: int = 0, world_size: int = 1):
    """(train_loader, eval_loader, info) for the config; info: num_classes, in_chans, classes, train_size,
    eval_size (whole dataset sizes, after limit_train / limit_val) as a DataInfo."""
    _check_process(seed, rank, world_size)
    fmt = _checked_format(cfg)
    train_set, eval_set = build_datasets(cfg)
    num_classes, in_chans = _data_shape(cfg, train_set)
    if cfg.pca_lighting and in_chans != 3:
        raise ValueError(f"data.pca_lighting needs RGB input, but in_chans={in_chans}")

    # File datasets need a fixed size per batch; in-memory sets keep their stored size unless asked.
    segmentation = fmt.masks
    if segmentation:  # scale, crop and flip move the mask with the image; the batch step only jitters colour
        if cfg.auto_augment:
            raise ValueError(f"data.auto_augment moves the image without its mask; data.name={cfg.name} is a "
                             f"segmentation format")
        if cfg.random_resized_crop or cfg.crop_padding or cfg.short_side_range[1]:
            raise ValueError(f"data.name={cfg.name} is a segmentation format: use data.scale_range and "
                             f"data.image_size (the crop) instead of data.random_resized_crop / crop_padding / "
                             f"short_side_range")
        train_items = PairTransform(SegTrainTransform.from_config(cfg), random_crop=True)
    elif cfg.random_resized_crop:
        train_items = ItemTransform(size=cfg.image_size, random_crop=True)
    elif cfg.short_side_range[1]:
        train_items = ItemTransform(size=cfg.image_size, random_crop=True, short_side_range=tuple(cfg.short_side_range))
    else:
        train_items = None if fmt.in_memory else ItemTransform(size=cfg.image_size, resize_to=cfg.image_size)
    common = dict(in_chans=in_chans, normalize=cfg.normalize, mean=tuple(cfg.mean), std=tuple(cfg.std))
    train_batches = BatchTransform(crop_padding=cfg.crop_padding, hflip=cfg.hflip and not segmentation,
                                   color_jitter=cfg.color_jitter, pca_lighting=cfg.pca_lighting,
                                   auto_augment=AutoAugment.from_spec(cfg.auto_augment, cfg.auto_augment_convention),
                                   **common)
    loader_args = dict(device=torch.device(device), seed=seed, rank=rank, world_size=world_size,
                       on_device=_on_device(cfg, fmt), workers=loader_workers(cfg.workers))
    eval_loader = _eval_loader(cfg, fmt, eval_set, in_chans, loader_args)
    train_loader = Loader(train_set, batch_size=cfg.batch_size, train=True, item_transform=train_items,
                          batch_transform=train_batches, **loader_args)
    if len(train_loader) == 0:
        raise ValueError(f"data.batch_size={cfg.batch_size} exceeds the {train_loader.shard_size} training images "
                         f"per process ({len(train_set)} in all, world_size={world_size}); no full batch")
    info = DataInfo(num_classes=num_classes, in_chans=in_chans, classes=list(train_set.classes),
                    train_size=len(train_set), eval_size=len(eval_set))
    return train_loader, eval_loader, info
