"""`deepres eval CHECKPOINT`: evaluate a checkpoint on a dataset (any supported layout), with optional
multi-scale and flip testing; prints top-1/top-5 (segmentation: mIoU, pixel and mean accuracy) and writes metrics,
per-class accuracy (segmentation: IoU) and the confusion matrix."""
import argparse
import time
from dataclasses import replace
from pathlib import Path

from deepres.core.checkpoint import resolve_checkpoint
from deepres.core.config import Config, apply_overrides
from deepres.core.device import default_device, limit_compute_threads
from deepres.data import build_eval_loader, list_formats
from deepres.tasks import task_of
from deepres.tasks.build import load_model

from .options import add_evaluation_options, add_view_arguments, amp_of, parse_test_scales, view_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a deepres run directory or .safetensors checkpoint (config inside), "
                                           "or any .pth/.safetensors state dict together with --model")
    parser.add_argument("--model", help="registered model name (needed for checkpoints without a deepres config)")
    parser.add_argument("--dataset", help=f"data.name: {', '.join(list_formats())} (default: the checkpoint's)")
    parser.add_argument("--data", metavar="ROOT", help="data.root: the dataset directory")
    parser.add_argument("--split", help="data.val_split: the split to evaluate (e.g. test, val)")
    parser.add_argument("--eval-preset", help="data.eval_preset: none, crop224_resize256, crop256_resize257, crop256_resize292, "
                        "crop320_resize320, crop128_resize128, crop_pct:0.875")
    parser.add_argument("--test-scales", default="", metavar="S1,S2,...",
                        help="average softmax over these square test sizes, pixels (e.g. 224,256,320): the image the "
                             "eval preset gives, resized to each, through the model's global pool (= its classifier "
                             "as a 1x1 conv, scores averaged over positions); the neon Mini-Places2 test: "
                             "--eval-preset crop128_resize128 --test-scales 112,128,160,240")
    parser.add_argument("--flip", action="store_true", help="also average over horizontally flipped images")
    add_view_arguments(parser)
    add_evaluation_options(parser)
    parser.add_argument("--out", metavar="DIR", help="write metrics.json, per_class.csv, confusion.csv/png here")
    parser.add_argument("--force", action="store_true", help="allow --out to be a non-empty directory")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir() and any(out.iterdir()) and not args.force:
        raise ValueError(f"--out {out} is not empty; choose another directory or pass --force")
    scales = parse_test_scales(args.test_scales)

    path = resolve_checkpoint(args.checkpoint)
    if args.model is None and not path.suffix == ".safetensors":
        raise ValueError(f"{path} holds no deepres config: name the architecture with --model (and the data with "
                         f"--dataset/--data)")
    loaded = load_model(args.model, path) if args.model else load_model(path)
    model = loaded.model
    # a deepres checkpoint brings its config and class list; other weights start from the defaults and the options
    cfg = loaded.config or replace(Config(), model=replace(Config().model, name=loaded.source["model"]))
    classes = loaded.class_names if loaded.config is not None else None
    overrides = [f"data.{key}={value}" for key, value in (
        ("name", args.dataset), ("root", args.data), ("val_split", args.split), ("eval_preset", args.eval_preset),
        ("eval_batch_size", args.batch_size)) if value is not None]
    # Evaluation runs in the checkpoint's layout, fp32 unless --amp; of the train.* keys only seed and
    # channels_last are read here (train.amp and train.compile are the training loop's alone).
    task = task_of(apply_overrides(cfg, overrides).data)
    cfg = task.eval_config(apply_overrides(cfg, overrides), scales=scales, view_overrides=view_overrides(args))
    cfg = apply_overrides(cfg, args.overrides)
    # the images are given the channels the model's stem takes (gray <-> RGB)
    cfg = replace(cfg, data=replace(cfg.data, in_chans=loaded.preprocess.in_chans))

    device = default_device()
    amp = amp_of(args, device)
    # Only the evaluated split is read; a deepres checkpoint's class list stands in for the training split.
    eval_loader, info = build_eval_loader(cfg.data, device, classes=classes, seed=cfg.train.seed)
    if device.type == "cpu":  # compute threads + the loader's workers within the available cores
        limit_compute_threads(workers=getattr(eval_loader, "workers", 0))
    if info.num_classes != model.num_classes:
        raise ValueError(f"{path}: its classifier does not fit the {info.num_classes} classes of {cfg.data.name} "
                         f"(it has {model.num_classes} outputs); evaluate on the dataset it was trained for")
    class_names = list(info.classes) if len(info.classes) == model.num_classes else classes
    started = time.perf_counter()
    result = task.evaluate_checkpoint(model.to(device), eval_loader, cfg, scales=scales, flip=args.flip,
                                      amp_dtype=amp.dtype, class_names=class_names)
    seconds = time.perf_counter() - started
    lines, metrics = task.eval_report(result, cfg, scales=scales, flip=args.flip, precision=amp.label,
                                      seconds=seconds)
    print(f"{path}: {lines[0]}")
    print("\n".join(lines[1:]))
    metrics.update(checkpoint=str(path), model=cfg.model.name, dataset=cfg.data.name, split=cfg.data.val_split,
                   amp=amp.amp)
    for line in task.write_eval_files(result, out, metrics):
        print(line)
    return 0
