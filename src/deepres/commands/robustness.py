"""`deepres robustness CHECKPOINT`: corruption error (mCE) and flip rate (mFR) of a classifier, on corruptions made on
the fly from any evaluation split or read from an ImageNet-C folder (deepres.eval.robustness_measure); a report
(markdown, CSV, JSON, error-vs-severity plot) and a grid of example corrupted images."""
import argparse
from dataclasses import replace
from pathlib import Path

from deepres.core.config import Config, apply_overrides
from deepres.core.device import default_device
from deepres.data import build_eval_loader
from deepres.data.corruptions import parse_corruptions, parse_severities
from deepres.data.imagenet_classes import imagenet_class_names, imagenet_synsets
from deepres.data.corruptions.perturbations import parse_perturbations
from deepres.eval.robustness import (REPORT_FILES, RobustnessReport, check_comparable, write_example_grid,
                                     write_report)
from deepres.eval.robustness_measure import (corruption_errors, examples, imagenet_c_report, perturbation_results,
                                             resolve_baseline, top1_error)
from deepres.tasks import task_of
from deepres.tasks.build import load_model

from .options import add_evaluation_options, amp_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a deepres run directory or checkpoint, or a published arch.tag")
    parser.add_argument("--dataset", help="data.name of the clean images (default: the checkpoint's)")
    parser.add_argument("--data", metavar="ROOT", help="data.root: the dataset directory")
    parser.add_argument("--split", help="data.val_split: the split to corrupt (default: the checkpoint's)")
    parser.add_argument("--imagenet-c", metavar="DIR", help="read an ImageNet-C folder "
                        "(<corruption>/<severity>/<wnid>/*.JPEG) instead of corrupting on the fly")
    parser.add_argument("--corruptions", default="standard",
                        help="standard (the 15 of mCE), extra (the 4 held-out), all (19), or names a,b,c")
    parser.add_argument("--severities", default="1-5", help="1-5, or severities a,b,c")
    parser.add_argument("--scale", default="auto", choices=("auto", "imagenet", "cifar"),
                        help="the corruption parameter table: by image size (auto), ImageNet's or CIFAR's")
    parser.add_argument("--perturbations", default="none",
                        help="ImageNet-P flip rates too: standard (the 10 of mFR), extra, all, or names")
    parser.add_argument("--perturbation-images", type=int, default=1000, metavar="N",
                        help="sequences are made from the first N images (default 1000)")
    parser.add_argument("--frames", type=int, help="frames per sequence (default: each perturbation's published)")
    parser.add_argument("--baseline", default="auto", metavar="auto|alexnet|none|RUN",
                        help="what CE and flip rates divide by: auto (default) = AlexNet for ImageNet-1k models, "
                             "else none; alexnet = AlexNet's published numbers (ImageNet-1k classifiers only); none "
                             "= nothing; RUN = a run measured on as many images at the same severities (its "
                             "robustness.json)")
    parser.add_argument("--seed", type=int, default=0, help="corruption seed: (image, corruption, severity, seed) "
                                                            "always gives the same image")
    add_evaluation_options(parser)
    parser.add_argument("--out", metavar="DIR", help="report folder (default: RUN/robustness for a run directory)")
    parser.add_argument("--force", action="store_true", help="replace the report files in --out")


def _config_of(loaded, args) -> Config:
    """The evaluation config: a deepres run's own, else the defaults with the weights' preprocessing (published
    ImageNet-1k weights: data.name imagenet); then --dataset / --data / --split / --batch-size."""
    cfg = loaded.config
    if cfg is None:
        pp = loaded.preprocess
        name = args.dataset or ("imagenet" if len(loaded.class_names) == 1000 else None)
        if name is None:
            raise ValueError(f"{args.checkpoint} names no dataset: give --dataset (and --data)")
        data = replace(Config().data, name=name, image_size=pp.crop_size, mean=pp.mean, std=pp.std,
                       normalize=pp.normalize, eval_preset=f"crop_pct:{pp.crop_size / pp.resize}")
        cfg = replace(Config(), model=replace(Config().model, name=loaded.source.get("model", "")), data=data)
    overrides = [f"data.{key}={value}" for key, value in (
        ("name", args.dataset), ("root", args.data), ("val_split", args.split),
        ("eval_batch_size", args.batch_size)) if value is not None]
    return apply_overrides(cfg, overrides)


