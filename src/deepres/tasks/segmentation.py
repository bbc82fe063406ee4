"""Semantic-segmentation metrics from one confusion matrix summed over the whole dataset: the definition of
mmsegmentation, the Cityscapes benchmark and ADE20K (not a mean of per-image scores).

Rows are ground-truth classes, columns predicted ones; pixels whose target is `ignore_index` (255) count nowhere.
IoU_c = TP / (TP + FP + FN); a class absent from both the ground truth and the predictions has no IoU (nan) and is
left out of the mean. Pixel accuracy = all TP / all counted pixels; mean accuracy averages TP / ground-truth pixels
over the classes present in the ground truth. Only the (C, C) matrix is kept, never a dataset's predictions, and
its counts add up exactly over batches and over ranks (all_reduce), so N processes score as one.

`SegmentationTask` is the task row the training loop and `deepres eval` use (loss, metrics, eval transform), and
`segment` the one test-time predictor (whole image or sliding windows, multi-scale, flip, shift-and-stitch) that
evaluation and inference share.
"""
import base64
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from deepres.core.config import Config, DataConfig, EvalConfig, TrainConfig, apply_overrides
from deepres.core.device import model_device, resolve_amp
from deepres.core.distributed import all_reduce_sum, is_distributed
from deepres.core.files import atomic_write
from deepres.core.preprocess import Preprocess
from deepres.data import seg_eval_preprocess
from deepres.data.readers.seg_labels import CITYSCAPES_CLASSES, cityscapes_train_to_label, palette_for, write_mask_png
from deepres.models.base import eval_mode, module_device

from .cityscapes_metrics import (CityscapesInstanceScores, instance_line, instance_loader, instance_metrics,
                                 with_instance_lines)
from .reports import segmentation_report

IGNORE_INDEX = 255  # target value of pixels that are not scored (void, borders, "other")


class ConfusionMatrix:
    """Pixel counts (num_classes, num_classes) int64 on `device`: rows ground truth, columns prediction."""

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        # targets outside [0, num_classes) other than ignore_index: counted on the device (no sync per batch)
        self.bad_targets = torch.zeros((), dtype=torch.int64, device=device)
        # per ground-truth class, pixels predicted as no class (a prediction outside [0, num_classes): ADE20K's
        # "other" in a prediction file): missed, but no class's false positive
        self.unassigned = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: `prediction` class indices (N, H, W), or scores (N, C, H, W) whose argmax is taken;
        `target` (N, H, W) class indices with ignore_index for unscored pixels."""
        if prediction.dim() == target.dim() + 1:
            prediction = prediction.argmax(dim=1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        target = target.to(self.counts.device).long()
        prediction = prediction.to(self.counts.device).long()
        scored = target != self.ignore_index
        valid = scored & (target >= 0) & (target < self.num_classes)
        self.bad_targets += (scored & ~valid).sum()
        k = self.num_classes
        target, prediction = target[valid], prediction[valid]
        assigned = (prediction >= 0) & (prediction < k)
        self.counts += torch.bincount(target[assigned] * k + prediction[assigned], minlength=k * k).view(k, k)
        self.unassigned += torch.bincount(target[~assigned], minlength=k)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks, each having scored its own shard (collective: every rank calls it)."""
        all_reduce_sum(self.counts)
        all_reduce_sum(self.bad_targets)
        all_reduce_sum(self.unassigned)

    def scores(self, class_names: list[str] | None = None) -> dict:
        """miou, pixel_acc, mean_acc (%), per_class_iou and per_class_acc (%, nan where undefined), pixels,
        class_names."""
        bad = int(self.bad_targets)
        if bad:
            raise ValueError(f"{bad} target pixels are outside [0, {self.num_classes - 1}] and not "
                             f"{self.ignore_index} (the ignore index)")
        counts = self.counts.double().cpu()
        true_positive = counts.diagonal()
        labelled, predicted = counts.sum(dim=1) + self.unassigned.double().cpu(), counts.sum(dim=0)
        union = labelled + predicted - true_positive
        iou = [100.0 * float(t / u) if u > 0 else math.nan for t, u in zip(true_positive, union)]
        acc = [100.0 * float(t / n) if n > 0 else math.nan for t, n in zip(true_positive, labelled)]
        pixels = float(labelled.sum())
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        return {"miou": _nanmean(iou), "pixel_acc": 100.0 * float(true_positive.sum()) / pixels if pixels else math.nan,
                "mean_acc": _nanmean(acc), "per_class_iou": iou, "per_class_acc": acc, "pixels": int(pixels),
                "class_names": names}


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


