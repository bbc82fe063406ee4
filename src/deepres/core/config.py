"""The training config: a dataclass tree loaded from a YAML recipe and overridden by `--set a.b=c`.

A recipe is a YAML mapping with the blocks below (model, data, optim, schedule, train, eval, run, expect);
`base: other.yaml` (a path relative to the recipe, or a recipe name) inherits another recipe first.
Every key and value is checked against the dataclass field types and the rule declared with each field
(`setting(0.9, ge=0, lt=1)`; deepres.core.typed), then against each section's `cross_check` (the rules that span
fields); unknown keys fail with the full dotted key, the file, and close matches. `config_to_dict` /
`config_from_dict` round-trip exactly; the resolved config is stored in every run directory (config.yaml) and
inside every checkpoint.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .preprocess import parse_eval_preset
from .typed import Choices, Schema, deep_merge, plain, read_yaml_mapping, setting

# Recipes shipped with the repository: <repo>/recipes/<dataset>/<name>.yaml (DEEPRES_RECIPES overrides, e.g.
# for a non-editable install where the repository is elsewhere)
RECIPES_DIR = Path(os.environ.get("DEEPRES_RECIPES") or Path(__file__).resolve().parents[3] / "recipes")


# A field declared with `setting(default, ...)` carries its rule (ge/gt/le/lt bounds, a test, what 0 means in the
# error) and its marks: resume_safe=True, a key (or section) a run's --resume may change because it does not change
# the trained weights; format_option=True, a data key only the formats whose registry record lists it read.

# data.name: a record of deepres.data's format registry, which hands its names (and the format options each reads)
# to this seam when deepres.data is imported; core cannot import it. Until then any name passes the schema.
DATASET_FORMATS = Choices("dataset format")


@dataclass
class ModelConfig:
    name: str = setting("resnet20", test=bool, text="name a registered model")  # see `deepres models`
    num_classes: int = setting(0, ge=0, note="0 = from the data")  # classifier outputs; 0 = from the data
    in_chans: int = setting(0, ge=0, note="0 = from the data")  # input channels; 0 = from the data
    drop_rate: float = setting(0.0, ge=0, lt=1)  # dropout probability before the classifier
    zero_init_last: bool = False  # zero the last BN gamma in each residual block (Goyal et al. 2017)
    # BatchNorm momentum for every BN layer: None = the model's own (PyTorch default 0.1), a float in (0, 1],
    # or "dynamic": cumulative average 1/(1+n) over the batches of the current epoch, reset at each epoch start
    bn_momentum: float | str | None = setting(
        None, test=lambda m: m == "dynamic" or (isinstance(m, float) and 0.0 < m <= 1.0),
        text='must be null, a float in (0, 1], or "dynamic"')
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
    frozen_stages: int = setting(-1, ge=-1, note="-1 = nothing frozen")

    def cross_check(self):
        if self.freeze_bn and self.bn_momentum == "dynamic":
            yield "freeze_bn", 'frozen BN statistics cannot also be re-estimated (model.bn_momentum="dynamic")'


@dataclass
class DataConfig:
    # Dataset format, a record of deepres.data's format registry (`deepres.data.list_formats()`)
    name: str = setting("fashion_mnist", choices=DATASET_FORMATS)
    # dataset directory; "" = the format's default location (e.g. the Debian Fashion-MNIST path)
    root: str = setting("", resume_safe=True)
    train_split: str = "train"  # folder/list: sub-folder or list file (relative to root) for training
    val_split: str = "val"  # folder/list: sub-folder or list file for evaluation ("test" for CIFAR/MNIST-style sets)
    # Transfer sets name their own splits: train/val read food101, cub200, stanford_cars train/test, pets trainval/test,
    # flowers102 and aircraft train/val (both also take trainval and test: the usual fine-tuning pair)
    num_classes: int = setting(0, ge=0)  # 0 = take it from the dataset
    in_chans: int = setting(0, ge=0)  # 0 = take it from the dataset (1 for MNIST-style, 3 otherwise)
    # Training-time augmentation
    image_size: int = setting(224, ge=1)  # train crop side, pixels
    random_resized_crop: bool = False  # Inception-style crop (scale 0.08-1, ratio 3/4-4/3) instead of pad-and-crop
    # Scale jitter: the shorter side resized to a random whole number of pixels in [low, high], then a random
    # image_size crop (neon's ImageLoader scale_range: Mini-Places2 128-240 for 112 crops); [0, 0] = off
    short_side_range: tuple[int, int] = setting((0, 0), test=lambda r: tuple(r) == (0, 0) or 0 < r[0] <= r[1],
                                                text="must be [low, high] pixels with 0 < low <= high, or [0, 0]")
    crop_padding: int = setting(0, ge=0)  # pad-and-random-crop padding, pixels (4 for CIFAR); 0 = off
    hflip: bool = True  # random horizontal flip, p=0.5
    color_jitter: float = setting(0.0, ge=0)  # brightness/contrast/saturation strength; 0 = off
    pca_lighting: float = setting(0.0, ge=0)  # AlexNet PCA lighting alphastd (0.1 in fb.resnet.torch); 0 = off
    # AutoAugment family on the uint8 training batch, a different draw per image (deepres.data.autoaugment):
    # "" = off, "autoaugment" (the ImageNet policy), "randaugment:N:M" (N ops at magnitude M; "randaugment" =
    # 2:9), "trivialaugment"
    auto_augment: str = ""
    # magnitude mapping, fill, policy table and op set: "torchvision" (transforms/autoaugment.py, M a bin of 31) or
    # "tf" (tensorflow/tpu efficientnet autoaugment.py, M a level 0..10)
    auto_augment_convention: Literal["torchvision", "tf"] = "torchvision"
    # Evaluation transform: "none" (use images as stored), "cropC_resizeR" (shorter side R, centre C):
    # crop224_resize256, crop256_resize257 (Assemble-ResNet's imagenet_224_256a), crop256_resize292 (their Big-Little
    # models), crop320_resize320 (ademxapp's ILSVRC test), crop128_resize128 (the whole Mini-Places2 image, for neon's
    # multi-scale test), or "crop_pct:0.875" (resize image_size/crop_pct); the old
    # names 224_256, 224_256a and 256_292 still load
    eval_preset: str = "none"
    # Normalisation: "meanstd" ((x/255 - mean)/std) or "mean" (x - mean*255, neon-style plain mean subtraction)
    normalize: Literal["meanstd", "mean"] = "meanstd"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # per channel, 0-1 scale
    std: tuple[float, ...] = (0.229, 0.224, 0.225)  # per channel, 0-1 scale
    # Loading
    # per process; global batch = batch_size × processes × train.grad_accum_steps
    batch_size: int = setting(128, ge=1)
    eval_batch_size: int = setting(256, ge=1, resume_safe=True)
    workers: int = setting(2, ge=0, resume_safe=True)  # DataLoader worker processes for folder datasets
    # "auto": small sets (CIFAR/MNIST-sized) live on the training device as uint8; "yes"/"no"
    on_device: Literal["auto", "yes", "no"] = "auto"
    on_bad_image: Literal["error", "skip"] = "error"
    bad_image_cap: int = setting(100, ge=0)  # with skip: stop after this many bad images
    exif_rotate: bool = False  # apply EXIF orientation; off for ImageNet parity
    limit_train: int = setting(0, ge=0, note="0 = all")  # use only the first N training images; for smoke runs
    limit_val: int = setting(0, ge=0, note="0 = all")  # use only the first N evaluation images
    # Class subsets (e.g. pre-train on Fashion-MNIST classes 0-4, fine-tune on 5-9): keep only these classes, given
    # as indices or names of the format's class list, in both splits, renumbered 0..k-1 in the order given; [] = all
    keep_classes: list[int | str] = setting(factory=list, test=lambda keep: len(set(map(str, keep))) == len(keep),
                                            text="names a class twice")
    # Few labels: keep this many training images of each class, drawn with data.subset_seed (0 = all)
    labels_per_class: int = setting(0, ge=0, note="0 = all")
    subset_seed: int = 0
    # width*height above this is a bad image (replaces Pillow's bomb limit)
    max_image_pixels: int = setting(89_478_485, ge=1)

    # Format options: each is read only by the formats whose registry record lists it (DatasetFormat.options); set
    # to anything but its default for another format, it is an error. Relative paths are taken relative to root.
    # folder, imagenet: folder levels that name a class (1: n01440764/, 2: a/abbey/); 0 = every folder holding images
    class_depth: int = setting(0, format_option=True)
    # imagenet with a flat val folder: ILSVRC2012_validation_ground_truth.txt (needs synset_map) or LOC_val_solution.csv
    val_ground_truth: str = setting("", format_option=True)
    synset_map: str = setting("", format_option=True)  # for the .txt: synsets in ILSVRC2012 id order, one per line
    # list
    image_root: str = setting("", format_option=True)  # folder the listed paths are relative to; "" = root
    # appended to each listed path (".jpg" for Food-101's meta/train.txt)
    list_suffix: str = setting("", format_option=True)
    # list, pairs: class-name file, "name" or "name index" per line; "" = "0".."K-1" (pairs: root/classes.txt)
    class_names: str = setting("", format_option=True)
    # cifar100
    coarse_labels: bool = setting(False, format_option=True)  # the 20 superclasses instead of the 100 classes
    # synthetic
    synthetic_size: tuple[int, int] = setting((512, 128), format_option=True)  # (train, val) image counts
    synthetic_image_size: int = setting(32, format_option=True)  # image side, pixels
    # Segmentation formats (pairs, voc, cityscapes, ade20k): uint8 masks, 255 = ignore; image and mask move together
    # train: random rescale factor (mmseg 0.5-2.0, ademxapp 0.7-1.3)
    scale_range: tuple[float, float] = setting((1.0, 1.0), test=lambda r: 0 < r[0] <= r[1],
                                               text="must be [low, high] with 0 < low <= high", format_option=True)
    # the factors scale an image resized to base_size on its `base_side` (0: its stored size)
    base_size: int = setting(0, ge=0, note="pixels, 0 = as stored", format_option=True)
    base_side: Literal["longer", "shorter"] = setting("longer", format_option=True)  # the side base_size, test_size set
    # train crop: redraw (up to 10 times) while one class fills more than this; 1 = off
    cat_max_ratio: float = setting(1.0, gt=0, le=1, note="1 = off", format_option=True)
    # eval: resize the image's `base_side` to this (0: as stored); scored at the stored size
    test_size: int = setting(0, ge=0, note="pixels, 0 = as stored", format_option=True)
    # voc: with train_split=train_aug, the SBD folder (benchmark_RELEASE), relative to root
    sbd_root: str = setting("", format_option=True)
    extra: dict = field(default_factory=dict)  # free-form keys for formats added outside deepres.data

    def cross_check(self):
        parse_eval_preset(self.eval_preset, self.image_size)  # raises for an unknown preset
        if self.short_side_range[1] and (self.random_resized_crop or self.short_side_range[0] < self.image_size):
            yield "short_side_range", (f"{list(self.short_side_range)}: needs data.random_resized_crop off and a low "
                                       f"end >= data.image_size ({self.image_size}, the crop)")
        parse_auto_augment(self.auto_augment, self.auto_augment_convention)  # raises for an unknown policy
        formats = DATASET_FORMATS.known() or {}
        reads = formats.get(self.name)  # None: the format has not declared its options
        defaults = DataConfig()
        for key in () if reads is None else FORMAT_OPTIONS:
            if key not in reads and plain(getattr(self, key)) != plain(getattr(defaults, key)):
                readers = [name for name, options in formats.items() if key in (options or ())]
                yield key, f"data.name={self.name} does not read it (read by {', '.join(readers) or 'no format'})"


@dataclass
class OptimConfig:
    name: Literal["sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamw"] = "sgd"
    # Peak lr. lr_scaling "none": for the global batch as the recipe runs it (data.batch_size × processes ×
    # grad_accum_steps); "linear": for lr_base_batch images, multiplied by global batch / lr_base_batch
    # (Goyal et al. 2017), so the same recipe keeps its meaning on 1 or 64 GPUs
    lr: float = setting(0.1, gt=0)
    lr_scaling: Literal["none", "linear"] = "none"
    lr_base_batch: int = setting(256, ge=1, note="images")  # images the lr is given for when lr_scaling is "linear"
    momentum: float = setting(0.9, ge=0, lt=1)  # sgd, rmsprop
    nesterov: bool = False  # sgd only
    weight_decay: float = setting(1e-4, ge=0)  # L2 coefficient (adamw: decoupled decay, multiplied by lr)
    wd_exclude_bn_bias: bool = False  # no weight decay on BN weights and biases (every param with ndim <= 1)
    # Per-group multipliers (mmseg's paramwise_cfg): parameters under the model's head modules (a segmentation
    # model's classifier / aux_classifier) get lr x head_lr_mult; conv/linear biases lr x bias_lr_mult and weight
    # decay x bias_decay_mult (ademxapp: biases x2 lr, no decay)
    head_lr_mult: float = setting(1.0, ge=0)
    bias_lr_mult: float = setting(1.0, ge=0)
    bias_decay_mult: float = setting(1.0, ge=0)
    # Layer-wise lr decay: lr x layer_decay^(S + 1 - depth), depth 0 the stem, 1..S the stages, S + 1 the head
    # (so the head keeps the full lr and each earlier stage gets layer_decay times the next one's); 1.0 = off
    layer_decay: float = setting(1.0, gt=0, le=1, note="1 = off")
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float | None = None  # denominator term; None = the optimizer's default (adam 1e-8, adagrad 1e-10, ...)
    alpha: float | None = None  # squared-gradient smoothing: rmsprop alpha (0.99), adadelta rho (0.9); None = default

    def cross_check(self):
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            yield "nesterov", "needs optim.name=sgd and optim.momentum > 0"


@dataclass
class ScheduleConfig:
    name: Literal["multistep", "step", "cosine", "linear", "constant", "poly"] = "multistep"
    unit: Literal["iter", "epoch"] = "iter"  # unit of `milestones` and `step_size`: optimizer steps or epochs
    # multistep: lr *= gamma at each milestone (in `unit`)
    milestones: list[int] = setting(factory=list, test=lambda m: m == sorted(m), text="must be increasing")
    step_size: int = setting(30, gt=0)  # step: lr *= gamma every step_size `unit`s
    gamma: float = 0.1  # decay factor at each milestone/step
    warmup_iters: int = setting(0, ge=0)  # linear warmup, optimizer steps; 0 = off
    warmup_start_factor: float = setting(0.1, ge=0, le=1)  # warmup starts at lr × this and reaches lr at warmup_iters
    # ResNet-110 trick (He et al. 2015, sec. 4.2): a constant warm_start_lr for the first warm_start_iters
    # optimizer steps, then the normal schedule (milestones still count from step 0); 0 = off
    warm_start_lr: float = 0.0
    warm_start_iters: int = setting(0, ge=0)
    min_lr: float = 0.0  # cosine/linear/poly: lr reached at the last step
    # poly: lr = min_lr + (lr - min_lr)(1 - step/total)^power (mmseg, torchvision's reference)
    power: float = setting(0.9, gt=0)

    def cross_check(self):
        if self.warm_start_iters > 0 and self.warm_start_lr <= 0:
            yield "warm_start_lr", "must be > 0 when warm_start_iters > 0"


@dataclass
class TrainConfig:
    epochs: int = 90  # passes over the training set; ignored when max_iters > 0
    # total optimizer steps; the CIFAR paper schedule stops at 64k
    max_iters: int = setting(0, ge=0, note="0 = epochs decide")
    # softmax cross-entropy, sigmoid BCE on (mixed) one-hot targets (RSB A3), or (segmentation) ademxapp's
    # bootstrapped cross-entropy: only pixels with p(target) <= bootstrap_threshold, at least the
    # bootstrap_min_kept hardest per batch
    loss: Literal["ce", "bce", "bootstrap"] = "ce"
    bootstrap_threshold: float = setting(0.6, gt=0, le=1)
    bootstrap_min_kept: int = setting(256, ge=0, note="pixels")
    aux_weight: float = setting(0.5, ge=0)  # segmentation: weight of the auxiliary head's loss (models built with one)
    label_smoothing: float = setting(0.0, ge=0, lt=1)  # probability mass spread uniformly over all classes
    mixup_alpha: float = setting(0.0, ge=0, note="0 = off")  # Beta(alpha, alpha) mixing of whole images
    cutmix_alpha: float = setting(0.0, ge=0, note="0 = off")  # Beta(alpha, alpha) box pasting
    mix_prob: float = setting(1.0, ge=0, le=1)  # probability that a batch is mixed at all (when an alpha > 0)
    mix_switch_prob: float = setting(0.5, ge=0, le=1)  # with both alphas > 0: probability of cutmix rather than mixup
    mixup_per_sample: bool = False  # mixup: one lam ~ Beta(alpha, alpha) per image (Assemble-ResNet), not per batch
    # Online knowledge distillation: a teacher (run directory, checkpoint, `arch.tag`) run on every (mixed) batch;
    # loss = kd_ce_weight · CE(targets) + kd_weight · T² · soft CE(student/T, softmax(teacher/T)), T = kd_temperature
    kd_teacher: str = ""
    # Offline distillation: a file of the teacher's logits per training image (`deepres teacher-logits`), looked
    # up by each batch's image indices; the teacher's softened distributions are mixed with the labels' lam
    kd_logits: str = ""
    kd_temperature: float = setting(1.0, gt=0)
    kd_weight: float = setting(1.0, ge=0)
    kd_ce_weight: float = setting(1.0, ge=0)
    # exponential moving average of weights and buffers, per optimizer step
    ema_decay: float = setting(0.0, ge=0, lt=1, note="0 = off")
    grad_clip_norm: float = setting(0.0, ge=0, note="0 = off")  # clip the global gradient L2 norm to this; 0 = off
    # DropBlock keep probability at the end of training, reached linearly from dropblock_keep_start over all
    # optimizer steps (Assemble-ResNet: 1.0 -> 0.9 from scratch, 0.9 -> 0.7 fine-tuning); acts on the model's
    # DropBlock2d modules (model.kwargs {dropblock: true}); both 1.0 = off
    dropblock_keep: float = setting(1.0, gt=0, le=1, note="1 = off")
    dropblock_keep_start: float = setting(1.0, gt=0, le=1)
    grad_accum_steps: int = setting(1, ge=1)  # micro-batches per optimizer step
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
    calibrate_int8: bool = setting(True, resume_safe=True)
    # training images the activation ranges are observed on
    int8_calibration_images: int = setting(256, ge=1, resume_safe=True)
    # evaluation images the int8-vs-fp32 top-1 agreement is measured on
    int8_agreement_images: int = setting(1000, ge=1, resume_safe=True)
    seed: int = 0  # seeds torch, numpy, random, the data order and augmentation
    deterministic: bool = False  # torch.use_deterministic_algorithms; bit-exact resume on CPU
    # stop after this many non-finite losses in a row (those steps are skipped)
    nonfinite_patience: int = setting(5, ge=1)
    eval_every_epochs: int = setting(1, ge=1, resume_safe=True)  # evaluate every N epochs (and always after the last)
    # step-level metrics (and a progress line when the bar is off), optimizer steps
    log_every_iters: int = setting(50, ge=1, resume_safe=True)
    # also save checkpoints/last every N optimizer steps, mid-epoch (long ImageNet epochs); 0 = at epoch ends only
    checkpoint_every_iters: int = setting(0, ge=0, note="optimizer steps; 0 = at epoch ends only", resume_safe=True)
    progress: bool = setting(True, resume_safe=True)  # tqdm bar per epoch (only when stderr is a terminal)

    def cross_check(self):
        if self.epochs < 1 and self.max_iters <= 0:
            yield "epochs", "must be >= 1 (or set train.max_iters)"
        if self.kd_teacher and self.kd_logits:
            yield "kd_logits", "set together with train.kd_teacher: two sources of teacher targets; set one"


# Largest test-time view side, pixels: a 4096x4096 RGB float32 batch of one is already 0.2 GB, and a typo such as
# 100000 would ask for terabytes.
MAX_TEST_SCALE = 4096


@dataclass
class EvalConfig:
    # extra test resolutions (pixels) averaged with the base one
    scales: list[int] = setting(factory=list, each=True, gt=0, le=MAX_TEST_SCALE,
                                text=f"must be pixel sizes in 1..{MAX_TEST_SCALE}")
    flip: bool = False  # also average predictions on the horizontally flipped image
    # Segmentation test-time modes (softmax averaged over every view)
    mode: Literal["whole", "slide"] = "whole"  # one pass over the whole image, or sliding windows (mmseg)
    crop: int = setting(0, ge=0, note="pixels, 0 = data.image_size")  # slide: window side
    stride: int = setting(0, ge=0, note="pixels, 0 = two thirds of the window")  # slide: window step
    # multi-scale: factors of the test size (mmseg 0.5-1.75)
    scale_ratios: list[float] = setting(factory=list, each=True, gt=0, le=8, text="must be factors in (0, 8]")
    # ademxapp shift-and-stitch: k > 1 runs k x k passes shifted by output_stride / k pixels
    test_steps: int = setting(1, ge=1, note="1 = off")


@dataclass
class RunConfig:
    out_dir: str = "runs"  # parent directory of run directories
    # run directory name under out_dir; "" = from the recipe name (e.g. cifar10-resnet20)
    name: str = setting("", test=lambda name: "/" not in name and name not in (".", ".."),
                        text="must be a plain directory name")
    keep: Literal["last", "last+best"] = "last+best"  # checkpoints kept: last, and best by top-1
    recipe: str = ""  # the recipe file this config was loaded from (set by load_config)


@dataclass
class ExpectConfig:
    # test accuracy (%) this recipe is expected to reach, as `metric`
    accuracy: float = setting(0.0, ge=0, le=100, text="must be a percentage")
    metric: Literal["top1", "top5", "miou", "pixel_acc"] = "top1"  # miou / pixel_acc: segmentation (%)
    note: str = ""  # where that number comes from (paper, table, hardware, number of runs)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = setting(factory=EvalConfig, resume_safe=True)
    run: RunConfig = setting(factory=RunConfig, resume_safe=True)
    expect: ExpectConfig = setting(factory=ExpectConfig, resume_safe=True)


# ---------------------------------------------------------------------------------------------- loading
SCHEMA = Schema(Config, kind="config", free=("model.kwargs", "data.extra"))
# The keys a run's --resume may change (marked resume_safe above), and DataConfig's format options (a format's
# registry record lists those it reads)
RESUME_MAY_DIFFER = SCHEMA.marked("resume_safe")
FORMAT_OPTIONS = tuple(key.removeprefix("data.") for key in SCHEMA.marked("format_option"))


def load_config(path_or_name: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a recipe (file path or name under recipes/), apply `a.b=c` overrides, type-check, validate."""
    path = resolve_recipe(path_or_name)
    raw = SCHEMA.apply_overrides(_load_recipe_tree(path, chain=()), overrides)
    cfg = SCHEMA.instantiate(SCHEMA.check(raw, str(path)))
    if not cfg.run.recipe:
        cfg.run.recipe = str(path)
    if not cfg.run.name:
        cfg.run.name = _default_run_name(path)
    validate_config(cfg, str(path))
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
        merged = {}
        deep_merge(merged, raw)  # as over a base: `_delete_` keys of free mappings (model.kwargs) go
        return merged
    if not isinstance(base, str):
        raise ValueError(f"{path}: 'base' must be a recipe path or name, got {base!r}")
    base_path = path.parent / base
    base_path = base_path if base_path.is_file() else resolve_recipe(base)
    merged = _load_recipe_tree(base_path, (*chain, real))
    deep_merge(merged, raw)
    return merged


