"""A task's evaluation report files: a confusion matrix as CSV and PNG, and per-class accuracy (segmentation: IoU
and accuracy) as CSV."""
import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from deepres.core.files import atomic_write_text

# Above this many classes tick labels would overlap into a black bar; the image alone still shows structure.
MAX_LABELLED_CLASSES = 100
# Up to this many classes each cell is annotated with its count.
MAX_ANNOTATED_CLASSES = 20


def write_confusion_matrix(confusion: torch.Tensor, class_names: Sequence[str] | None,
                           out_dir: str | os.PathLike, unit: str = "images") -> dict[str, Path]:
    """Write confusion.csv, confusion.png and per_class.csv into `out_dir`; returns their paths. `unit`: what
    the counts count (images; pixels for segmentation).

    `out_dir` is created if needed. Files of these names already in it are replaced: the caller owns
    the output directory (a run directory or an eval output directory it created for this result).
    """
    confusion = torch.as_tensor(confusion).cpu().to(torch.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {tuple(confusion.shape)}")
    num_classes = confusion.shape[0]
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class_names given for a {num_classes}x{num_classes} confusion matrix")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "confusion_csv": out_dir / "confusion.csv",
        "confusion_png": out_dir / "confusion.png",
        "per_class_csv": out_dir / "per_class.csv",
    }
    rows = confusion.tolist()
    with open(paths["confusion_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *names])
        for name, row in zip(names, rows):
            writer.writerow([name, *row])
    with open(paths["per_class_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", unit, "correct", "accuracy_percent"])
        for i, (name, row) in enumerate(zip(names, rows)):
            total = sum(row)
            accuracy = f"{100.0 * row[i] / total:.4f}" if total else "nan"
            writer.writerow([name, total, row[i], accuracy])
    _plot_confusion(confusion, names, paths["confusion_png"], unit)
    return paths


def write_segmentation_scores(result: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """confusion.csv/png (pixels) and per_class.csv with each class's IoU and accuracy (%) from a segmentation
    result (deepres.tasks.segmentation.ConfusionMatrix.scores() plus its `confusion`)."""
    paths = write_confusion_matrix(result["confusion"], result["class_names"], out_dir, unit="pixels")
    labelled = torch.as_tensor(result["confusion"]).sum(dim=1).tolist()
    with open(paths["per_class_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "pixels", "iou_percent", "accuracy_percent"])
        for name, pixels, iou, acc in zip(result["class_names"], labelled, result["per_class_iou"],
                                          result["per_class_acc"]):
            writer.writerow([name, pixels, f"{iou:.4f}", f"{acc:.4f}"])
    return paths


def _plot_confusion(confusion: torch.Tensor, names: list[str], path: Path, unit: str = "images") -> None:
    # Figure + Agg canvas directly: no pyplot, so no global backend switch and no GUI window.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes = len(names)
    totals = confusion.sum(dim=1, keepdim=True).clamp_min(1)
    # Rows normalised to the fraction of each true class, so rare classes are as visible as common ones.
    fractions = (confusion.double() / totals).numpy()
    side = min(4.0 + 0.18 * num_classes, 24.0)  # inches
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(confusion.sum())} {unit})")
    if num_classes <= MAX_LABELLED_CLASSES:
        fontsize = max(4.0, min(10.0, 400.0 / num_classes))
        ax.set_xticks(range(num_classes), names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(num_classes), names, fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if num_classes <= MAX_ANNOTATED_CLASSES:
        counts = confusion.tolist()
        for i in range(num_classes):
            for j in range(num_classes):
                if counts[i][j]:
                    ax.text(j, i, str(counts[i][j]), ha="center", va="center", fontsize=7,
                            color="white" if fractions[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def segmentation_report(result: dict, out: Path | None, metrics: dict) -> list[str]:
    """Each class's IoU as lines of text; with `out`, also write the scores (write_segmentation_scores) and
    metrics.json: `metrics` plus the per-class IoU by name (what `deepres eval` and `deepres score` both report)."""
    width = max(len(name) for name in result["class_names"])
    lines = [f"  {name:<{width}}  IoU {iou:6.2f}%" for name, iou in zip(result["class_names"], result["per_class_iou"])]
    if out is None:
        return lines
    write_segmentation_scores(result, out)
    metrics = {**metrics, "per_class_iou": dict(zip(result["class_names"], result["per_class_iou"]))}
    atomic_write_text(Path(out) / "metrics.json", json.dumps(metrics, indent=2))
    return lines + [f"wrote {out}/metrics.json, per_class.csv (IoU), confusion.csv, confusion.png"]