# ------------------------------------------------------------------------------------------------- losses


def bootstrapped_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.6,
                               min_kept: int = 256, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ademxapp's bootstrapped softmax: the mean cross-entropy over the pixels whose probability of the true class
    is at most `threshold`, and at least the `min_kept` hardest ones of the batch (all of them when fewer)."""
    losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    losses = losses[target.flatten() != ignore_index]
    if losses.numel() == 0:
        return logits.sum() * 0.0  # nothing scored: a zero that still has a graph
    hard = losses >= -math.log(threshold)  # p(target) <= threshold
    kept = int(hard.sum())
    if kept >= min_kept:
        return losses[hard].mean()
    return losses.topk(min(min_kept, losses.numel())).values.mean()


def segmentation_loss(output, target: torch.Tensor, train: TrainConfig) -> torch.Tensor:
    """The training loss of a segmentation model's output (logits (N, C, H, W), or {"out", "aux"} from a model with
    an auxiliary head: out + train.aux_weight x aux), targets (N, H, W) with 255 ignored; float32."""
    if isinstance(output, dict):
        main = segmentation_loss(output["out"], target, train)
        return main + train.aux_weight * segmentation_loss(output["aux"], target, train) if train.aux_weight else main
    logits, target = output.float(), target.long()
    if train.loss == "bootstrap":
        return bootstrapped_cross_entropy(logits, target, threshold=train.bootstrap_threshold,
                                          min_kept=train.bootstrap_min_kept)
    if train.loss != "ce":
        raise ValueError(f"train.loss={train.loss!r}: segmentation trains with 'ce' or 'bootstrap'")
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, label_smoothing=train.label_smoothing)


# ------------------------------------------------------------------------------------------ test-time views


@dataclass(frozen=True)
class SegViews:
    """How a segmentation model is run on one image at test time (eval.* keys): every view's class probabilities
    are averaged; sliding windows average their logits first, as mmseg does."""
    mode: str = "whole"  # "whole" or "slide"
    crop: int = 512  # slide: window side, pixels
    stride: int = 0  # slide: window step (0: two thirds of the window)
    scale_ratios: tuple[float, ...] = ()  # factors of the input size (none: 1.0 only)
    flip: bool = False
    test_steps: int = 1  # shift-and-stitch: k x k passes shifted by output_stride / k pixels

    @classmethod
    def from_config(cls, ev: EvalConfig, data: DataConfig) -> "SegViews":
        crop = ev.crop or data.image_size
        return cls(ev.mode, crop, ev.stride, tuple(ev.scale_ratios), ev.flip, ev.test_steps)

    def __post_init__(self):
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"eval.mode must be whole or slide, got {self.mode!r}")
        if self.crop < 1 or self.stride < 0 or self.test_steps < 1:
            raise ValueError(f"eval.crop must be >= 1, eval.stride >= 0 and eval.test_steps >= 1, got {self.crop}, "
                             f"{self.stride}, {self.test_steps}")
        if any(not 0 < r <= 8 for r in self.scale_ratios):
            raise ValueError(f"eval.scale_ratios must be factors in (0, 8], got {list(self.scale_ratios)}")


def slide_logits(model: nn.Module, images: torch.Tensor, crop: int, stride: int, num_classes: int) -> torch.Tensor:
    """Logits of overlapping `crop` windows every `stride` pixels, averaged where they overlap (mmseg's window
    placement: the last window in each direction ends at the border)."""
    n, _, height, width = images.shape
    stride = stride or max(crop * 2 // 3, 1)
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    total = images.new_zeros(n, num_classes, height, width, dtype=torch.float32)
    count = images.new_zeros(1, 1, height, width, dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * stride, c * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            total[:, :, y1:y2, x1:x2] += model(images[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def _shifted_logits(model, images, mode: SegViews, num_classes: int, output_stride: int) -> torch.Tensor:
    """Logits at the input's size; with test_steps k, the mean over k x k copies of the image shifted (padded with
    edge pixels) by multiples of output_stride / k, each output shifted back."""
    k = mode.test_steps
    offsets = [round(i * output_stride / k) for i in range(k)]
    height, width = images.shape[-2:]
    total = None
    for dy in offsets:
        for dx in offsets:
            # shifted by (dy, dx), padded to a whole number of output strides more, so the upsampled logits
            # stay aligned with the pixels (an input of H + dy pixels would stretch them by (H + dy) / H)
            pads = (dx, (output_stride - dx) % output_stride, dy, (output_stride - dy) % output_stride)
            x = F.pad(images, pads, mode="replicate") if dy or dx else images
            logits = (slide_logits(model, x, mode.crop, mode.stride, num_classes) if mode.mode == "slide"
                      else model(x).float())
            logits = logits[:, :, dy:dy + height, dx:dx + width]
            total = logits if total is None else total + logits
    return total / (k * k)


def segment(model: nn.Module, images: torch.Tensor, out_size: tuple[int, int] | None = None, *,
            mode: SegViews = SegViews(), num_classes: int | None = None, output_stride: int | None = None,
            amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Class probabilities (N, C, *out_size) of normalised `images` (N, C, H, W) under the test-time `mode`,
    averaged over its views (scales x flips); out_size defaults to the input's (the stored mask's size when the
    image was resized for testing). Call under torch.inference_mode() with the model in eval mode."""
    out_size = tuple(out_size or images.shape[-2:])
    num_classes = num_classes or int(getattr(model, "num_classes"))
    output_stride = int(output_stride or getattr(model, "output_stride", None) or 8)
    height, width = images.shape[-2:]
    probs = None
    ratios = mode.scale_ratios or (1.0,)
    for ratio in ratios:
        size = (max(round(height * ratio), 1), max(round(width * ratio), 1))
        x = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear",
                                                                  align_corners=False)
        for flipped in (False, True) if mode.flip else (False,):
            view = x.flip(-1) if flipped else x
            with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = _shifted_logits(model, view, mode, num_classes, output_stride)
            logits = logits.float()
            if logits.shape[1] != num_classes:
                raise ValueError(f"the model gives {logits.shape[1]} classes, expected {num_classes}")
            if flipped:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != out_size:
                logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
            view_probs = logits.softmax(dim=1)
            probs = view_probs if probs is None else probs + view_probs
    return probs / (len(ratios) * (2 if mode.flip else 1))


