"""`deepres robustness CHECKPOINT`: corruption error (ImageNet-C style, mCE) and flip rate (ImageNet-P style, mFR)
of a classifier, on corruptions generated on the fly from any evaluation split (deepres.data.corruptions, seeded
by image index) or read from an ImageNet-C folder; a report (markdown, CSV, JSON, error-vs-severity plot) and a
grid of example corrupted images.

CE and mCE divide by a baseline's errors: AlexNet's published ones for ImageNet (Hendrycks & Dietterich 2019), or
another run's robustness.json (`--baseline RUN`) for any other dataset; the report names the baseline it used."""
import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from deepres.core.config import Config, apply_overrides
from deepres.core.device import default_device
from deepres.data import build_eval_loader, eval_loader_of, imagenet_c_contents, imagenet_c_dataset
from deepres.data.imagenet_classes import imagenet_synsets
from deepres.data.corruptions import corrupt, parse_corruptions, parse_severities
from deepres.data.perturbations import NOISE_PERTURBATIONS, parse_perturbations, perturbation_sequence
from deepres.tasks import SegmentationTask, task_of
from deepres.tasks.build import load_model
from deepres.tasks.evaluate import evaluate

from .cli import add_amp_argument, amp_of
from .robustness import (ALEXNET, REPORT_FILES, Baseline, RobustnessReport, baseline_from_report,
                         flip_probability, top5_distance, write_example_grid, write_report)

NO_BASELINE = Baseline(name="none (CE and mCE need --baseline: alexnet for ImageNet, or a run's robustness.json)",
                       errors={})


