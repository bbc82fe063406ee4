"""The training config: a dataclass tree loaded from a YAML recipe and overridden by `--set a.b=c`.

A recipe is a YAML mapping with the blocks below (model, data, optim, schedule, train, eval, run, expect);
`base: other.yaml` (a path relative to the recipe, or a recipe name) inherits another recipe first.
Every key and value is checked against the dataclass field types (deepres.core.typed); unknown keys fail with
the full dotted key, the file, and close matches. `config_to_dict` / `config_from_dict` round-trip exactly; the
resolved config is stored in every run directory (config.yaml) and inside every checkpoint.
"""
from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .preprocess import parse_eval_preset
from .typed import Schema, deep_merge, plain, read_yaml_mapping

# Recipes shipped with the repository: <repo>/recipes/<dataset>/<name>.yaml (DEEPRES_RECIPES overrides, e.g.
# for a non-editable install where the repository is elsewhere)
RECIPES_DIR = Path(os.environ.get("DEEPRES_RECIPES") or Path(__file__).resolve().parents[3] / "recipes")


# The dataset formats deepres reads (deepres.data registers one record for each; a test keeps the two equal)
DatasetName = Literal["fashion_mnist", "mnist", "cifar10", "cifar100", "folder", "imagenet", "list", "packed",
                      "synthetic", "pairs", "voc", "cityscapes", "ade20k", "food101", "cub200", "stanford_cars",
                      "flowers102", "pets", "aircraft"]


@dataclass
class ModelConfig:
    name: str = "resnet20"  # a registered model (see `deepres models`)
    num_classes: int = 0  # classifier outputs; 0 = from the data
    in_chans: int = 0  # input channels; 0 = from the data
    drop_rate: float = 0.0  # dropout probability before the classifier
    zero_init_last: bool = False  # zero the last BN gamma in each residual block (Goyal et al. 2017)
    # BatchNorm momentum for every BN layer: None = the model's own (PyTorch default 0.1), a float in (0, 1],
    # or "dynamic": cumulative average 1/(1+n) over the batches of the current epoch, reset at each epoch start
    bn_momentum: float | str | None = None
    kwargs: dict = field(default_factory=dict)  # extra builder overrides, e.g. {shortcut: B, bn_after_add: true}
    # Keep every BatchNorm in eval mode while training: running statistics frozen, affine weights still trained
    # (ademxapp fine-tunes its segmentation models this way)
    freeze_bn: bool = False
    # Initial weights of a new run: published weights `arch.tag` (resnet50.tv2_in1k), a run directory or a checkpoint
    # / state dict file. A classifier that does not fit is dropped; a segmentation model given a classifier's weights
    # loads them into its backbone. "" = random init
    pretrained: str = ""
    # Fine-tuning: stop gradients to, and keep in eval mode, the stem (0) or the stem and stages 1..k (k), as
    # mmpretrain's frozen_stages; -1 = train everything
    frozen_stages: int = -1