def _batches(images, masks):
    """One loader batch as (image batch, mask batch) pairs: itself, or one pair per image when the loader gave
    lists (images of different sizes)."""
    if isinstance(images, (list, tuple)):
        return zip(images, masks)
    return ((images, masks),)


def evaluate_segmentation(model: nn.Module, loader: Iterable, *, num_classes: int, mode: SegViews = SegViews(),
                          amp_dtype: torch.dtype | None = None, class_names: Sequence[str] | None = None,
                          distributed: bool | None = None, progress: bool | None = False,
                          max_batches: int = 0, instances: bool = False) -> dict:
    """Score `model` on (images, masks) batches with one confusion matrix over the whole loader (and all ranks):
    ConfusionMatrix.scores() (miou, pixel_acc, mean_acc in %, per-class IoU/accuracy) plus test_loss (mean NLL of
    the averaged probabilities over scored pixels), n (images) and confusion (the matrix, CPU int64). With
    `instances` (Cityscapes masks carrying their instanceIds, (N, 2, H, W)): also CityscapesInstanceScores.scores()
    (iiou, category_iou, category_iiou, ...), all at the masks' size."""
    device = module_device(model)
    matrix = ConfusionMatrix(num_classes, device=device)
    instance_scores = CityscapesInstanceScores(device) if instances else None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    images_seen = torch.zeros((), dtype=torch.int64, device=device)
    with eval_mode(model), torch.inference_mode():
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = tqdm(loader, total=total, desc="eval", unit="batch", leave=False, dynamic_ncols=True,
                   disable=None if progress is None else not progress)
        for index, (images, masks) in enumerate(bar):
            if max_batches and index >= max_batches:
                break
            for x, target in _batches(images, masks):
                target = target.to(device).long()
                # (N, 2, H, W): class indices and instanceIds (SegmentationDataset.with_instances)
                target, instance_ids = (target[:, 0], target[:, 1]) if target.dim() == 4 else (target, None)
                probs = segment(model, x.to(device), tuple(target.shape[-2:]), mode=mode, num_classes=num_classes,
                                amp_dtype=amp_dtype)
                prediction = probs.argmax(dim=1)
                matrix.update(prediction, target)
                if instance_scores is not None:
                    if instance_ids is None:
                        raise ValueError("evaluate: instance scores need masks with their instanceIds "
                                         "(SegmentationDataset.with_instances)")
                    instance_scores.update(prediction, target, instance_ids)
                log_probs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
                scored = torch.where(target == IGNORE_INDEX, target, target.clamp(0, num_classes - 1))
                loss_sum += F.nll_loss(log_probs, scored, ignore_index=IGNORE_INDEX, reduction="sum").double()
                images_seen += target.shape[0]
    if distributed if distributed is not None else is_distributed():
        matrix.all_reduce()
        all_reduce_sum(loss_sum)
        all_reduce_sum(images_seen)
        if instance_scores is not None:
            instance_scores.all_reduce()
    if int(images_seen) == 0:
        raise ValueError("evaluate: the loader yielded no images")
    result = matrix.scores(class_names)
    result.update(test_loss=float(loss_sum) / max(result["pixels"], 1), n=int(images_seen),
                  confusion=matrix.counts.cpu())
    if instance_scores is not None:
        result.update(instance_scores.scores(matrix.counts, matrix.unassigned))
    return result


