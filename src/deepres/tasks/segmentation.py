"""Semantic-segmentation metrics from one confusion matrix summed over the whole dataset: the definition of
mmsegmentation, the Cityscapes benchmark and ADE20K (not a mean of per-image scores).

Rows are ground-truth classes, columns predicted ones; pixels whose target is `ignore_index` (255) count nowhere.
IoU_c = TP / (TP + FP + FN); a class absent from both the ground truth and the predictions has no IoU (nan) and is
left out of the mean. Pixel accuracy = all TP / all counted pixels; mean accuracy averages TP / ground-truth pixels
over the classes present in the ground truth. Only the (C, C) matrix is kept, never a dataset's predictions, and
its counts add up exactly over batches and over ranks (all_reduce), so N processes score as one.

The segmentation task row (loss, batch mixing, eval transform) comes with the segmentation dataset formats.
"""
import math

import torch

from deepres.core.distributed import all_reduce_sum

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
        index = target[valid] * k + prediction[valid].clamp(0, k - 1)
        self.counts += torch.bincount(index, minlength=k * k).view(k, k)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks, each having scored its own shard (collective: every rank calls it)."""
        all_reduce_sum(self.counts)
        all_reduce_sum(self.bad_targets)

    def scores(self, class_names: list[str] | None = None) -> dict:
        """miou, pixel_acc, mean_acc (%), per_class_iou and per_class_acc (%, nan where undefined), pixels,
        class_names."""
        bad = int(self.bad_targets)
        if bad:
            raise ValueError(f"{bad} target pixels are outside [0, {self.num_classes - 1}] and not "
                             f"{self.ignore_index} (the ignore index)")
        counts = self.counts.double().cpu()
        true_positive = counts.diagonal()
        labelled, predicted = counts.sum(dim=1), counts.sum(dim=0)
        union = labelled + predicted - true_positive
        iou = [100.0 * float(t / u) if u > 0 else math.nan for t, u in zip(true_positive, union)]
        acc = [100.0 * float(t / n) if n > 0 else math.nan for t, n in zip(true_positive, labelled)]
        pixels = float(counts.sum())
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        return {"miou": _nanmean(iou), "pixel_acc": 100.0 * float(true_positive.sum()) / pixels if pixels else math.nan,
                "mean_acc": _nanmean(acc), "per_class_iou": iou, "per_class_acc": acc, "pixels": int(pixels),
                "class_names": names}


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