@dataclass
class DataConfig:
    # Dataset format, a record of deepres.data's format registry (`deepres.data.list_formats()`)
    name: DatasetName = "fashion_mnist"
    root: str = ""  # dataset directory; "" = the format's default location (e.g. the Debian Fashion-MNIST path)
    train_split: str = "train"  # folder/list: sub-folder or list file (relative to root) for training
    val_split: str = "val"  # folder/list: sub-folder or list file for evaluation ("test" for CIFAR/MNIST-style sets)
    # Transfer sets name their own splits: train/val read food101, cub200, stanford_cars train/test, pets trainval/test,
    # flowers102 and aircraft train/val (both also take trainval and test: the usual fine-tuning pair)
    num_classes: int = 0  # 0 = take it from the dataset
    in_chans: int = 0  # 0 = take it from the dataset (1 for MNIST-style, 3 otherwise)
    # Training-time augmentation
    image_size: int = 224  # train crop side, pixels
    random_resized_crop: bool = False  # Inception-style crop (scale 0.08-1, ratio 3/4-4/3) instead of pad-and-crop
    crop_padding: int = 0  # pad-and-random-crop padding, pixels (4 for CIFAR); 0 = off
    hflip: bool = True  # random horizontal flip, p=0.5
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 = off
    pca_lighting: float = 0.0  # AlexNet PCA lighting alphastd (0.1 in fb.resnet.torch); 0 = off
    # AutoAugment family on the uint8 training batch, a different draw per image (deepres.data.autoaugment):
    # "" = off, "autoaugment" (the ImageNet policy), "randaugment:N:M" (N ops at magnitude M; "randaugment" =
    # 2:9), "trivialaugment"
    auto_augment: str = ""
    # magnitude mapping, fill, policy table and op set: "torchvision" (transforms/autoaugment.py, M a bin of 31) or
    # "tf" (tensorflow/tpu efficientnet autoaugment.py, M a level 0..10)
    auto_augment_convention: Literal["torchvision", "tf"] = "torchvision"
    # Evaluation transform: "none" (use images as stored), "224_256" (shorter side 256, center 224),
    # "224_256a" (Assemble-ResNet: shorter side 257, center 256), "256_292" (Assemble-ResNet's Big-Little models:
    # shorter side 292, center 256), or "crop_pct:0.875" (resize image_size/crop_pct)
    eval_preset: str = "none"
    # Normalisation: "meanstd" ((x/255 - mean)/std) or "mean" (x - mean*255, neon-style plain mean subtraction)
    normalize: Literal["meanstd", "mean"] = "meanstd"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # per channel, 0-1 scale
    std: tuple[float, ...] = (0.229, 0.224, 0.225)  # per channel, 0-1 scale
    # Loading
    batch_size: int = 128  # per process; global batch = batch_size × processes × train.grad_accum_steps
    eval_batch_size: int = 256
    workers: int = 2  # DataLoader worker processes for folder datasets
    # "auto": small sets (CIFAR/MNIST-sized) live on the training device as uint8; "yes"/"no"
    on_device: Literal["auto", "yes", "no"] = "auto"
    on_bad_image: Literal["error", "skip"] = "error"
    bad_image_cap: int = 100  # with skip: stop after this many bad images
    exif_rotate: bool = False  # apply EXIF orientation; off for ImageNet parity
    limit_train: int = 0  # use only the first N training images (0 = all); for smoke runs
    limit_val: int = 0  # use only the first N evaluation images (0 = all)
    # Class subsets (e.g. pre-train on Fashion-MNIST classes 0-4, fine-tune on 5-9): keep only these classes, given
    # as indices or names of the format's class list, in both splits, renumbered 0..k-1 in the order given; [] = all
    keep_classes: list[int | str] = field(default_factory=list)
    # Few labels: keep this many training images of each class, drawn with data.subset_seed (0 = all)
    labels_per_class: int = 0
    subset_seed: int = 0
    synthetic_size: tuple[int, int] = (512, 128)  # synthetic: (train, val) image counts
    synthetic_image_size: int = 32  # synthetic: image side, pixels
    max_image_pixels: int = 89_478_485  # width*height above this is a bad image (replaces Pillow's bomb limit)
    # Format-specific; relative paths are taken relative to root
    # folder/imagenet: folder levels that name a class (1: n01440764/, 2: a/abbey/); 0 = every folder holding images
    class_depth: int = 0
    image_root: str = ""  # list: folder the listed paths are relative to; "" = root
    list_suffix: str = ""  # list: appended to each listed path (".jpg" for Food-101's meta/train.txt)
    class_names: str = ""  # list: class-name file, "name" or "name index" per line; "" = "0".."K-1"
    # imagenet with a flat val folder: ILSVRC2012_validation_ground_truth.txt (needs synset_map) or LOC_val_solution.csv
    val_ground_truth: str = ""
    synset_map: str = ""  # imagenet with the .txt ground truth: synsets in ILSVRC2012 id order, one per line
    coarse_labels: bool = False  # cifar100: the 20 superclasses instead of the 100 classes
    # Segmentation formats (pairs, voc, cityscapes, ade20k): uint8 masks, 255 = ignore; image and mask move together
    scale_range: tuple[float, float] = (1.0, 1.0)  # train: random rescale factor (mmseg 0.5-2.0, ademxapp 0.7-1.3)
    base_size: int = 0  # the factors scale an image resized to base_size on its `base_side` (0: its stored size)
    base_side: Literal["longer", "shorter"] = "longer"  # the side base_size and test_size set
    cat_max_ratio: float = 1.0  # train crop: redraw (up to 10 times) while one class fills more than this; 1 = off
    test_size: int = 0  # eval: resize the image's `base_side` to this (0: as stored); scored at the stored size
    sbd_root: str = ""  # voc train_split=train_aug: the SBD folder (benchmark_RELEASE), relative to root
    extra: dict = field(default_factory=dict)  # free-form keys for formats added outside deepres.data


