"""`evaluate`: top-1/top-5 accuracy, loss, per-class accuracy and confusion matrix of a classifier.

Multi-view testing (several square scales, optionally each with its horizontal flip) averages the
softmax probabilities of all views and predicts from the average, as in the ResNet paper's
"fully-convolutional form ... averaged over multiple scales". The models end in global average
pooling, so any input size works.

Distributed evaluation: each rank evaluates its own disjoint shard (the eval loaders shard contiguously, no
padding), and the counts (confusion matrix, top-k hits, loss sum, images, skipped images) are summed over ranks with
all_reduce before anything is computed from them, so N ranks give exactly the numbers of one process.
"""
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from deepres.core.device import adapt_threads, keep_freed_memory
from deepres.core.distributed import all_reduce_sum, is_distributed
from deepres.models.base import eval_mode, module_device


def make_views(images: torch.Tensor, scales: Sequence[int] = (), flip: bool = False) -> list[torch.Tensor]:
    """The test-time views of a batch: each scale (square, bilinear + antialias) and, with `flip`, its mirror."""
    if scales:
        resized = []
        for size in scales:
            if tuple(images.shape[-2:]) == (size, size):
                resized.append(images)  # the native size: the unresized batch
            else:
                resized.append(F.interpolate(images, size=(size, size), mode="bilinear",
                                             align_corners=False, antialias=True))
    else:
        resized = [images]
    if flip:
        return [v for x in resized for v in (x, x.flip(-1))]
    return resized


def evaluate(model: nn.Module, loader: Iterable, *, num_classes: int, scales: Sequence[int] = (),
             flip: bool = False, amp_dtype: torch.dtype | None = None,
             class_names: Sequence[str] | None = None, max_batches: int = 0,
             distributed: bool | None = None, progress: bool | None = False) -> dict:
    """Evaluate `model` on (images, labels) batches; accuracies in percent.

    Returns a dict:
      top1, top5   accuracy (%); top5 is top-k with k = min(5, num_classes), given as `top5_k`
      loss         mean cross-entropy (nats). One view: of the logits. Several views (scales/flip):
                   of the log of the averaged softmax probabilities, i.e. the loss of the prediction made.
      n            images counted
      skipped      bad images the loader dropped (its `skipped` after the pass; 0 for a loader without one)
      per_class    accuracy (%) per true class; nan for classes absent from the data
      confusion    (num_classes, num_classes) int64 CPU tensor, rows = true class, cols = predicted
      class_names  the names given (or "0", "1", ...)
    `max_batches` > 0 stops after that many batches (0 = the whole loader).
    `distributed`: sum the counts over all ranks, each having evaluated its own shard (every rank must call
    evaluate, and all get the same result); None = whenever a process group of more than one is initialised.
    `progress`: a tqdm bar of batches on stderr; None = only when stderr is a terminal.
    """
    _check_arguments(num_classes, scales, class_names, max_batches)
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError("evaluate(distributed=True) needs an initialised process group (torch.distributed)")
    top_k = min(5, num_classes)
    metrics = None
    # eval_mode restores each module's own flag, so submodules deliberately frozen in eval mode stay so
    with eval_mode(model), torch.inference_mode():
        total = len(loader) if hasattr(loader, "__len__") else None
        if max_batches and total is not None:
            total = min(total, max_batches)
        bar = tqdm(loader, total=total, desc="eval", unit="batch", leave=False, dynamic_ncols=True,
                   disable=None if progress is None else not progress)
        for batch_index, (images, labels) in enumerate(bar):
            if images.device.type == "cpu":
                adapt_threads()  # fewer threads while other processes hold cores (core.device.ThreadGovernor)
            if max_batches and batch_index >= max_batches:
                break
            if metrics is None:
                metrics = _Accumulators(num_classes, top_k, images.device)
                if images.device.type == "cpu":
                    keep_freed_memory()  # large activations reused, not page-faulted in at every batch
            labels = metrics.checked_labels(labels.to(images.device, non_blocking=True))
            scores, loss_sum = _predict(model, images, labels, num_classes, scales, flip, amp_dtype)
            metrics.update(scores, labels, loss_sum)
    skipped = int(getattr(loader, "skipped", 0))
    if metrics is not None:
        metrics.skipped = skipped
    if distributed is None:
        distributed = is_distributed()
    if distributed:
        if metrics is None:  # a rank whose shard is empty still takes part in the sums
            metrics = _Accumulators(num_classes, top_k, module_device(model))
            metrics.skipped = skipped
        metrics.all_reduce()
    if metrics is None or metrics.count == 0:
        skipped = metrics.skipped if metrics is not None else skipped
        raise ValueError("evaluate: the loader yielded no images"
                         + (f" ({skipped} bad images skipped)" if skipped else ""))
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    return metrics.result(top_k, names)