@dataclass
class CorruptedBatches:
    """A loader's batch transform that first corrupts the uint8 batch, seeding each image by its index in the
    evaluation split (counted in loader order), then applies the loader's own transform."""

    inner: object  # the loader's BatchTransform
    corruption: str
    severity: int
    seed: int
    scale: str
    seen: int = 0

    def __call__(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        indices = torch.arange(self.seen, self.seen + len(images))
        self.seen += len(images)
        corrupted = corrupt(images, self.corruption, self.severity, seed=self.seed, indices=indices, scale=self.scale)
        return self.inner(corrupted, generator)


def _top1_error(model, loader, num_classes: int, amp_dtype) -> float:
    result = evaluate(model, loader, num_classes=num_classes, amp_dtype=amp_dtype, progress=None)
    return 1.0 - result["top1"] / 100.0


def corruption_errors(model, loader, corruptions, severities, *, num_classes: int, seed: int = 0,
                      scale: str = "auto", amp_dtype=None, log=print) -> dict[str, dict[int, float]]:
    """Top-1 error (0..1) of `model` on `loader`'s images under every corruption and severity."""
    inner = loader.batch_transform
    errors: dict[str, dict[int, float]] = {}
    try:
        for name in corruptions:
            for severity in severities:
                started = time.perf_counter()
                loader.batch_transform = CorruptedBatches(inner, name, severity, seed, scale)
                errors.setdefault(name, {})[severity] = _top1_error(model, loader, num_classes, amp_dtype)
                log(f"  {name} {severity}: error {100 * errors[name][severity]:.2f}% "
                    f"({time.perf_counter() - started:.1f} s)")
    finally:
        loader.batch_transform = inner
    return errors


def _raw_batches(loader, limit: int):
    """The loader's uint8 batches (its own transform set aside), up to `limit` images."""
    inner = loader.batch_transform
    loader.batch_transform = lambda images, generator=None: images
    try:
        seen = 0
        for images, _ in loader:
            yield images[: limit - seen], seen
            seen += len(images)
            if seen >= limit:
                return
    finally:
        loader.batch_transform = inner


def perturbation_results(model, loader, perturbations, *, images: int, seed: int = 0, scale: str = "auto",
                         frames: int | None = None, amp_dtype=None, log=print) -> tuple[dict, dict]:
    """({perturbation: flip probability}, {perturbation: top-5 distance}) of `model` on sequences generated from
    the first `images` images of `loader` (ImageNet-P's protocol: noise compared with the first frame, the
    others frame to frame)."""
    transform = loader.batch_transform
    model.eval()
    fps, t5ds = {}, {}
    for name in perturbations:
        started = time.perf_counter()
        predictions, scores = [], []
        for batch, first in _raw_batches(loader, images):
            sequence = perturbation_sequence(batch, name, seed=seed, indices=torch.arange(first, first + len(batch)),
                                             frames=frames, scale=scale)
            with torch.no_grad(), torch.autocast(batch.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = torch.stack([model(transform(sequence[:, t])).float() for t in range(sequence.shape[1])], 1)
            predictions.append(logits.argmax(-1).cpu())
            scores.append(logits.cpu())
        noise = name in NOISE_PERTURBATIONS
        fps[name] = flip_probability(torch.cat(predictions), noise)
        if scores[0].shape[-1] >= 5:
            t5ds[name] = top5_distance(torch.cat(scores), noise)
        log(f"  {name}: flip probability {100 * fps[name]:.2f}% ({time.perf_counter() - started:.1f} s)")
    return fps, t5ds


def _examples(loader, corruptions, severities, *, seed: int, scale: str) -> tuple[dict, torch.Tensor]:
    """The first evaluation image, clean and under every (corruption, severity), for the example grid."""
    image = next(_raw_batches(loader, 1))[0]
    grid = {(name, s): corrupt(image, name, s, seed=seed, indices=[0], scale=scale)[0].cpu()
            for name in corruptions for s in severities}
    return grid, image[0].cpu()


def resolve_baseline(spec: str, imagenet: bool) -> Baseline:
    """--baseline: 'alexnet', 'none', a robustness.json or a folder holding one (a run directory's robustness/
    folder is looked into); 'auto' = AlexNet for ImageNet-1k models, else none."""
    if spec == "auto":
        return ALEXNET if imagenet else NO_BASELINE
    if spec == "alexnet":
        return ALEXNET
    if spec == "none":
        return NO_BASELINE
    path = Path(spec)
    for candidate in (path, path / "robustness", path / "robustness.json", path / "robustness" / "robustness.json"):
        if candidate.is_file() or (candidate.is_dir() and (candidate / "robustness.json").is_file()):
            return baseline_from_report(candidate)
    raise FileNotFoundError(f"--baseline {spec}: no robustness.json there (run `deepres robustness` on that run "
                            f"first), and it is not alexnet / none")


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
    parser.add_argument("--baseline", default="auto", metavar="alexnet|none|RUN",
                        help="what CE and flip rates divide by: AlexNet's published numbers, nothing, or a run "
                             "(its robustness.json); auto = AlexNet for ImageNet-1k models, else none")
    parser.add_argument("--seed", type=int, default=0, help="corruption seed: (image, corruption, severity, seed) "
                                                            "always gives the same image")
    parser.add_argument("--batch-size", type=int, help="data.eval_batch_size")
    add_amp_argument(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config override, e.g. --set data.limit_val=1000")
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
    if task_of(cfg.data) is SegmentationTask:
        raise ValueError(f"deepres robustness measures classifiers; {args.checkpoint} is a segmentation model")
    cfg = replace(cfg, data=replace(cfg.data, in_chans=loaded.preprocess.in_chans))
    # A deepres run's class list labels the data; other weights (ImageNet-1k) take the dataset's own (sorted synsets)
    data_classes = classes if loaded.config is not None else None
    device = default_device()
    model = model.to(device).eval()
    amp_dtype = amp_of(args, device).dtype
    baseline = resolve_baseline(args.baseline, imagenet=len(classes) == 1000)
    name = str(loaded.source.get("checkpoint") or args.checkpoint)
    print(f"{name}: {cfg.model.name}; baseline {baseline.name}")

    if args.imagenet_c:
        folders = data_classes or (imagenet_synsets() if len(classes) == 1000 else classes)
        report = _imagenet_c_report(model, args.imagenet_c, corruptions, severities, cfg, folders, device,
                                    amp_dtype, baseline, name)
    else:
        loader, info = build_eval_loader(cfg.data, device, classes=data_classes, seed=cfg.train.seed)
        dataset = (f"{cfg.data.name} {cfg.data.val_split} ({info.eval_size} images), corrupted on the fly: "
                   f"deepres.data.corruptions, scale {args.scale}, seed {args.seed}")
        print(f"clean: {dataset}")
        clean = _top1_error(model, loader, len(classes), amp_dtype)
        print(f"  clean error {100 * clean:.2f}%")
        errors = corruption_errors(model, loader, corruptions, severities, num_classes=len(classes), seed=args.seed,
                                   scale=args.scale, amp_dtype=amp_dtype)
        fps, t5ds = perturbation_results(model, loader, perturbations, images=args.perturbation_images,
                                         seed=args.seed, scale=args.scale, frames=args.frames, amp_dtype=amp_dtype)
        report = RobustnessReport(model=name, clean_error=clean, errors=errors, baseline=baseline,
                                  flip_probabilities=fps, top5_distances=t5ds, dataset=dataset)
        grid, image = _examples(loader, corruptions, severities, seed=args.seed, scale=args.scale)
        out.mkdir(parents=True, exist_ok=True)
        write_example_grid(grid, out / "examples.png", clean=image)
    write_report(report, out)
    summary = report.summary()
    for key in ("mce_15", "mce_19", "relative_mce_15", "mce_evaluated", "mfr"):
        if summary[key] is not None:
            print(f"{key}: {100 * summary[key]:.1f}%")
    print(f"wrote {out}/{', '.join(REPORT_FILES)}{'' if args.imagenet_c else ', examples.png'}")
    return 0


def _imagenet_c_report(model, root, corruptions, severities, cfg: Config, classes, device, amp_dtype,
                       baseline: Baseline, name: str) -> RobustnessReport:
    """Errors on an ImageNet-C folder: every asked (corruption, severity) present there, read as Hendrycks'
    test.py does: the model's input size (224 for ImageNet: the 224x224 JPEGs as they are; other sizes are resized
    on the shorter side and centre-cropped to it); the clean error is the model's on cfg's data when data.root is set, else unknown."""
    present = imagenet_c_contents(root)
    data = replace(cfg.data, eval_preset="none")
    errors: dict[str, dict[int, float]] = {}
    for corruption in corruptions:
        for severity in severities:
            if severity not in present.get(corruption, ()):
                continue
            dataset = imagenet_c_dataset(root, corruption, severity, classes, on_bad_image=data.on_bad_image)
            loader = eval_loader_of(dataset, data, device)
            errors.setdefault(corruption, {})[severity] = _top1_error(model, loader, len(classes), amp_dtype)
            print(f"  {corruption} {severity}: error {100 * errors[corruption][severity]:.2f}%")
    if not errors:
        raise FileNotFoundError(f"--imagenet-c {root} holds none of the asked corruptions/severities "
                                f"(it has {', '.join(present) or 'nothing'})")
    clean = None
    if cfg.data.root:
        loader, _ = build_eval_loader(cfg.data, device, classes=classes if cfg.data.name != "imagenet" else None)
        clean = _top1_error(model, loader, len(classes), amp_dtype)
    return RobustnessReport(model=name, clean_error=clean, errors=errors, baseline=baseline,
                            dataset=f"ImageNet-C at {root} (at the model's input size: 224x224 images as stored, as "
                                    f"Hendrycks' test.py)")