@dataclass
class OptimConfig:
    name: Literal["sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamw"] = "sgd"
    # Peak lr. lr_scaling "none": for the global batch as the recipe runs it (data.batch_size × processes ×
    # grad_accum_steps); "linear": for lr_base_batch images, multiplied by global batch / lr_base_batch
    # (Goyal et al. 2017), so the same recipe keeps its meaning on 1 or 64 GPUs
    lr: float = 0.1
    lr_scaling: Literal["none", "linear"] = "none"
    lr_base_batch: int = 256  # images the lr is given for when lr_scaling is "linear"
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd only
    weight_decay: float = 1e-4  # L2 coefficient (adamw: decoupled decay, multiplied by lr)
    wd_exclude_bn_bias: bool = False  # no weight decay on BN weights and biases (every param with ndim <= 1)
    # Per-group multipliers (mmseg's paramwise_cfg): parameters under the model's head modules (a segmentation
    # model's classifier / aux_classifier) get lr x head_lr_mult; conv/linear biases lr x bias_lr_mult and weight
    # decay x bias_decay_mult (ademxapp: biases x2 lr, no decay)
    head_lr_mult: float = 1.0
    bias_lr_mult: float = 1.0
    bias_decay_mult: float = 1.0
    # Layer-wise lr decay: lr x layer_decay^(S + 1 - depth), depth 0 the stem, 1..S the stages, S + 1 the head
    # (so the head keeps the full lr and each earlier stage gets layer_decay times the next one's); 1.0 = off
    layer_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float | None = None  # denominator term; None = the optimizer's default (adam 1e-8, adagrad 1e-10, ...)
    alpha: float | None = None  # squared-gradient smoothing: rmsprop alpha (0.99), adadelta rho (0.9); None = default


@dataclass
class ScheduleConfig:
    name: Literal["multistep", "step", "cosine", "linear", "constant", "poly"] = "multistep"
    unit: Literal["iter", "epoch"] = "iter"  # unit of `milestones` and `step_size`: optimizer steps or epochs
    milestones: list[int] = field(default_factory=list)  # multistep: lr *= gamma at each milestone (in `unit`)
    step_size: int = 30  # step: lr *= gamma every step_size `unit`s
    gamma: float = 0.1  # decay factor at each milestone/step
    warmup_iters: int = 0  # linear warmup, optimizer steps; 0 = off
    warmup_start_factor: float = 0.1  # warmup starts at lr × this and reaches lr at warmup_iters
    # ResNet-110 trick (He et al. 2015, sec. 4.2): a constant warm_start_lr for the first warm_start_iters
    # optimizer steps, then the normal schedule (milestones still count from step 0); 0 = off
    warm_start_lr: float = 0.0
    warm_start_iters: int = 0
    min_lr: float = 0.0  # cosine/linear/poly: lr reached at the last step
    power: float = 0.9  # poly: lr = min_lr + (lr - min_lr)(1 - step/total)^power (mmseg, torchvision's reference)