# ------------------------------------------------------------------------------------------ validation


def validate_config(cfg: Config, where: str = "config") -> None:
    """Every field's rule and each section's cross_check; raises ValueError naming the key and the value."""
    SCHEMA.validate(cfg, where)


def validate_data_config(data: DataConfig) -> None:
    """The data section alone: the data builders check a DataConfig made in Python, which no loader has checked."""
    SCHEMA.validate(data, prefix="data.")


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


# ----------------------------------------------------------------------------------------- round trip


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of `cfg` with `a.b=c` overrides applied, type-checked and validated (as for a recipe). An override of
    data.name takes the old format's options along only where the new format reads them (the others go back to
    their defaults), unless an override sets them too: those are checked as a recipe's are."""
    raw = SCHEMA.apply_overrides(config_to_dict(cfg), overrides)
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    if "data.name" in keys:
        raw = _without_unread_options(raw, keep=keys)
    return _checked(raw, "--set")


def config_to_dict(cfg: Config) -> dict:
    """Plain dict (lists, not tuples) that YAML, JSON and torch.load(weights_only=True) all accept."""
    return plain(cfg)


def config_from_dict(d: dict, where: str = "config dict") -> Config:
    """Inverse of `config_to_dict` (a stored config: a checkpoint's, a run's config.yaml), with the same key and type
    checks as a recipe. A format option its format does not read goes back to its default rather than failing: a
    config stored before the formats listed their options may hold one, and the format never read it."""
    return _checked(_without_unread_options(d), where)


def _checked(raw: dict, where: str) -> Config:
    cfg = SCHEMA.instantiate(SCHEMA.check(raw, where))
    validate_config(cfg, where)
    return cfg


def _without_unread_options(raw: dict, keep: set[str] = frozenset()) -> dict:
    """`raw` with each format option that raw's data.name does not read at its default (but the dotted keys in
    `keep`); as it is when the format has not declared its options."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    reads = (DATASET_FORMATS.known() or {}).get(data.get("name", DataConfig.name))
    if reads is None:
        return raw
    defaults = plain(DataConfig())
    unread = {key for key in FORMAT_OPTIONS if key not in reads and f"data.{key}" not in keep}
    return {**raw, "data": {key: defaults[key] if key in unread else value for key, value in data.items()}}


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, width=120)


def config_diff(a: Config | dict, b: Config | dict, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every leaf that differs, skipping keys under `ignore`."""
    return SCHEMA.diff(a if isinstance(a, dict) else config_to_dict(a),
                       b if isinstance(b, dict) else config_to_dict(b), ignore)
