"""Measuring a classifier's robustness (`deepres robustness`, deepres.commands.robustness): corruption error
(ImageNet-C style, mCE) and flip rate (ImageNet-P style, mFR), on corruptions generated on the fly from any
evaluation split (deepres.data.corruptions, seeded by image index) or read from an ImageNet-C folder; a report
(markdown, CSV, JSON, error-vs-severity plot) and a grid of example corrupted images.

CE and mCE divide by a baseline's errors: AlexNet's published ones for ImageNet-1k classifiers (Hendrycks &
Dietterich 2019), or another run's robustness.json (`--baseline RUN`, measured on as many images at the same
severities) for any dataset; the report names the baseline it used."""
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from deepres.core.config import Config
from deepres.data import build_eval_loader, eval_loader_of, imagenet_c_contents, imagenet_c_dataset
from deepres.data.corruptions import corrupt
from deepres.data.corruptions.perturbations import NOISE_PERTURBATIONS, perturbation_sequence
from deepres.tasks.evaluate import evaluate

from .robustness import (ALEXNET, PERCENT_DECIMALS, Baseline, RobustnessReport, as_stored, baseline_from_report,
                         check_comparable, flip_probability, top5_distance)

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


def top1_error(model, loader, num_classes: int, amp_dtype) -> float:
    """Top-1 error (0..1) of `model` on `loader`, rounded as the report stores it."""
    result = evaluate(model, loader, num_classes=num_classes, amp_dtype=amp_dtype, progress=None)
    return as_stored(1.0 - result["top1"] / 100.0)


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
                errors.setdefault(name, {})[severity] = top1_error(model, loader, num_classes, amp_dtype)
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
        fps[name] = as_stored(flip_probability(torch.cat(predictions), noise))
        if scores[0].shape[-1] >= 5:
            t5ds[name] = round(top5_distance(torch.cat(scores), noise), PERCENT_DECIMALS)  # rank positions
        log(f"  {name}: flip probability {100 * fps[name]:.2f}% ({time.perf_counter() - started:.1f} s)")
    return fps, t5ds


def examples(loader, corruptions, severities, *, seed: int, scale: str) -> tuple[dict, torch.Tensor]:
    """The first evaluation image, clean and under every (corruption, severity), for the example grid."""
    image = next(_raw_batches(loader, 1))[0]
    grid = {(name, s): corrupt(image, name, s, seed=seed, indices=[0], scale=scale)[0].cpu()
            for name in corruptions for s in severities}
    return grid, image[0].cpu()


def resolve_baseline(spec: str, imagenet: bool, model: str = "this model") -> Baseline:
    """--baseline: 'alexnet' (ImageNet-1k classifiers only: its errors are on ImageNet-C's 1000 classes), 'none', a
    robustness.json or a folder holding one (a run directory's robustness/ folder is looked into); 'auto' =
    AlexNet for ImageNet-1k models, else none. `model` describes the model in the refusal."""
    if spec == "auto":
        return ALEXNET if imagenet else NO_BASELINE
    if spec == "alexnet":
        if not imagenet:
            raise ValueError(f"--baseline alexnet: AlexNet's published errors are an ImageNet-1k classifier's on "
                             f"ImageNet-C, and {model} is not an ImageNet-1k classifier; give --baseline RUN (a run "
                             f"measured alike on this dataset) or none")
        return ALEXNET
    if spec == "none":
        return NO_BASELINE
    path = Path(spec)
    for candidate in (path, path / "robustness", path / "robustness.json", path / "robustness" / "robustness.json"):
        if candidate.is_file() or (candidate.is_dir() and (candidate / "robustness.json").is_file()):
            return baseline_from_report(candidate)
    raise FileNotFoundError(f"--baseline {spec}: no robustness.json there (run `deepres robustness` on that run "
                            f"first), and it is not alexnet / none")


def imagenet_c_report(model, root, corruptions, severities, cfg: Config, classes, device, amp_dtype,
                      baseline: Baseline, name: str, log=print) -> RobustnessReport:
    """Errors on an ImageNet-C folder: every asked (corruption, severity) present there, read as Hendrycks'
    test.py does: the model's input size (224 for ImageNet: the 224x224 JPEGs as they are; other sizes are resized
    on the shorter side and centre-cropped to it); the clean error is the model's on cfg's data when data.root is
    set, else unknown. Every folder must hold as many images (ImageNet-C's hold 50,000), and a run baseline must
    have been measured on that many at the same severities: checked before anything is evaluated."""
    present = imagenet_c_contents(root)
    data = replace(cfg.data, eval_preset="none")
    datasets = {(corruption, severity): imagenet_c_dataset(root, corruption, severity, classes,
                                                           on_bad_image=data.on_bad_image)
                for corruption in corruptions for severity in severities if severity in present.get(corruption, ())}
    if not datasets:
        raise FileNotFoundError(f"--imagenet-c {root} holds none of the asked corruptions/severities "
                                f"(it has {', '.join(present) or 'nothing'})")
    counts = {key: len(dataset) for key, dataset in datasets.items()}
    first = next(iter(counts))
    odd = next((key for key, count in counts.items() if count != counts[first]), None)
    if odd is not None:
        raise ValueError(f"--imagenet-c {root}: {'/'.join(map(str, odd))} holds {counts[odd]} images but "
                         f"{'/'.join(map(str, first))} {counts[first]}; an mCE averages errors on the same images")
    check_comparable(baseline, counts[first], sorted({s for _, s in datasets}))
    errors: dict[str, dict[int, float]] = {}
    for (corruption, severity), dataset in datasets.items():
        loader = eval_loader_of(dataset, data, device)
        errors.setdefault(corruption, {})[severity] = top1_error(model, loader, len(classes), amp_dtype)
        log(f"  {corruption} {severity}: error {100 * errors[corruption][severity]:.2f}%")
    clean = None
    if cfg.data.root:
        loader, _ = build_eval_loader(cfg.data, device, classes=classes if cfg.data.name != "imagenet" else None)
        clean = top1_error(model, loader, len(classes), amp_dtype)
    return RobustnessReport(model=name, clean_error=clean, errors=errors, baseline=baseline, images=counts[first],
                            dataset=f"ImageNet-C at {root} (at the model's input size: 224x224 images as stored, as "
                                    f"Hendrycks' test.py)")