@dataclass
class TrainConfig:
    epochs: int = 90  # passes over the training set; ignored when max_iters > 0
    max_iters: int = 0  # total optimizer steps (0 = epochs decide); the CIFAR paper schedule stops at 64k
    # softmax cross-entropy, sigmoid BCE on (mixed) one-hot targets (RSB A3), or (segmentation) ademxapp's
    # bootstrapped cross-entropy: only pixels with p(target) <= bootstrap_threshold, at least the
    # bootstrap_min_kept hardest per batch
    loss: Literal["ce", "bce", "bootstrap"] = "ce"
    bootstrap_threshold: float = 0.6
    bootstrap_min_kept: int = 256
    aux_weight: float = 0.5  # segmentation: weight of the auxiliary head's loss (models built with one)
    label_smoothing: float = 0.0  # probability mass spread uniformly over all classes
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of whole images; 0 = off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) box pasting; 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed at all (when an alpha > 0)
    mix_switch_prob: float = 0.5  # with both alphas > 0: probability of cutmix rather than mixup
    mixup_per_sample: bool = False  # mixup: one lam ~ Beta(alpha, alpha) per image (Assemble-ResNet), not per batch
    # Online knowledge distillation: a teacher (run directory, checkpoint, `arch.tag`) run on every (mixed) batch;
    # loss = kd_ce_weight · CE(targets) + kd_weight · T² · soft CE(student/T, softmax(teacher/T)), T = kd_temperature
    kd_teacher: str = ""
    # Offline distillation: a file of the teacher's logits per training image (`deepres teacher-logits`), looked
    # up by each batch's image indices; the teacher's softened distributions are mixed with the labels' lam
    kd_logits: str = ""
    kd_temperature: float = 1.0
    kd_weight: float = 1.0
    kd_ce_weight: float = 1.0
    ema_decay: float = 0.0  # exponential moving average of weights and buffers, per optimizer step; 0 = off
    grad_clip_norm: float = 0.0  # clip the global gradient L2 norm to this; 0 = off
    # DropBlock keep probability at the end of training, reached linearly from dropblock_keep_start over all
    # optimizer steps (Assemble-ResNet: 1.0 -> 0.9 from scratch, 0.9 -> 0.7 fine-tuning); acts on the model's
    # DropBlock2d modules (model.kwargs {dropblock: true}); both 1.0 = off
    dropblock_keep: float = 1.0
    dropblock_keep_start: float = 1.0
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    # autocast dtype. auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with AVX-512 BF16 or
    # AMX), fp32 elsewhere (an AVX2 CPU emulates bf16 about 10x slower than fp32); fp16 needs CUDA (GradScaler)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = False  # NHWC memory format for model and inputs
    sync_bn: bool = False  # with several processes (CUDA): BatchNorm statistics over the global batch (SyncBatchNorm)
    compile: bool = False  # torch.compile the model for training (checkpoints store the bare model)
    # with compile on CPU: BatchNorm2d's training forward/backward in the form inductor's CPU code runs fastest
    # (train/compiled_bn.py; same results within float rounding, same state-dict keys); false = PyTorch's own
    inductor_bn: bool = True
    # At the end of a finished `deepres train` run of a classifier, calibrate int8 on the best (else last) checkpoint
    # and store the activation ranges and their top-1 agreement with fp32 in it (`deepres calibrate` does it for any
    # checkpoint); predict and init_model then run int8 by default where the agreement is >= 99.5% and the CPU has
    # VNNI/AMX. A calibration that fails is logged and leaves the run as it was.
    calibrate_int8: bool = True
    int8_calibration_images: int = 256  # training images the activation ranges are observed on
    int8_agreement_images: int = 1000  # evaluation images the int8-vs-fp32 top-1 agreement is measured on
    seed: int = 0  # seeds torch, numpy, random, the data order and augmentation
    deterministic: bool = False  # torch.use_deterministic_algorithms; bit-exact resume on CPU
    nonfinite_patience: int = 5  # stop after this many non-finite losses in a row (those steps are skipped)
    eval_every_epochs: int = 1  # evaluate every N epochs (and always after the last)
    log_every_iters: int = 50  # step-level metrics (and a progress line when the bar is off), optimizer steps
    # also save checkpoints/last every N optimizer steps, mid-epoch (long ImageNet epochs); 0 = at epoch ends only
    checkpoint_every_iters: int = 0
    progress: bool = True  # tqdm bar per epoch (only when stderr is a terminal)


# Largest test-time view side, pixels: a 4096x4096 RGB float32 batch of one is already 0.2 GB, and a typo such as
# 100000 would ask for terabytes.
MAX_TEST_SCALE = 4096