# --------------------------------------------------------------------------------------------- the task


def seg_preprocess(data: DataConfig, in_chans: int) -> Preprocess:
    """The eval transform of a segmentation data config: the `base_side` side to data.test_size (0: the images as
    stored), no crop, the config's normalisation; the eval loader's own (deepres.data.seg_eval_preprocess)."""
    return seg_eval_preprocess(data, in_chans)


@dataclass(frozen=True)
class SegmentationTask:
    """What the training loop asks of semantic segmentation (the `deepres.tasks.Task` interface): per-pixel
    cross-entropy (or bootstrapped) with 255 ignored plus the weighted auxiliary loss; mIoU picks the best."""
    num_classes: int
    train: TrainConfig
    mode: SegViews
    name: ClassVar[str] = "segmentation"
    best_metric: ClassVar[str] = "miou"
    labels_images: ClassVar[bool] = False  # it labels pixels: no Grad-CAM, mCE, int8 agreement or distillation
    needs_indices: ClassVar[bool] = False
    predict_flags: ClassVar[tuple[str, ...]] = ("label_ids", "no_overlay", "flip", "mode", "crop", "stride",
                                                "scale_ratios", "test_steps", "test_size")

    @classmethod
    def from_config(cls, cfg: Config) -> "SegmentationTask":
        if cfg.train.mixup_alpha or cfg.train.cutmix_alpha:
            raise ValueError("train.mixup_alpha / cutmix_alpha mix class labels; a segmentation run has masks: set "
                             "them to 0")
        if cfg.train.loss == "bce":
            raise ValueError("train.loss=bce is for classification; segmentation trains with ce or bootstrap")
        return cls(cfg.model.num_classes, cfg.train, SegViews.from_config(cfg.eval, cfg.data))

    def mix(self, images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator,
            indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return images, masks  # no batch mixing for masks

    def loss(self, output, targets: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(output, targets, self.train)

    def evaluate(self, model: nn.Module, loader, *, ema_model: nn.Module | None = None) -> dict[str, float]:
        """miou, pixel_acc, mean_acc (%), test_loss, and ema_miou with an EMA model; summed over ranks."""
        kwargs = dict(num_classes=self.num_classes, mode=self.mode,
                      amp_dtype=resolve_amp(self.train.amp, model_device(model)).dtype)
        result = evaluate_segmentation(model, loader, **kwargs)
        metrics = {key: result[key] for key in ("miou", "pixel_acc", "mean_acc", "test_loss")}
        if ema_model is not None:
            metrics["ema_miou"] = evaluate_segmentation(ema_model, loader, **kwargs)["miou"]
        return metrics

    def record(self, metrics: dict[str, float]) -> dict[str, float]:
        return {"test_error": 100.0 - metrics["miou"], **metrics}  # what curves.png plots: 100 - mIoU

    @classmethod
    def eval_transform(cls, data: DataConfig, in_chans: int) -> Preprocess:
        return seg_preprocess(data, in_chans)

    @classmethod
    def final_lines(cls, result: dict) -> tuple[str, str]:
        """`deepres train`'s closing lines for fit's result: the best checkpoint's metric, the final metrics."""
        return (f"best mIoU {result['best_miou']:.2f}% at epoch {result['best_epoch']}",
                f"final test mIoU {result['miou']:.2f}%, pixel accuracy {result['pixel_acc']:.2f}%, mean accuracy "
                f"{result['mean_acc']:.2f}%")

    def summary(self, metrics: dict[str, float]) -> str:
        return f"test mIoU {metrics['miou']:.2f}%  pixel acc {metrics['pixel_acc']:.2f}%"

    # ------------------------------------------------------------------ evaluation of a checkpoint (deepres eval)
    @classmethod
    def eval_config(cls, cfg: Config, *, scales: list[int], view_overrides: list[str]) -> Config:
        """The config a checkpoint is evaluated under: the test-time view options as eval.* / data.test_size."""
        if scales:
            raise ValueError("--test-scales are square classification sizes; a segmentation model takes "
                             "--scale-ratios")
        return apply_overrides(cfg, view_overrides)

    @classmethod
    def evaluate_checkpoint(cls, model: nn.Module, loader, cfg: Config, *, scales: list[int], flip: bool,
                            amp_dtype, class_names) -> dict:
        """evaluate_segmentation's result at the masks' stored size; on Cityscapes with every gtFine instanceIds
        file present also iIoU and category IoU/iIoU (with an instanceIds file missing: instances_missing, its path)."""
        with_instances, missing = instance_loader(loader)
        result = evaluate_segmentation(model, with_instances or loader, num_classes=model.num_classes,
                                       mode=SegViews.from_config(cfg.eval, cfg.data), amp_dtype=amp_dtype,
                                       class_names=class_names, progress=None, instances=with_instances is not None)
        if missing:
            result["instances_missing"] = missing
        return result

    @classmethod
    def eval_report(cls, result: dict, cfg: Config, *, scales: list[int], flip: bool, precision: str,
                    seconds: float) -> tuple[list[str], dict]:
        """(the lines `deepres eval` prints after the checkpoint's path, metrics.json's fields)."""
        views = SegViews.from_config(cfg.eval, cfg.data)
        size = f"test size {cfg.data.test_size} ({cfg.data.base_side} side)" if cfg.data.test_size else "as stored"
        lines = [f"{cfg.model.name} on {cfg.data.name} {cfg.data.val_split} ({result['n']} images, {size}, "
                 f"{views.mode}, scales {list(views.scale_ratios) or [1.0]}{', flip' if views.flip else ''}"
                 f"{f', test_steps {views.test_steps}' if views.test_steps > 1 else ''}, {precision})",
                 f"mIoU {result['miou']:.2f}%  pixel acc {result['pixel_acc']:.2f}%  mean acc "
                 f"{result['mean_acc']:.2f}%  ({result['n']} images in {seconds:.1f} s, "
                 f"{result['n'] / seconds:.1f} images/s, decoding included)"]
        metrics = {k: result[k] for k in ("miou", "pixel_acc", "mean_acc", "test_loss", "n", "pixels")}
        if "iiou" in result:
            lines.append(instance_line(result))
            metrics.update(instance_metrics(result, result["class_names"]))
        elif "instances_missing" in result:
            lines.append(f"no iIoU or category scores: {result['instances_missing']} is missing")
        metrics.update(seconds=seconds, test_size=cfg.data.test_size, mode=views.mode, crop=views.crop,
                       stride=views.stride, scale_ratios=list(views.scale_ratios), flip=views.flip,
                       test_steps=views.test_steps)
        return lines, metrics

    @classmethod
    def write_eval_files(cls, result: dict, out: Path | None, metrics: dict) -> list[str]:
        """Each class's IoU (and Cityscapes' iIoU, and each category's) as lines; with `out`, metrics.json,
        per_class.csv (IoU), confusion.csv/png there."""
        lines = segmentation_report(result, out, metrics)
        return with_instance_lines(lines, result) if "iiou" in result else lines

    # ------------------------------------------------------------------ inference (Predictor, predict, serve)
    @classmethod
    def predict(cls, forward, inputs: list[torch.Tensor], sizes: list[tuple[int, int]], *, model: nn.Module,
                class_names: list[str], options) -> list[dict]:
        """One result per preprocessed image, at the image's own size (`sizes`; with options.class_map "model", the
        size the model saw): class_map (uint8 (H, W) class indices), class_shares ({class name: share of the pixels}
        for the classes present) and, with options.probabilities, probabilities (float32 (C, H, W)), under the
        test-time options.views."""
        results = []
        for x, size in zip(inputs, sizes):
            out_size = size if options.class_map == "image" else None
            probs = segment(forward, x[None], out_size, mode=options.views, num_classes=len(class_names),
                            output_stride=getattr(model, "output_stride", None))[0].cpu()
            class_map = probs.argmax(dim=0).to(torch.uint8)
            result = {"class_map": class_map, "class_shares": class_shares(class_map.numpy(), class_names)}
            if options.probabilities:
                result["probabilities"] = probs
            results.append(result)
        return results

    @classmethod
    def palette(cls, class_names: list[str], config: Config | None) -> np.ndarray:
        """The class colours of the model's dataset (VOC's for a model without a deepres config)."""
        return palette_for(config.data.name if config is not None else "voc", len(class_names))

    @classmethod
    def card(cls, class_names: list[str], config: Config | None) -> dict:
        """What this task adds to the model card (serve's GET /v1/model): the palette of its class-map PNGs."""
        return {"palette": cls.palette(class_names, config)[:len(class_names)].tolist()}

    @classmethod
    def to_json(cls, result: dict, options, card: dict) -> dict:
        """A result as the JSON API gives it: the class map as a palette PNG (base64; pixel values are class
        indices), its height and width, the image's size ([height, width]) and the share of the pixels each present
        class covers. With
        options.class_map "image" the map is at result["image_size"] (the image as uploaded; else the map's own
        size), enlarged nearest-neighbour from the size it was computed at; options.max_map_pixels caps its
        width x height (scaled down, aspect kept)."""
        class_map = result["class_map"].numpy()
        image_height, image_width = result.get("image_size") or class_map.shape
        height, width = (image_height, image_width) if options.class_map == "image" else class_map.shape
        if options.max_map_pixels and height * width > options.max_map_pixels:
            scale = math.sqrt(options.max_map_pixels / (height * width))
            height, width = max(1, int(height * scale)), max(1, int(width * scale))
        picture = Image.fromarray(class_map, mode="P")
        shares = result["class_shares"]
        if (height, width) != class_map.shape:
            picture = picture.resize((width, height), Image.Resampling.NEAREST)
            shares = class_shares(np.asarray(picture), card["classes"])  # of the map as returned
        picture.putpalette(np.asarray(card["palette"], dtype=np.uint8).tobytes())
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return {"height": int(height), "width": int(width), "image_size": [int(image_height), int(image_width)],
                "class_shares": shares, "class_map_png": base64.b64encode(buffer.getvalue()).decode()}

    @classmethod
    def line(cls, result: dict) -> str:
        """The line `deepres predict` prints for a result: path and the three classes covering most pixels."""
        shares = sorted(result["class_shares"].items(), key=lambda kv: -kv[1])[:3]
        return f"{result.get('path', '')}\t" + "  ".join(f"{name} {share:.1%}" for name, share in shares)

    @classmethod
    def prediction_writer(cls, out: Path | None, options, *, force: bool, class_names, config, label_ids=False,
                          no_overlay=False, **flags) -> "PredictionPngs":
        if label_ids and len(class_names) != len(CITYSCAPES_CLASSES):
            raise ValueError(f"--label-ids writes Cityscapes labelIds: the model has {len(class_names)} classes, not "
                             f"the 19 Cityscapes train classes")
        palette = palette_for(config.data.name if config is not None else ("cityscapes" if label_ids else "voc"),
                              len(class_names))
        return PredictionPngs(out, palette, label_ids=label_ids, overlay=not no_overlay, force=force)


def class_shares(class_map: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """{class name: share of the map's pixels} for the classes present in a class map (uint8 class indices)."""
    counts = np.bincount(class_map.ravel(), minlength=len(class_names)).tolist()
    return {name: count / class_map.size for name, count in zip(class_names, counts) if count}


class PredictionPngs:
    """`deepres predict --out DIR` for a segmentation model: per image a palette PNG of the class map (or Cityscapes
    labelIds) at the image's exact size, for programs, and an overlay JPEG for people (write_overlay: over the image
    at its own resolution, enlarged if small), named after the image."""

    def __init__(self, out: Path | None, palette, *, label_ids: bool = False, overlay: bool = True,
                 force: bool = False):
        if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
            raise ValueError(f"--out {out} exists and is not an empty folder; choose another or pass --force")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        self.out, self.palette, self.label_ids, self.overlay = out, palette, label_ids, overlay
        self.written: dict[str, str] = {}

    def add(self, result: dict) -> None:
        if self.out is None or result.get("failed"):
            return
        path = result.get("path", "")
        stem = Path(path).stem
        if stem in self.written:
            raise ValueError(f"{path} and {self.written[stem]} would both be written as {stem}.png in --out "
                             f"{self.out}; predict them into separate folders")
        self.written[stem] = path
        class_map = result["class_map"]
        ids = cityscapes_train_to_label(class_map.numpy()) if self.label_ids else class_map
        write_mask_png(self.out / f"{stem}.png", ids, self.palette)
        if self.overlay:
            write_overlay(self.out / f"{stem}_overlay.jpg", result["image"], class_map, self.palette)

    def close(self) -> str | None:
        if self.out is None:
            return None
        kind = "Cityscapes labelId" if self.label_ids else "palette"
        return f"wrote {len(self.written)} {kind} PNGs{' and overlays' if self.overlay else ''} to {self.out}"


def write_overlay(path: Path, image: torch.Tensor, class_map: torch.Tensor, palette, alpha: float = 0.5) -> None:
    """overlay_pixels as a JPEG a person can look at: enlarged for viewing (a 28-px image becomes 280 px); a large
    photo keeps its own resolution, since the class map is drawn at the image's size."""
    picture = Image.fromarray(enlarge_for_viewing(overlay_pixels(image, class_map, palette, alpha)))
    atomic_write(path, lambda f: picture.save(f, format="JPEG", quality=90))


def overlay_pixels(image: torch.Tensor, class_map: torch.Tensor, palette, alpha: float = 0.5) -> np.ndarray:
    """The image (C, H, W) 0-255 with its class map's (H, W) colours blended in (`alpha` of the colour): uint8
    HxWx3 at the image's size."""
    if class_map.shape != image.shape[-2:]:
        raise ValueError(f"an overlay needs the class map at the image's size, got {tuple(class_map.shape)} for an "
                         f"image of {tuple(image.shape[-2:])}")
    image = image.float().expand(3, -1, -1) if image.shape[0] == 1 else image.float()
    colours = torch.as_tensor(palette, dtype=torch.float32)[class_map.long()].permute(2, 0, 1)
    blended = (image * (1 - alpha) + colours * alpha).round().clamp(0, 255).to(torch.uint8)
    return blended.permute(1, 2, 0).numpy()


VIEW_MIN_SIDE = 256  # px: the shorter side a picture for people (overlays, Grad-CAM) is enlarged to at least
VIEW_MAX_SIDE = 4096  # px: the enlargement stops before the longer side passes this (a 2 x 3000 strip stays small)


def enlarge_for_viewing(pixels: np.ndarray, min_side: int = VIEW_MIN_SIDE) -> np.ndarray:
    """An image (H, W, ...) enlarged nearest-neighbour by the smallest integer factor that brings its shorter side to
    at least `min_side` px, each pixel an exact factor x factor block; never shrunk, so a larger image comes back as
    it is. The exact-size files (class-map PNGs) are for programs; this is for people."""
    height, width = pixels.shape[:2]
    factor = max(1, min(-(-min_side // min(height, width)), VIEW_MAX_SIDE // max(height, width)))
    return pixels if factor == 1 else pixels.repeat(factor, axis=0).repeat(factor, axis=1)
