"""`deepres eval CHECKPOINT`: evaluate a checkpoint on a dataset (any supported layout), with optional
multi-scale and flip testing; prints top-1/top-5 (segmentation: mIoU, pixel and mean accuracy) and writes metrics,
per-class accuracy (segmentation: IoU) and the confusion matrix."""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from deepres.core.checkpoint import resolve_checkpoint
from deepres.core.config import MAX_TEST_SCALE, Config, apply_overrides
from deepres.core.device import default_device, limit_compute_threads, resolve_amp
from deepres.data import build_eval_loader, list_formats
from deepres.tasks import SegmentationTask, task_of
from deepres.tasks.build import load_model
from deepres.tasks.evaluate import evaluate
from deepres.tasks.segmentation import SegViews, evaluate_segmentation

from .confusion import report_segmentation, write_confusion_matrix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a deepres run directory or .safetensors checkpoint (config inside), "
                                           "or any .pth/.safetensors state dict together with --model")
    parser.add_argument("--model", help="registered model name (needed for checkpoints without a deepres config)")
    parser.add_argument("--dataset", help=f"data.name: {', '.join(list_formats())} (default: the checkpoint's)")
    parser.add_argument("--data", metavar="ROOT", help="data.root: the dataset directory")
    parser.add_argument("--split", help="data.val_split: the split to evaluate (e.g. test, val)")
    parser.add_argument("--eval-preset", help="data.eval_preset: none, 224_256, 224_256a, 256_292, crop_pct:0.875")
    parser.add_argument("--test-scales", default="", metavar="S1,S2,...",
                        help="average softmax over these square test sizes, pixels (e.g. 224,256,320)")
    parser.add_argument("--flip", action="store_true", help="also average over horizontally flipped images")
    add_view_arguments(parser)
    parser.add_argument("--batch-size", type=int, help="data.eval_batch_size")
    add_amp_argument(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config override, e.g. --set data.limit_val=1000")
    parser.add_argument("--out", metavar="DIR", help="write metrics.json, per_class.csv, confusion.csv/png here")
    parser.add_argument("--force", action="store_true", help="allow --out to be a non-empty directory")


def add_amp_argument(parser) -> None:
    parser.add_argument("--amp", choices=("none", "auto", "bf16"), default="none",
                        help="autocast for evaluation: none = fp32, the reference numbers (default); auto = bf16 "
                             "where the machine computes it natively, else fp32; bf16 (emulated, slow, on a CPU "
                             "without AVX-512 BF16 / AMX)")


def amp_of(args, device):
    """--amp resolved on `device` (core.device.resolve_amp); a note on stderr when bf16 would be emulated."""
    amp = resolve_amp(args.amp, device)
    if amp.emulated:
        print(f"note: --amp {amp.reason}", file=sys.stderr)
    return amp


def add_view_arguments(parser) -> None:
    """Segmentation test-time options (eval.* and data.test_size); --flip is shared with classification. `parser`
    is a parser (the options get their own group) or a group of one (they join it: argparse deprecates nesting)."""
    group = (parser.add_argument_group("segmentation test-time views (default: the checkpoint's eval.* settings)")
             if isinstance(parser, argparse.ArgumentParser) else parser)
    group.add_argument("--mode", choices=("whole", "slide"), help="eval.mode: the whole image, or sliding windows")
    group.add_argument("--crop", type=int, help="eval.crop: sliding-window side, pixels")
    group.add_argument("--stride", type=int, help="eval.stride: sliding-window step, pixels")
    group.add_argument("--scale-ratios", metavar="R1,R2,...", help="eval.scale_ratios: multi-scale factors "
                                                                   "(e.g. 0.5,0.75,1.0,1.25,1.5,1.75)")
    group.add_argument("--test-steps", type=int, help="eval.test_steps: ademxapp shift-and-stitch, k x k passes")
    group.add_argument("--test-size", type=int, help="data.test_size: resize the images' data.base_side to this")


def view_overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides the test-time view options stand for."""
    pairs = (("eval.mode", args.mode), ("eval.crop", args.crop), ("eval.stride", args.stride),
             ("eval.test_steps", args.test_steps), ("data.test_size", args.test_size),
             ("eval.scale_ratios", parse_ratios(args.scale_ratios) if args.scale_ratios else None),
             ("eval.flip", "true" if args.flip else None))
    return [f"{key}={value}" for key, value in pairs if value is not None]


def parse_ratios(text: str | None) -> list[float]:
    """--scale-ratios "0.5,1,1.5" -> [0.5, 1.0, 1.5]; a ValueError naming the option otherwise."""
    try:
        return [float(part) for part in (text or "").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--scale-ratios {text}: give factors separated by commas, e.g. 0.5,1.0,1.5") from None


def parse_test_scales(text: str) -> list[int]:
    """--test-scales "224,256" -> [224, 256]; a ValueError naming the option for anything but sizes in
    1..MAX_TEST_SCALE pixels."""
    scales = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"--test-scales {text}: {part!r} is not a whole number of pixels")
        if not 1 <= int(part) <= MAX_TEST_SCALE:
            raise ValueError(f"--test-scales {text}: {part} is not a test size; give sizes of 1 to at most "
                             f"{MAX_TEST_SCALE} pixels")
        scales.append(int(part))
    return scales


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
    segmentation = task_of(cfg.data) is SegmentationTask
    if segmentation and scales:
        raise ValueError("--test-scales are square classification sizes; a segmentation model takes --scale-ratios")
    cfg = apply_overrides(cfg, [*overrides, *(view_overrides(args) if segmentation else ()), *args.overrides])
    # the images are given the channels the model's stem takes (gray <-> RGB)
    cfg = replace(cfg, data=replace(cfg.data, in_chans=loaded.preprocess.in_chans))

    device = default_device()
    args.amp_choice = amp_of(args, device)
    # Only the evaluated split is read; a deepres checkpoint's class list stands in for the training split.
    eval_loader, info = build_eval_loader(cfg.data, device, classes=classes, seed=cfg.train.seed)
    if device.type == "cpu":  # compute threads + the loader's workers within the available cores
        limit_compute_threads(workers=getattr(eval_loader, "workers", 0))
    if info.num_classes != model.num_classes:
        raise ValueError(f"{path}: its classifier does not fit the {info.num_classes} classes of {cfg.data.name} "
                         f"(it has {model.num_classes} outputs); evaluate on the dataset it was trained for")
    class_names = list(info.classes) if len(info.classes) == model.num_classes else classes
    if segmentation:
        return _evaluate_segmentation(model.to(device), eval_loader, cfg, class_names, args, path, out)
    started = time.perf_counter()
    # progress=None: a bar on stderr only when it is a terminal
    result = evaluate(model.to(device), eval_loader, num_classes=model.num_classes, scales=scales, flip=args.flip,
                      amp_dtype=args.amp_choice.dtype, class_names=class_names, progress=None)
    seconds = time.perf_counter() - started

    views = f"scales {scales}" if scales else "single scale"
    print(f"{path}: {cfg.model.name} on {cfg.data.name} {cfg.data.val_split} ({result['n']} images, "
          f"{result['skipped']} skipped, {views}"
          f"{', flip' if args.flip else ''}, {args.amp_choice.label})")
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
          f"({result['n']} images in {seconds:.1f} s, {result['n'] / seconds:.1f} images/s, decoding included)")
    if out is not None:
        write_confusion_matrix(result["confusion"], result["class_names"], out)
        metrics = {k: result[k] for k in ("top1", "top5", "top5_k", "loss", "n", "skipped")}
        metrics.update(seconds=seconds, images_per_second=result["n"] / seconds, checkpoint=str(path),
                       model=cfg.model.name, dataset=cfg.data.name,
                       split=cfg.data.val_split, scales=scales, flip=args.flip, amp=args.amp_choice.amp)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"wrote {out}/metrics.json, per_class.csv, confusion.csv, confusion.png")
    return 0


def _evaluate_segmentation(model, loader, cfg: Config, class_names, args, path, out) -> int:
    views = SegViews.from_config(cfg.eval, cfg.data)
    started = time.perf_counter()
    result = evaluate_segmentation(model, loader, num_classes=model.num_classes, mode=views,
                                   amp_dtype=args.amp_choice.dtype, class_names=class_names, progress=None)
    seconds = time.perf_counter() - started
    size = f"test size {cfg.data.test_size} ({cfg.data.base_side} side)" if cfg.data.test_size else "as stored"
    print(f"{path}: {cfg.model.name} on {cfg.data.name} {cfg.data.val_split} ({result['n']} images, {size}, "
          f"{views.mode}, scales {list(views.scale_ratios) or [1.0]}{', flip' if views.flip else ''}"
          f"{f', test_steps {views.test_steps}' if views.test_steps > 1 else ''}, "
          f"{args.amp_choice.label})")
    print(f"mIoU {result['miou']:.2f}%  pixel acc {result['pixel_acc']:.2f}%  mean acc {result['mean_acc']:.2f}%  "
          f"({result['n']} images in {seconds:.1f} s, {result['n'] / seconds:.1f} images/s, decoding included)")
    metrics = {k: result[k] for k in ("miou", "pixel_acc", "mean_acc", "test_loss", "n", "pixels")}
    metrics.update(seconds=seconds, checkpoint=str(path), model=cfg.model.name, dataset=cfg.data.name,
                   split=cfg.data.val_split, test_size=cfg.data.test_size, mode=views.mode, crop=views.crop,
                   stride=views.stride, scale_ratios=list(views.scale_ratios), flip=views.flip,
                   test_steps=views.test_steps, amp=args.amp_choice.amp)
    report_segmentation(result, out, metrics)
    return 0