@dataclass
class EvalConfig:
    scales: list[int] = field(default_factory=list)  # extra test resolutions (pixels) averaged with the base one
    flip: bool = False  # also average predictions on the horizontally flipped image
    # Segmentation test-time modes (softmax averaged over every view)
    mode: Literal["whole", "slide"] = "whole"  # one pass over the whole image, or sliding windows (mmseg)
    crop: int = 0  # slide: window side, pixels (0 = data.image_size)
    stride: int = 0  # slide: window step, pixels (0 = two thirds of the window)
    scale_ratios: list[float] = field(default_factory=list)  # multi-scale: factors of the test size (mmseg 0.5-1.75)
    test_steps: int = 1  # ademxapp shift-and-stitch: k > 1 runs k x k passes shifted by output_stride / k pixels


@dataclass
class RunConfig:
    out_dir: str = "runs"  # parent directory of run directories
    name: str = ""  # run directory name under out_dir; "" = from the recipe name (e.g. cifar10-resnet20)
    keep: Literal["last", "last+best"] = "last+best"  # checkpoints kept: last, and best by top-1
    recipe: str = ""  # the recipe file this config was loaded from (set by load_config)


@dataclass
class ExpectConfig:
    accuracy: float = 0.0  # test accuracy (%) this recipe is expected to reach, as `metric`
    metric: Literal["top1", "top5", "miou", "pixel_acc"] = "top1"  # miou / pixel_acc: segmentation (%)
    note: str = ""  # where that number comes from (paper, table, hardware, number of runs)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    expect: ExpectConfig = field(default_factory=ExpectConfig)


# Keys that may differ between a run and its --resume: they do not change the trained weights.
RESUME_MAY_DIFFER = ("run", "expect", "eval", "train.progress", "train.log_every_iters",
                     "train.eval_every_epochs", "train.checkpoint_every_iters", "train.calibrate_int8",
                     "train.int8_calibration_images", "train.int8_agreement_images", "data.root", "data.workers",
                     "data.eval_batch_size")


# ---------------------------------------------------------------------------------------------- loading
SCHEMA = Schema(Config, kind="config", free=("model.kwargs", "data.extra"))


