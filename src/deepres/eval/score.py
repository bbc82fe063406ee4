"""`deepres score PRED_DIR` (deepres.commands.score) scores a folder of prediction PNGs written by any tool against a segmentation dataset's
ground truth, in that dataset's own label convention (as cityscapesScripts' evaluator does), so numbers from other
codebases are checked with deepres' metric code (`ConfusionMatrix`: one matrix summed over the dataset).

Where a prediction is looked for, for a ground-truth image <dir>/<stem>.<ext>: PRED_DIR/<sub>/<stem>.png, where
<sub> is the image's folder relative to the split's image folder (Cityscapes: the city), or PRED_DIR/<stem>.png.
Cityscapes also takes, anywhere under PRED_DIR, the one file matching <city>_<seq>_<frame>*.png
(cityscapesScripts' pattern: `frankfurt_000000_000294_leftImg8bit.png`, `..._gtFine_labelIds.png`, ...).

What a prediction PNG holds (palette or grayscale; palette PNGs are read as their indices, never their colours):
- voc, pairs: class indices 0..K-1.
- cityscapes: label ids (what the official evaluator reads), mapped to train ids with the official table; with
  --pred-ids train, train ids 0..18.
- ade20k: the official 1..150, class c + 1 (mmseg writes pred + 1 when formatting results); 0 ("other") is no
  class; with --pred-ids train, 0..149.
A predicted value that names no class (ADE20K's 0, a Cityscapes label id that is not evaluated, 255) is a miss for
its ground-truth pixel and nobody's false positive, as in the official evaluators; it is never clamped to a class.

Cityscapes with gtFine *_instanceIds.png beside the labelIds: also class iIoU and category IoU/iIoU
(deepres.tasks.cityscapes_metrics), where a label-id prediction counts for its category even when its class is not
evaluated (a caravan is a vehicle), as cityscapesScripts counts it.
"""
import bisect
import os
from pathlib import Path

import numpy as np
import torch

from deepres.data.readers.seg_labels import cityscapes_label_to_train
from deepres.tasks.cityscapes_metrics import label_id_categories

PRED_IDS = ("dataset", "train")


def prediction_to_classes(prediction: np.ndarray, dataset: str, pred_ids: str) -> torch.Tensor:
    """A prediction PNG's values -> class indices (H, W) int64; values that name no class become -1 or stay >= K
    (ConfusionMatrix counts both as "no class")."""
    if pred_ids == "dataset" and dataset == "cityscapes":
        prediction = cityscapes_label_to_train(prediction)  # not-evaluated label ids -> 255: no class
    classes = torch.from_numpy(np.asarray(prediction, np.uint8)).long()
    if pred_ids == "dataset" and dataset == "ade20k":
        classes = classes - 1  # 1..150 -> 0..149; 0 ("other") -> -1: no class
    return classes


def prediction_categories(prediction: np.ndarray, dataset: str, pred_ids: str) -> torch.Tensor | None:
    """The Cityscapes category of each predicted label id (for category iIoU); None where the category follows from
    the class index (train ids, other datasets)."""
    return label_id_categories(prediction) if pred_ids == "dataset" and dataset == "cityscapes" else None


def other_splits(missing: str | os.PathLike, root: Path) -> list[str]:
    """The splits beside a split's missing folder or list file under `root` (root/val/images missing, root/train
    and root/test there: ["test", "train"]): the names of the visible folders (files with the same suffix, by stem)
    in the folder holding the first missing part of the path; [] when that folder is not inside root."""
    first = Path(missing)
    while not first.parent.exists() and first.parent != first:
        first = first.parent
    holder, root = first.parent.resolve(), root.resolve()
    if holder != root and root not in holder.parents:
        return []
    if first.suffix:
        return sorted(p.stem for p in holder.iterdir() if p.suffix == first.suffix and not p.name.startswith("."))
    return sorted(p.name for p in holder.iterdir() if p.is_dir() and not p.name.startswith("."))


class PredictionFinder:
    """Finds the prediction PNG of each ground-truth image in a folder walked once (relative paths, sorted)."""

    def __init__(self, folder: Path, cityscapes: bool):
        if not folder.is_dir():
            raise FileNotFoundError(f"prediction folder not found: {folder}")
        self.folder, self.cityscapes = folder, cityscapes
        self.files: set[str] = set()  # posix paths relative to folder
        for directory, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            base = Path(directory).relative_to(folder)
            self.files.update((base / n).as_posix() for n in names
                              if n.lower().endswith(".png") and not n.startswith("."))
        self.by_name = sorted((Path(p).name, p) for p in self.files)  # for cityscapes' prefix pattern

    def find(self, stem: str, sub: str) -> Path | None:
        """The prediction of image `stem` in sub-folder `sub` ("" at the top), None if there is none."""
        if self.cityscapes:
            return self._find_cityscapes(stem)
        candidates = dict.fromkeys(p for p in ((Path(sub) / f"{stem}.png").as_posix(), f"{stem}.png")
                                   if p in self.files)
        if len(candidates) > 1:
            raise ValueError(f"{self.folder}: two predictions for {stem}: {', '.join(candidates)}; keep one")
        return self.folder / next(iter(candidates)) if candidates else None

    def _find_cityscapes(self, stem: str) -> Path | None:
        # <city>_<seq>_<frame>: the image stem without its _leftImg8bit suffix
        prefix = stem[:-len("_leftImg8bit")] if stem.endswith("_leftImg8bit") else stem
        start = bisect.bisect_left(self.by_name, (prefix, ""))
        matches = []
        for name, path in self.by_name[start:]:
            if not name.startswith(prefix):
                break
            matches.append(path)
        if len(matches) > 1:
            raise ValueError(f"{self.folder}: {len(matches)} predictions match {prefix}*.png ({', '.join(matches[:3])}"
                             f"); keep one per image")
        return self.folder / matches[0] if matches else None
