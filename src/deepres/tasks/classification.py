"""Classification as a task (`ClassificationTask`): what the training loop, evaluation and inference ask of it, and
its parts: batch-level mixup / cutmix and the losses that take hard or soft targets."""
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepres.core.config import Config, DataConfig, EvalConfig, TrainConfig
from deepres.core.device import model_device, resolve_amp
from deepres.core.files import atomic_write_text
from deepres.core.preprocess import Preprocess
from deepres.data import eval_preprocess

from .evaluate import evaluate
from .inference import PredictOptions
from .reports import write_confusion_matrix


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box (y0, y1, x0, x1) of about (1 - lam) of the image area, centred uniformly, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


def mixup_cutmix(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, mix_prob: float = 1.0, switch_prob: float = 0.5,
                 per_sample: bool = False, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, float, str]:
    """Mix each image with the batch reversed; returns (images, targets, lam, mode).

    labels: int64 class indices (N,), or per-class probabilities (N, K) (e.g. labels and a teacher's soft targets
    side by side), mixed alike. mode is "none" (targets are the labels as given), "mixup" or "cutmix" (targets
    are lam·onehot(y) + (1-lam)·onehot(y reversed)). For cutmix, lam is the share of pixels actually kept after the box is
    clipped at the image border, not the sampled value. per_sample: mixup draws one lam per image (the
    Assemble-ResNet code: lam ~ Beta(alpha, alpha) per sample); lam is then their mean.
    """
    use_mixup, use_cutmix = mixup_alpha > 0, cutmix_alpha > 0
    if not (use_mixup or use_cutmix) or rng.random() >= mix_prob:
        return images, labels, 1.0, "none"
    mode = "cutmix" if use_cutmix and (not use_mixup or rng.random() < switch_prob) else "mixup"
    other = images.flip(0)
    soft = labels if labels.is_floating_point() else one_hot(labels, num_classes)
    if mode == "mixup" and per_sample:
        lams = torch.from_numpy(rng.beta(mixup_alpha, mixup_alpha, size=len(images))).float().to(images.device)
        per_image = lams.view(-1, *[1] * (images.dim() - 1))
        mixed = images * per_image + other * (1.0 - per_image)
        lams = lams[:, None]
        targets = soft * lams + soft.flip(0) * (1.0 - lams)
        return mixed, targets, float(lams.mean()), mode
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if mode == "cutmix" else rng.beta(mixup_alpha, mixup_alpha))
    if mode == "mixup":
        mixed = images * lam + other * (1.0 - lam)
    else:
        h, w = images.shape[-2:]
        y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
        mixed = images.clone()
        mixed[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    targets = soft * lam + soft.flip(0) * (1.0 - lam)
    return mixed, targets, lam, mode


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k targets_k · log softmax(logits)_k."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, *, kind: str = "ce",
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy ("ce") or sigmoid binary cross-entropy ("bce"); targets are int64 labels or probabilities.

    Computed in float32 whatever the autocast dtype. Label smoothing mixes the targets with the uniform
    distribution: t·(1-eps) + eps/K (F.cross_entropy does this itself for both target kinds).
    """
    logits = logits.float()
    if kind == "ce":
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if kind == "bce":
        num_classes = logits.shape[-1]
        if targets.dtype == torch.long:
            targets = one_hot(targets, num_classes)
        if label_smoothing > 0:
            targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
        return F.binary_cross_entropy_with_logits(logits, targets)
    raise ValueError(f"train.loss={kind!r}: expected 'ce' or 'bce'")


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · soft cross-entropy of the student's softened distribution against the teacher's (Hinton et al.
    2015), mean over the batch, float32."""
    t = temperature
    soft = F.softmax(teacher_logits.float() / t, dim=-1)
    return soft_target_cross_entropy(logits.float() / t, soft) * t * t


def logits_of(probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Logits whose softmax at `temperature` is `probs` (T · log p): a mixed soft target as teacher logits."""
    return temperature * torch.log(probs.float().clamp_min(1e-12))


@dataclass(frozen=True)
class ClassificationTask:
    """What the training loop asks of classification (the `deepres.tasks.Task` interface). With a `teacher`
    (train.kd_teacher, set by the trainer) `mix` also runs it on the mixed batch; with stored `teacher_logits`
    (train.kd_logits: one row per training image) it looks the batch's rows up by index and mixes the teacher's
    softened distributions with the same lam as the labels. Either way the loss adds knowledge distillation:
    kd_ce_weight · (label-smoothed) CE + kd_weight · T² · soft CE with the teacher."""
    num_classes: int
    train: TrainConfig  # mixup/cutmix, loss, label smoothing; amp also for evaluation
    eval: EvalConfig  # test-time scales and flip
    teacher: nn.Module | None = None  # online knowledge distillation: a frozen model in eval mode
    teacher_logits: torch.Tensor | None = None  # offline: (training images, classes), on the training device
    name: ClassVar[str] = "classification"
    best_metric: ClassVar[str] = "top1"
    # one label per image: Grad-CAM, robustness (mCE), int8 agreement and distillation are about that label
    labels_images: ClassVar[bool] = True
    # the `deepres predict` options this task reads (beyond the shared ones); others are refused for it
    predict_flags: ClassVar[tuple[str, ...]] = ("cam", "cam_stage")

    @classmethod
    def from_config(cls, cfg: Config) -> "ClassificationTask":
        return cls(cfg.model.num_classes, cfg.train, cfg.eval)

    def mix(self, images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator,
            indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.train
        stored = self.teacher_logits
        if stored is not None:  # labels and the teacher's soft targets side by side, mixed with one lam
            if indices is None:
                raise ValueError("train.kd_logits needs the training-image indices of each batch (deepres's loaders "
                                 "give them)")
            teacher = F.softmax(stored[indices].float() / t.kd_temperature, dim=-1)
            labels = torch.cat([one_hot(labels, self.num_classes), teacher], dim=1)
        images, targets, _, _ = mixup_cutmix(images, labels, num_classes=self.num_classes, mixup_alpha=t.mixup_alpha,
                                             cutmix_alpha=t.cutmix_alpha, mix_prob=t.mix_prob,
                                             switch_prob=t.mix_switch_prob, per_sample=t.mixup_per_sample, rng=rng)
        if stored is not None:
            targets, teacher = targets.split(self.num_classes, dim=1)
            return images, (targets, logits_of(teacher, t.kd_temperature))
        if self.teacher is None:
            return images, targets
        amp_dtype = resolve_amp(t.amp, images.device).dtype  # train.amp=auto: as the run resolves it
        with torch.no_grad(), torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            teacher_logits = self.teacher(images).float()
        return images, (targets, teacher_logits)

    @property
    def needs_indices(self) -> bool:
        """Whether `mix` needs each batch's training-image indices (stored teacher logits are looked up by them)."""
        return self.teacher_logits is not None

    def loss(self, logits: torch.Tensor, targets) -> torch.Tensor:
        t = self.train
        if isinstance(targets, tuple):  # (targets, teacher logits): knowledge distillation
            targets, teacher_logits = targets
            hard = classification_loss(logits, targets, kind=t.loss, label_smoothing=t.label_smoothing)
            return t.kd_ce_weight * hard + t.kd_weight * distillation_loss(logits, teacher_logits, t.kd_temperature)
        return classification_loss(logits, targets, kind=t.loss, label_smoothing=t.label_smoothing)

    def evaluate(self, model: nn.Module, loader, *, ema_model: nn.Module | None = None) -> dict[str, float]:
        """top1, top5 (%) and test_loss (nats) on `loader`, test_skipped (bad images dropped) when any, and ema_top1
        with an EMA model; summed over ranks."""
        kwargs = dict(num_classes=self.num_classes, scales=tuple(self.eval.scales), flip=self.eval.flip,
                      amp_dtype=resolve_amp(self.train.amp, model_device(model)).dtype)
        result = evaluate(model, loader, **kwargs)
        metrics = {"top1": result["top1"], "top5": result["top5"], "test_loss": result["loss"]}
        if result["skipped"]:  # bad images dropped from the test set (data.on_bad_image=skip), summed over ranks
            metrics["test_skipped"] = result["skipped"]
        if ema_model is not None:
            metrics["ema_top1"] = evaluate(ema_model, loader, **kwargs)["top1"]
        return metrics

    def record(self, metrics: dict[str, float]) -> dict[str, float]:
        return {"test_error": 100.0 - metrics["top1"], **metrics}  # test_error: what curves.png plots

    @classmethod
    def eval_transform(cls, data: DataConfig, in_chans: int) -> Preprocess:
        return eval_preprocess(data, in_chans)  # the eval loader's resize, crop and normalisation

    @classmethod
    def final_lines(cls, result: dict) -> tuple[str, str]:
        """`deepres train`'s closing lines for fit's result: the best checkpoint's metric, the final metrics."""
        return (f"best top-1 {result['best_top1']:.2f}% at epoch {result['best_epoch']}",
                f"final test accuracy: top-1 {result['top1']:.2f}% (error {100 - result['top1']:.2f}%), "
                f"top-5 {result['top5']:.2f}%")

    def summary(self, metrics: dict[str, float]) -> str:
        skipped = f"  ({metrics['test_skipped']} bad images skipped)" if metrics.get("test_skipped") else ""
        return f"test top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%{skipped}"

    # ------------------------------------------------------------------ evaluation of a checkpoint (deepres eval)
    @classmethod
    def eval_config(cls, cfg: Config, *, scales: list[int], view_overrides: list[str]) -> Config:
        """The config a checkpoint is evaluated under: classification takes --test-scales and --flip as they are
        (the segmentation test-time views do not apply to it)."""
        return cfg

    @classmethod
    def evaluate_checkpoint(cls, model: nn.Module, loader, cfg: Config, *, scales: list[int], flip: bool,
                            amp_dtype, class_names) -> dict:
        return evaluate(model, loader, num_classes=model.num_classes, scales=scales, flip=flip, amp_dtype=amp_dtype,
                        class_names=class_names, progress=None)  # progress=None: a bar only on a terminal

    @classmethod
    def eval_report(cls, result: dict, cfg: Config, *, scales: list[int], flip: bool, precision: str,
                    seconds: float) -> tuple[list[str], dict]:
        """(the lines `deepres eval` prints after the checkpoint's path, metrics.json's fields)."""
        views = f"scales {scales}" if scales else "single scale"
        lines = [f"{cfg.model.name} on {cfg.data.name} {cfg.data.val_split} ({result['n']} images, "
                 f"{result['skipped']} skipped, {views}{', flip' if flip else ''}, {precision})",
                 f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
                 f"({result['n']} images in {seconds:.1f} s, {result['n'] / seconds:.1f} images/s, decoding included)"]
        metrics = {k: result[k] for k in ("top1", "top5", "top5_k", "loss", "n", "skipped")}
        metrics.update(seconds=seconds, images_per_second=result["n"] / seconds, scales=scales, flip=flip)
        return lines, metrics

    @classmethod
    def write_eval_files(cls, result: dict, out: Path | None, metrics: dict) -> list[str]:
        """metrics.json, per_class.csv, confusion.csv/png in `out` (None: nothing); returns the lines that say so."""
        if out is None:
            return []
        write_confusion_matrix(result["confusion"], result["class_names"], out)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        return [f"wrote {out}/metrics.json, per_class.csv, confusion.csv, confusion.png"]

    # ------------------------------------------------------------------ inference (Predictor, predict, serve)
    @classmethod
    def predict(cls, forward, inputs: list[torch.Tensor], sizes: list[tuple[int, int]], *, model: nn.Module,
                class_names: list[str], options: PredictOptions) -> list[dict]:
        """One result per preprocessed image (all of one size): pred_label, pred_score (softmax probability),
        pred_class and the top_k_labels / top_k_scores / top_k_classes. forward: a float NCHW batch -> logits."""
        probs = torch.softmax(forward(torch.stack(inputs)).float(), dim=1).cpu()
        scores, labels = probs.topk(min(options.top_k, probs.shape[1]), dim=1)
        names = class_names if len(class_names) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
        return [{"pred_label": row[0], "pred_score": score_row[0], "pred_class": names[row[0]],
                 "top_k_labels": row, "top_k_scores": score_row, "top_k_classes": [names[i] for i in row]}
                for score_row, row in zip(scores.tolist(), labels.tolist())]

    @classmethod
    def card(cls, class_names: list[str], config: Config | None) -> dict:
        """What this task adds to the model card (serve's GET /v1/model)."""
        return {}

    @classmethod
    def to_json(cls, result: dict, options: PredictOptions, card: dict) -> dict:
        """A result as the JSON API gives it: the top options.top_k classes (the batch may have kept more)."""
        k = options.top_k
        return {**result, "top_k_labels": result["top_k_labels"][:k], "top_k_scores": result["top_k_scores"][:k],
                "top_k_classes": result["top_k_classes"][:k]}

    @classmethod
    def line(cls, result: dict) -> str:
        """The line `deepres predict` prints for a result: path, class, probability."""
        return f"{result.get('path', '')}\t{result['pred_class']}\t{result['pred_score']:.4f}"

    @classmethod
    def prediction_writer(cls, out: Path | None, options: PredictOptions, *, force: bool, class_names, config,
                          **flags) -> "PredictionCsv":
        return PredictionCsv(out, options.top_k, force=force)


class PredictionCsv:
    """`deepres predict --out FILE.csv` for a classifier: path, prediction and every top-k class and score; a
    failed image keeps its row, with its error. Written atomically at close."""

    def __init__(self, out: Path | None, top_k: int, *, force: bool = False):
        if out is not None and out.is_dir():
            raise ValueError(f"--out {out} is a folder; a classifier's predictions go to a CSV file")
        if out is not None and out.is_file() and not force:
            raise ValueError(f"--out {out} already exists; choose another file or pass --force")
        self.out, self.top_k, self.rows = out, top_k, []

    def header(self) -> list[str]:
        ranks = [f"top{rank}_{field}" for rank in range(1, self.top_k + 1) for field in ("label", "class", "score")]
        return ["path", "pred_label", "pred_class", "pred_score", *ranks, "error"]

    def row(self, result: dict) -> list:
        if result.get("failed"):
            return [result["path"], *[""] * (3 + 3 * self.top_k), result["error"]]
        ranks = []
        for rank in range(self.top_k):
            if rank < len(result["top_k_labels"]):
                ranks += [result["top_k_labels"][rank], result["top_k_classes"][rank],
                          f"{result['top_k_scores'][rank]:.6f}"]
            else:  # fewer classes than --top-k
                ranks += ["", "", ""]
        return [result.get("path", ""), result["pred_label"], result["pred_class"], f"{result['pred_score']:.6f}",
                *ranks, ""]

    def add(self, result: dict) -> None:
        self.rows.append(self.row(result))

    def close(self) -> str | None:
        if self.out is None:
            return None
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.header())
        writer.writerows(self.rows)
        atomic_write_text(self.out, buffer.getvalue())
        return f"wrote {len(self.rows)} predictions to {self.out}"