def load_config(path_or_name: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a recipe (file path or name under recipes/), apply `a.b=c` overrides, type-check, validate."""
    path = resolve_recipe(path_or_name)
    raw = SCHEMA.apply_overrides(_load_recipe_tree(path, chain=()), overrides)
    cfg = SCHEMA.instantiate(SCHEMA.check(raw, str(path)))
    if not cfg.run.recipe:
        cfg.run.recipe = str(path)
    if not cfg.run.name:
        cfg.run.name = _default_run_name(path)
    validate_config(cfg)
    return cfg


def resolve_recipe(path_or_name: str | Path) -> Path:
    """A recipe path as given, or a name like `cifar10/resnet20` under the repository's recipes/ directory."""
    p = Path(path_or_name)
    candidates = [p, p.with_name(p.name + ".yaml"), RECIPES_DIR / p, RECIPES_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    close = difflib.get_close_matches(str(path_or_name), list_recipes(), n=3, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else f"; recipes: {', '.join(list_recipes()) or 'none'}"
    raise FileNotFoundError(f"recipe {str(path_or_name)!r} not found (looked in . and {RECIPES_DIR}){hint}")


def list_recipes() -> list[str]:
    """Names of the recipes shipped under recipes/ (e.g. 'cifar10/resnet20')."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))


def _default_run_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(RECIPES_DIR).with_suffix("")).replace("/", "-")
    except ValueError:
        return path.stem


def _load_recipe_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    """Read one YAML recipe, check it against the schema, and merge it over its `base` (if any)."""
    real = path.resolve()
    if real in chain:
        raise ValueError(f"recipe base cycle: {' -> '.join(str(p) for p in (*chain, real))}")
    raw = read_yaml_mapping(path, "recipe")
    if not raw:  # else it would silently train the schema's defaults (a 90-epoch run)
        raise ValueError(f"{path}: the recipe sets nothing (an empty file or mapping); give at least a 'base' or "
                         "the keys that differ from the defaults")
    base = raw.pop("base", None)
    SCHEMA.check(raw, str(path))  # unknown keys and bad types name this file
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ValueError(f"{path}: 'base' must be a recipe path or name, got {base!r}")
    base_path = path.parent / base
    base_path = base_path if base_path.is_file() else resolve_recipe(base)
    merged = _load_recipe_tree(base_path, (*chain, real))
    deep_merge(merged, raw)
    return merged


# ------------------------------------------------------------------------------------------ validation


def validate_config(cfg: Config) -> None:
    """Range checks the types cannot express; raises ValueError naming the key and the value."""

    def need(ok: bool, key: str, value: Any, rule: str):
        if not ok:
            raise ValueError(f"config {key}={value!r}: {rule}")

    m, o, s, t = cfg.model, cfg.optim, cfg.schedule, cfg.train
    need(bool(m.name), "model.name", m.name, "name a registered model")
    need(m.num_classes >= 0 and m.in_chans >= 0, "model.num_classes/in_chans", (m.num_classes, m.in_chans),
         "must be >= 0 (0 = from the data)")
    need(0.0 <= m.drop_rate < 1.0, "model.drop_rate", m.drop_rate, "must be in [0, 1)")
    bn = m.bn_momentum
    need(bn is None or bn == "dynamic" or (isinstance(bn, float) and 0.0 < bn <= 1.0), "model.bn_momentum", bn,
         'must be null, a float in (0, 1], or "dynamic"')
    need(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    need(0.0 <= o.momentum < 1.0, "optim.momentum", o.momentum, "must be in [0, 1)")
    need(not o.nesterov or (o.name == "sgd" and o.momentum > 0), "optim.nesterov", o.nesterov,
         "needs optim.name=sgd and optim.momentum > 0")
    need(s.milestones == sorted(s.milestones), "schedule.milestones", s.milestones, "must be increasing")
    need(s.step_size > 0, "schedule.step_size", s.step_size, "must be > 0")
    need(s.warmup_iters >= 0 and s.warm_start_iters >= 0, "schedule.warmup_iters/warm_start_iters",
         (s.warmup_iters, s.warm_start_iters), "must be >= 0")
    need(0.0 <= s.warmup_start_factor <= 1.0, "schedule.warmup_start_factor", s.warmup_start_factor,
         "must be in [0, 1]")
    need(s.warm_start_iters == 0 or s.warm_start_lr > 0, "schedule.warm_start_lr", s.warm_start_lr,
         "must be > 0 when warm_start_iters > 0")
    need(t.epochs >= 1 or t.max_iters > 0, "train.epochs", t.epochs, "must be >= 1 (or set train.max_iters)")
    need(t.max_iters >= 0, "train.max_iters", t.max_iters, "must be >= 0 (0 = epochs decide)")
    need(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", t.label_smoothing, "must be in [0, 1)")
    need(t.mixup_alpha >= 0 and t.cutmix_alpha >= 0, "train.mixup_alpha/cutmix_alpha",
         (t.mixup_alpha, t.cutmix_alpha), "must be >= 0 (0 = off)")
    need(0.0 <= t.mix_prob <= 1.0, "train.mix_prob", t.mix_prob, "must be in [0, 1]")
    need(0.0 <= t.mix_switch_prob <= 1.0, "train.mix_switch_prob", t.mix_switch_prob, "must be in [0, 1]")
    need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", t.ema_decay, "must be in [0, 1) (0 = off)")
    need(t.grad_clip_norm >= 0, "train.grad_clip_norm", t.grad_clip_norm, "must be >= 0 (0 = off)")
    need(0.0 < t.dropblock_keep <= 1.0, "train.dropblock_keep", t.dropblock_keep, "must be in (0, 1] (1 = off)")
    need(0.0 < t.dropblock_keep_start <= 1.0, "train.dropblock_keep_start", t.dropblock_keep_start,
         "must be in (0, 1]")
    need(0.0 < o.layer_decay <= 1.0, "optim.layer_decay", o.layer_decay, "must be in (0, 1] (1 = off)")
    need(m.frozen_stages >= -1, "model.frozen_stages", m.frozen_stages, "must be >= -1 (-1 = nothing frozen)")
    need(o.lr_base_batch >= 1, "optim.lr_base_batch", o.lr_base_batch, "must be >= 1 (images)")
    need(t.grad_accum_steps >= 1, "train.grad_accum_steps", t.grad_accum_steps, "must be >= 1")
    need(t.nonfinite_patience >= 1, "train.nonfinite_patience", t.nonfinite_patience, "must be >= 1")
    need(t.eval_every_epochs >= 1, "train.eval_every_epochs", t.eval_every_epochs, "must be >= 1")
    need(t.log_every_iters >= 1, "train.log_every_iters", t.log_every_iters, "must be >= 1")
    need(t.int8_calibration_images >= 1, "train.int8_calibration_images", t.int8_calibration_images, "must be >= 1")
    need(t.int8_agreement_images >= 1, "train.int8_agreement_images", t.int8_agreement_images, "must be >= 1")
    need(t.checkpoint_every_iters >= 0, "train.checkpoint_every_iters", t.checkpoint_every_iters,
         "must be >= 0 (optimizer steps; 0 = at epoch ends only)")
    need(all(0 < x <= MAX_TEST_SCALE for x in cfg.eval.scales), "eval.scales", cfg.eval.scales,
         f"must be pixel sizes in 1..{MAX_TEST_SCALE}")
    need("/" not in cfg.run.name and cfg.run.name not in (".", ".."), "run.name", cfg.run.name,
         "must be a plain directory name")
    need(t.aux_weight >= 0, "train.aux_weight", t.aux_weight, "must be >= 0")
    need(not (t.kd_teacher and t.kd_logits), "train.kd_logits", t.kd_logits,
         "and train.kd_teacher are two sources of teacher targets; set one")
    need(t.kd_temperature > 0, "train.kd_temperature", t.kd_temperature, "must be > 0")
    need(t.kd_weight >= 0 and t.kd_ce_weight >= 0, "train.kd_weight/kd_ce_weight", (t.kd_weight, t.kd_ce_weight),
         "must be >= 0")
    need(0.0 < t.bootstrap_threshold <= 1.0, "train.bootstrap_threshold", t.bootstrap_threshold, "must be in (0, 1]")
    need(t.bootstrap_min_kept >= 0, "train.bootstrap_min_kept", t.bootstrap_min_kept, "must be >= 0 (pixels)")
    need(s.power > 0, "schedule.power", s.power, "must be > 0")
    for key in ("head_lr_mult", "bias_lr_mult", "bias_decay_mult"):
        need(getattr(o, key) >= 0, f"optim.{key}", getattr(o, key), "must be >= 0")
    need(not (m.freeze_bn and bn == "dynamic"), "model.freeze_bn", m.freeze_bn,
         'frozen BN statistics cannot also be re-estimated (model.bn_momentum="dynamic")')
    e = cfg.eval
    need(e.crop >= 0 and e.stride >= 0, "eval.crop/stride", (e.crop, e.stride), "must be >= 0 pixels (0 = default)")
    need(e.test_steps >= 1, "eval.test_steps", e.test_steps, "must be >= 1 (1 = off)")
    need(all(0 < r <= 8 for r in e.scale_ratios), "eval.scale_ratios", e.scale_ratios, "must be factors in (0, 8]")
    need(0.0 <= cfg.expect.accuracy <= 100.0, "expect.accuracy", cfg.expect.accuracy, "must be a percentage")
    validate_data_config(cfg.data)


def validate_data_config(data: DataConfig) -> None:
    """The data section's choices and ranges, and its eval preset parsed; raises ValueError naming the key.

    Run at config load time; the data builders run it again for a DataConfig made in Python, which no loader
    has checked."""
    names = get_args(DatasetName)
    if data.name not in names:
        raise ValueError(f"unknown data.name {data.name!r}; expected one of {', '.join(names)}")
    for key, allowed in _data_choices().items():
        if key != "name" and getattr(data, key) not in allowed:
            raise ValueError(f"data.{key} must be one of {', '.join(allowed)}, got {getattr(data, key)!r}")
    for key in ("batch_size", "eval_batch_size", "image_size"):
        if getattr(data, key) < 1:
            raise ValueError(f"data.{key} must be >= 1, got {getattr(data, key)}")
    for key in ("workers", "crop_padding", "color_jitter", "pca_lighting", "num_classes", "in_chans"):
        if getattr(data, key) < 0:
            raise ValueError(f"data.{key} must be >= 0, got {getattr(data, key)}")
    low, high = data.scale_range
    if not 0 < low <= high:
        raise ValueError(f"data.scale_range must be [low, high] with 0 < low <= high, got {list(data.scale_range)}")
    if not 0 < data.cat_max_ratio <= 1:
        raise ValueError(f"data.cat_max_ratio must be in (0, 1] (1 = off), got {data.cat_max_ratio}")
    if data.base_size < 0 or data.test_size < 0:
        raise ValueError(f"data.base_size / test_size must be >= 0 pixels (0 = as stored), got {data.base_size} / "
                         f"{data.test_size}")
    if data.bad_image_cap < 0:
        raise ValueError(f"data.bad_image_cap must be >= 0, got {data.bad_image_cap}")
    if data.max_image_pixels < 1:
        raise ValueError(f"data.max_image_pixels must be >= 1, got {data.max_image_pixels}")
    if data.limit_train < 0 or data.limit_val < 0:
        raise ValueError(f"data.limit_train / limit_val must be >= 0, got {data.limit_train} / {data.limit_val}")
    if data.labels_per_class < 0:
        raise ValueError(f"data.labels_per_class must be >= 0 (0 = all), got {data.labels_per_class}")
    if len(set(map(str, data.keep_classes))) != len(data.keep_classes):
        raise ValueError(f"data.keep_classes names a class twice: {data.keep_classes}")
    parse_eval_preset(data.eval_preset, data.image_size)  # raises for an unknown preset
    parse_auto_augment(data.auto_augment, data.auto_augment_convention)  # raises for an unknown policy


def parse_auto_augment(spec: str, convention: str = "torchvision") -> tuple[str, int, int] | None:
    """data.auto_augment -> (policy, num_ops, magnitude), None when off; raises ValueError naming the key.

    "randaugment:N:M": N >= 1 ops, M a magnitude bin 0..30 (torchvision's 31 bins) or a level 0..10 (tf's
    _MAX_LEVEL; higher levels push the ops past the ranges they accept)."""
    if spec == "":
        return None
    name, *numbers = spec.split(":")
    usage = "expected \"\", \"autoaugment\", \"randaugment:N:M\" (e.g. randaugment:2:9) or \"trivialaugment\""
    if name in ("autoaugment", "trivialaugment") and not numbers:
        return name, 1, 0
    if name != "randaugment" or len(numbers) not in (0, 2):
        raise ValueError(f"unknown data.auto_augment {spec!r}; {usage}")
    try:
        num_ops, magnitude = (int(n) for n in numbers) if numbers else (2, 9)
    except ValueError:
        raise ValueError(f"data.auto_augment {spec!r}: N and M must be integers; {usage}") from None
    top = 30 if convention == "torchvision" else 10
    if num_ops < 1 or not 0 <= magnitude <= top:
        raise ValueError(f"data.auto_augment {spec!r}: needs N >= 1 and M in 0..{top} for "
                         f"data.auto_augment_convention={convention}")
    return name, num_ops, magnitude


@functools.cache
def _data_choices() -> dict[str, tuple]:
    """DataConfig field -> its allowed values, for every Literal-typed field."""
    hints = get_type_hints(DataConfig)
    return {key: get_args(tp) for key, tp in hints.items() if get_origin(tp) is Literal}


# ----------------------------------------------------------------------------------------- round trip


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of `cfg` with `a.b=c` overrides applied, type-checked and validated (as for a recipe)."""
    return config_from_dict(SCHEMA.apply_overrides(config_to_dict(cfg), overrides), where="--set")


def config_to_dict(cfg: Config) -> dict:
    """Plain dict (lists, not tuples) that YAML, JSON and torch.load(weights_only=True) all accept."""
    return plain(cfg)


def config_from_dict(d: dict, where: str = "config dict") -> Config:
    """Inverse of `config_to_dict`, with the same key and type checks as a recipe."""
    cfg = SCHEMA.instantiate(SCHEMA.check(d, where))
    validate_config(cfg)
    return cfg


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, width=120)


def config_diff(a: Config | dict, b: Config | dict, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every leaf that differs, skipping keys under `ignore`."""
    return SCHEMA.diff(a if isinstance(a, dict) else config_to_dict(a),
                       b if isinstance(b, dict) else config_to_dict(b), ignore)
