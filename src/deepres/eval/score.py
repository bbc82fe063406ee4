"""`deepres score PRED_DIR`: score a folder of prediction PNGs written by any tool against a segmentation dataset's
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
"""
import argparse
import bisect
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deepres.core.config import Config, apply_overrides
from deepres.data import build_eval_dataset, get_format, list_formats
from deepres.data.seg_labels import IGNORE_INDEX, cityscapes_label_to_train, read_mask_png
from deepres.tasks.segmentation import ConfusionMatrix

from .confusion import report_segmentation

PRED_IDS = ("dataset", "train")
MISSING_SHOWN = 5  # missing stems named in the error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    segmentation = list_formats(task="segmentation")
    parser.add_argument("predictions", metavar="PRED_DIR", help="folder of prediction PNGs, one per ground-truth "
                                                                "image, named by the image's stem")
    parser.add_argument("--dataset", required=True, choices=segmentation, help="data.name: the ground truth's format")
    parser.add_argument("--data", required=True, metavar="ROOT", help="data.root: the dataset directory")
    parser.add_argument("--split", default="val", help="data.val_split: the split scored (default val)")
    parser.add_argument("--pred-ids", choices=PRED_IDS, default="dataset",
                        help="what the PNGs hold: the dataset's own ids (default: Cityscapes label ids, ADE20K "
                             "1..150, VOC/pairs class indices) or train ids (Cityscapes 0..18, ADE20K 0..149)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score the images that have a prediction and say how many had none")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                        help="a data config override, e.g. --set data.limit_val=100")
    parser.add_argument("--out", metavar="DIR", help="write metrics.json, per_class.csv, confusion.csv/png here")
    parser.add_argument("--force", action="store_true", help="allow --out to be a non-empty directory")


def prediction_to_classes(prediction: np.ndarray, dataset: str, pred_ids: str) -> torch.Tensor:
    """A prediction PNG's values -> class indices (H, W) int64; values that name no class become -1 or stay >= K
    (ConfusionMatrix counts both as "no class")."""
    if pred_ids == "dataset" and dataset == "cityscapes":
        prediction = cityscapes_label_to_train(prediction)  # not-evaluated label ids -> 255: no class
    classes = torch.from_numpy(np.asarray(prediction, np.uint8)).long()
    if pred_ids == "dataset" and dataset == "ade20k":
        classes = classes - 1  # 1..150 -> 0..149; 0 ("other") -> -1: no class
    return classes


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


def _data_config(args: argparse.Namespace):
    wrong = [o for o in args.overrides if not o.startswith("data.")]
    if wrong:
        raise ValueError(f"--set {wrong[0]}: deepres score takes data.* overrides only")
    overrides = [f"data.name={args.dataset}", f"data.root={args.data}", f"data.val_split={args.split}",
                 *args.overrides]
    return apply_overrides(Config(), overrides).data


def _check_out(out: Path | None, force: bool) -> None:
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is not empty; choose another directory or pass --force")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    _check_out(out, args.force)
    cfg = _data_config(args)
    if get_format(cfg.name).task != "segmentation":
        raise ValueError(f"data.name={cfg.name} is not a segmentation dataset; deepres score takes "
                         f"{', '.join(list_formats(task='segmentation'))}")
    dataset = build_eval_dataset(cfg)  # lists the files; the images themselves are never decoded
    finder = PredictionFinder(Path(args.predictions), cityscapes=cfg.name == "cityscapes")

    # each image's folder relative to the split's image folder: the sub-folder its prediction may sit in
    image_dirs = [Path(p).parent for p in dataset.image_paths]
    top = Path(os.path.commonpath([str(d) for d in image_dirs]))
    pairs, missing = [], []
    for index, (image, directory) in enumerate(zip(dataset.image_paths, image_dirs)):
        stem = Path(image).stem
        found = finder.find(stem, directory.relative_to(top).as_posix())
        if found is None:
            missing.append(stem)
        else:
            pairs.append((index, found))
    where = f"{args.predictions} (as <stem>.png{', or <city>_<seq>_<frame>*.png' if finder.cityscapes else ''})"
    if missing and (not args.allow_missing or not pairs):
        hint = "; pass --allow-missing to score the others" if pairs else ""
        raise FileNotFoundError(f"{len(missing)} of {len(dataset)} images of {cfg.name} {cfg.val_split} have no "
                                f"prediction in {where}, e.g. {', '.join(missing[:MISSING_SHOWN])}{hint}")

    matrix = ConfusionMatrix(dataset.num_classes, ignore_index=IGNORE_INDEX)
    started = time.perf_counter()
    for index, path in tqdm(pairs, desc="score", unit="image", leave=False, dynamic_ncols=True, disable=None):
        target = torch.from_numpy(dataset.read_mask(index))
        prediction = read_mask_png(path, max_pixels=cfg.max_image_pixels)  # P or L; RGB is an error naming it
        if prediction.shape != tuple(target.shape):
            raise ValueError(f"{path}: prediction is {prediction.shape[1]}x{prediction.shape[0]} but its ground "
                             f"truth {dataset.mask_paths[index]} is {target.shape[1]}x{target.shape[0]}; "
                             f"predictions must be at the ground truth's size")
        matrix.update(prediction_to_classes(prediction, cfg.name, args.pred_ids)[None], target[None])
    seconds = time.perf_counter() - started
    result = matrix.scores(dataset.classes)
    result.update(confusion=matrix.counts.cpu(), n=len(pairs))
    unassigned = int(matrix.unassigned.sum())

    convention = "train ids" if args.pred_ids == "train" else {
        "cityscapes": "label ids", "ade20k": "1..150, 0 = other"}.get(cfg.name, "class indices")
    unused = len(finder.files) - len(pairs)  # e.g. another split's files, or --set data.limit_val
    print(f"{args.predictions}: {len(pairs)} predictions ({convention}) scored against {cfg.name} {cfg.val_split}"
          f" in {seconds:.1f} s{f'; {len(missing)} images had no prediction' if missing else ''}"
          f"{f'; {unused} PNG files matched no image' if unused else ''}")
    print(f"mIoU {result['miou']:.2f}%  pixel acc {result['pixel_acc']:.2f}%  mean acc {result['mean_acc']:.2f}%  "
          f"({len(pairs)} images, {result['pixels']} scored pixels"
          f"{f', {unassigned} predicted as no class' if unassigned else ''})")
    metrics = {k: result[k] for k in ("miou", "pixel_acc", "mean_acc", "n", "pixels")}
    metrics.update(missing=len(missing), unmatched_files=unused, unassigned_pixels=unassigned,
                   predictions=str(args.predictions), pred_ids=args.pred_ids, dataset=cfg.name, root=cfg.root,
                   split=cfg.val_split)
    report_segmentation(result, out, metrics)
    return 0