def _is_imagenet_1k(classes: list[str], cfg: Config) -> bool:
    """An ImageNet-1k classifier: 1000 classes, trained on data.name imagenet or labelled with its synsets or names
    (published weights, a packed or list copy of ImageNet), not merely any 1000-way model."""
    return len(classes) == 1000 and (cfg.data.name == "imagenet" or list(classes) in (imagenet_synsets(),
                                                                                     imagenet_class_names()))


def _out_dir(args) -> Path:
    if args.out:
        out = Path(args.out)
    elif Path(args.checkpoint).is_dir():
        out = Path(args.checkpoint) / "robustness"
    else:
        raise ValueError("--out DIR is needed when the checkpoint is not a run directory")
    taken = [name for name in (*REPORT_FILES, "examples.png") if (out / name).exists()]
    if taken and not args.force:
        raise FileExistsError(f"{out} already holds {', '.join(taken)}; pass --force to replace them or choose "
                              f"another --out")
    return out


def run(args: argparse.Namespace) -> int:
    corruptions = parse_corruptions(args.corruptions)
    severities = parse_severities(args.severities)
    perturbations = parse_perturbations(args.perturbations)
    if args.perturbation_images < 1:
        raise ValueError(f"--perturbation-images must be >= 1, got {args.perturbation_images}")
    out = _out_dir(args)
    loaded = load_model(args.checkpoint)
    model, classes = loaded.model, loaded.class_names
    cfg = apply_overrides(_config_of(loaded, args), args.overrides)
    task = task_of(cfg.data)
    if not task.labels_images:
        raise ValueError(f"deepres robustness measures classifiers; {args.checkpoint} is a {task.name} model")
    cfg = replace(cfg, data=replace(cfg.data, in_chans=loaded.preprocess.in_chans))
    # A deepres run's class list labels the data; other weights (ImageNet-1k) take the dataset's own (sorted synsets)
    data_classes = classes if loaded.config is not None else None
    device = default_device()
    model = model.to(device).eval()
    amp_dtype = amp_of(args, device).dtype
    name = str(loaded.source.get("checkpoint") or args.checkpoint)
    baseline = resolve_baseline(args.baseline, imagenet=_is_imagenet_1k(classes, cfg),
                                model=f"{name} ({len(classes)} classes, data.name {cfg.data.name})")
    print(f"{name}: {cfg.model.name}; baseline {baseline.name}")

    if args.imagenet_c:
        folders = data_classes or (imagenet_synsets() if len(classes) == 1000 else classes)
        report = imagenet_c_report(model, args.imagenet_c, corruptions, severities, cfg, folders, device,
                                    amp_dtype, baseline, name)
    else:
        loader, info = build_eval_loader(cfg.data, device, classes=data_classes, seed=cfg.train.seed)
        sequences = min(args.perturbation_images, info.eval_size) if perturbations else None
        check_comparable(baseline, info.eval_size, severities, sequences)  # before minutes of evaluation
        dataset = (f"{cfg.data.name} {cfg.data.val_split} ({info.eval_size} images), corrupted on the fly: "
                   f"deepres.data.corruptions, scale {args.scale}, seed {args.seed}")
        print(f"clean: {dataset}")
        clean = top1_error(model, loader, len(classes), amp_dtype)
        print(f"  clean error {100 * clean:.2f}%")
        errors = corruption_errors(model, loader, corruptions, severities, num_classes=len(classes), seed=args.seed,
                                   scale=args.scale, amp_dtype=amp_dtype)
        fps, t5ds = perturbation_results(model, loader, perturbations, images=args.perturbation_images,
                                         seed=args.seed, scale=args.scale, frames=args.frames, amp_dtype=amp_dtype)
        report = RobustnessReport(model=name, clean_error=clean, errors=errors, baseline=baseline,
                                  flip_probabilities=fps, top5_distances=t5ds, dataset=dataset,
                                  images=info.eval_size, perturbation_images=sequences)
        grid, image = examples(loader, corruptions, severities, seed=args.seed, scale=args.scale)
        out.mkdir(parents=True, exist_ok=True)
        write_example_grid(grid, out / "examples.png", clean=image)
    write_report(report, out)
    summary = report.summary()
    for key in ("corruption_error", "mce_15", "mce_19", "relative_mce_15", "mce_evaluated", "mfr"):
        if summary[key] is not None:
            print(f"{key}: {100 * summary[key]:.1f}%")
    print(f"wrote {out}/{', '.join(REPORT_FILES)}{'' if args.imagenet_c else ', examples.png'}")
    return 0