def _predict(model, images, labels, num_classes, scales, flip, amp_dtype):
    """Scores to rank classes by (logits or averaged probabilities) and the batch's summed loss.

    `labels` must already lie in [0, num_classes) (see _Accumulators.checked_labels)."""
    views = make_views(images, scales, flip)
    probs_sum = None
    for view in views:
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(view)
        if logits.ndim != 2 or logits.shape != (images.shape[0], num_classes):
            raise ValueError(f"evaluate: model output has shape {tuple(logits.shape)}, "
                             f"expected ({images.shape[0]}, {num_classes}) for num_classes={num_classes}")
        logits = logits.float()
        if len(views) == 1:
            return logits, _summed(F.cross_entropy(logits, labels, reduction="none"))
        probs = logits.softmax(dim=1)
        probs_sum = probs if probs_sum is None else probs_sum + probs
    probs = probs_sum / len(views)
    # tiny floor: a probability that underflowed to 0 gives a large finite loss instead of inf
    log_probs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return probs, _summed(F.nll_loss(log_probs, labels, reduction="none"))


def _summed(per_image_loss: torch.Tensor) -> torch.Tensor:
    # Summed in float64: the float32 per-image values then add up exactly in practice, so the total does not
    # depend on how images are grouped into batches or shared between ranks.
    return per_image_loss.double().sum()


class _Accumulators:
    """Running metrics kept on the images' device; nothing synchronises until `result`."""

    def __init__(self, num_classes: int, top_k: int, device: torch.device):
        # Imported here, not at the top: `import torchmetrics` takes ~0.37 s (python -X importtime, one run on the
        # 2-core CPU dev box), and every importer of deepres.tasks (the predictor, `deepres predict`) would pay it.
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        self.num_classes = num_classes
        # sync_on_compute=False: torchmetrics would otherwise gather across ranks on its own whenever a process
        # group exists, summing shards that were never split; all_reduce below does it when asked.
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro", sync_on_compute=False).to(device)
        self.topk = MulticlassAccuracy(num_classes, top_k=top_k, average="micro", sync_on_compute=False).to(device)
        self.confusion = MulticlassConfusionMatrix(num_classes, sync_on_compute=False).to(device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_labels = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0
        self.skipped = 0  # bad images the loader dropped, not counted in `count`
        self.device = device

    def checked_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """`labels` clamped into [0, num_classes), the out-of-range ones counted (`result` reports them).

        Counted rather than checked per batch (a check would synchronise the GPU each batch); clamped so the
        loss and torchmetrics' one_hot never fail meanwhile."""
        self.bad_labels += ((labels < 0) | (labels >= self.num_classes)).sum()
        return labels.clamp(0, self.num_classes - 1)

    def update(self, scores: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Add a batch; `labels` as returned by checked_labels."""
        self.top1.update(scores, labels)
        self.topk.update(scores, labels)
        self.confusion.update(scores, labels)
        self.loss_sum += loss_sum.double()
        self.count += labels.shape[0]

    def all_reduce(self) -> None:
        """Sum every count over all ranks (collective: every rank must call it)."""
        # All of these metrics' states are counts summed over updates (torchmetrics dist_reduce_fx="sum":
        # tp/fp/tn/fn, confmat), so the sum over ranks is the state of one metric that saw every image.
        states = [s for metric in (self.top1, self.topk, self.confusion) for s in metric.metric_state.values()]
        counts = torch.stack([self.bad_labels, torch.tensor(self.count, dtype=torch.int64, device=self.device),
                              torch.tensor(self.skipped, dtype=torch.int64, device=self.device)])
        for tensor in (*states, counts, self.loss_sum):
            all_reduce_sum(tensor)
        self.bad_labels, self.count, self.skipped = counts[0], int(counts[1]), int(counts[2])

    def result(self, top_k: int, class_names: list[str]) -> dict:
        bad = int(self.bad_labels)
        if bad:
            raise ValueError(f"evaluate: {bad} labels outside [0, {self.num_classes - 1}] "
                             f"(num_classes={self.num_classes})")
        confusion = self.confusion.compute().cpu().to(torch.int64)
        return {
            "top1": 100.0 * float(self.top1.compute()),
            "top5": 100.0 * float(self.topk.compute()),
            "top5_k": top_k,
            "loss": float(self.loss_sum) / self.count,
            "n": self.count,
            "skipped": self.skipped,
            "per_class": per_class_accuracy(confusion),
            "confusion": confusion,
            "class_names": class_names,
        }


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Accuracy (%) of each true class (confusion rows); nan where the class has no images."""
    totals = confusion.sum(dim=1).tolist()
    correct = confusion.diagonal().tolist()
    return [100.0 * c / t if t else math.nan for c, t in zip(correct, totals)]


def _check_arguments(num_classes, scales, class_names, max_batches) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"evaluate: num_classes must be an integer >= 2, got {num_classes!r}")
    for size in scales:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"evaluate: scales must be positive integers (pixels), got {list(scales)!r}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"evaluate: {len(class_names)} class_names given for num_classes={num_classes}")
    if not isinstance(max_batches, int) or max_batches < 0:
        raise ValueError(f"evaluate: max_batches must be an integer >= 0 (0 = all), got {max_batches!r}")
