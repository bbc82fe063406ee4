"""`deepres score PRED_DIR --dataset NAME --data ROOT`: score a folder of prediction PNGs from any tool against a
segmentation dataset's ground truth, in that dataset's own label convention (deepres.eval.score says where a
prediction is looked for and what it holds); Cityscapes with its gtFine instanceIds files also gets class iIoU and
category IoU/iIoU (deepres.tasks.cityscapes_metrics)."""
import argparse
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from deepres.core.config import Config, apply_overrides
from deepres.data import build_eval_dataset, list_formats, resolve_root
from deepres.data.readers.seg_labels import IGNORE_INDEX, read_mask_png
from deepres.eval.score import PRED_IDS, PredictionFinder, other_splits, prediction_categories, prediction_to_classes
from deepres.tasks import task_of
from deepres.tasks.cityscapes_metrics import (CityscapesInstanceScores, instance_line, instance_metrics,
                                              with_instance_lines)
from deepres.tasks.reports import segmentation_report
from deepres.tasks.segmentation import ConfusionMatrix

MISSING_SHOWN = 5  # missing stems named in the error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    segmentation = list_formats(task="segmentation")
    parser.add_argument("predictions", metavar="PRED_DIR", help="folder of prediction PNGs, one per ground-truth "
                                                                "image, named by the image's stem")
    parser.add_argument("--dataset", required=True, choices=segmentation, help="data.name: the ground truth's format")
    parser.add_argument("--data", required=True, metavar="ROOT", help="data.root: the dataset directory")
    parser.add_argument("--split", help="data.val_split: the split scored (default val)")
    parser.add_argument("--pred-ids", choices=PRED_IDS, default="dataset",
                        help="what the PNGs hold: the dataset's own ids (default: Cityscapes label ids, ADE20K "
                             "1..150, VOC/pairs class indices) or train ids (Cityscapes 0..18, ADE20K 0..149)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score the images that have a prediction and say how many had none")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                        help="a data config override, e.g. --set data.limit_val=100")
    parser.add_argument("--out", metavar="DIR", help="write metrics.json, per_class.csv, confusion.csv/png here")
    parser.add_argument("--force", action="store_true", help="allow --out to be a non-empty directory")


def _data_config(args: argparse.Namespace):
    wrong = [o for o in args.overrides if not o.startswith("data.")]
    if wrong:
        raise ValueError(f"--set {wrong[0]}: deepres score takes data.* overrides only")
    overrides = [f"data.name={args.dataset}", f"data.root={args.data}", f"data.val_split={args.split or 'val'}",
                 *args.overrides]
    return apply_overrides(Config(), overrides).data


def _eval_dataset(cfg, split_given: bool):
    """The split's dataset; when its folder (or list) is missing and others sit beside it, the error names them and
    the --split to pass (fashion-mnist-scenes has train and test, no val)."""
    try:
        return build_eval_dataset(cfg)  # lists the files; the images themselves are never decoded
    except FileNotFoundError as error:
        missing = getattr(error, "missing_path", None)
        splits = [s for s in other_splits(missing, resolve_root(cfg)) if s != cfg.val_split] if missing else []
        if not splits:
            raise
        suggested = next((s for s in splits if not s.startswith("train")), splits[0])
        which = f"--split {cfg.val_split}" if split_given else f"the default split ({cfg.val_split})"
        raise FileNotFoundError(f"{error}: {which} is not there; the splits there are {', '.join(splits)}: pass "
                                f"--split {suggested}") from None


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
    if task_of(cfg).labels_images:
        raise ValueError(f"data.name={cfg.name} is not a segmentation dataset; deepres score takes "
                         f"{', '.join(list_formats(task='segmentation'))}")
    dataset = _eval_dataset(cfg, args.split is not None)
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
    # Cityscapes gtFine: each image's instanceIds map too, when every scored image has one
    instance_paths, instance_scores, instances_missing = dataset.instance_paths(), None, None
    if instance_paths is not None:
        instances_missing = next((instance_paths[i] for i, _ in pairs if not Path(instance_paths[i]).is_file()), None)
        instance_scores = CityscapesInstanceScores() if instances_missing is None else None
    started = time.perf_counter()
    for index, path in tqdm(pairs, desc="score", unit="image", leave=False, dynamic_ncols=True, disable=None):
        target = torch.from_numpy(dataset.read_mask(index))
        prediction = read_mask_png(path, max_pixels=cfg.max_image_pixels)  # P or L; RGB is an error naming it
        if prediction.shape != tuple(target.shape):
            raise ValueError(f"{path}: prediction is {prediction.shape[1]}x{prediction.shape[0]} but its ground "
                             f"truth {dataset.mask_paths[index]} is {target.shape[1]}x{target.shape[0]}; "
                             f"predictions must be at the ground truth's size")
        classes = prediction_to_classes(prediction, cfg.name, args.pred_ids)[None]
        matrix.update(classes, target[None])
        if instance_scores is not None:
            instances = torch.from_numpy(dataset.read_instances(index))
            if instances.shape != target.shape:
                raise ValueError(f"{instance_paths[index]}: instanceIds map is {instances.shape[1]}x"
                                 f"{instances.shape[0]} but its labelIds mask is {target.shape[1]}x{target.shape[0]}")
            categories = prediction_categories(prediction, cfg.name, args.pred_ids)
            instance_scores.update(classes, target[None], instances[None],
                                   prediction_categories=None if categories is None else categories[None])
    seconds = time.perf_counter() - started
    result = matrix.scores(dataset.classes)
    result.update(confusion=matrix.counts.cpu(), n=len(pairs))
    if instance_scores is not None:
        result.update(instance_scores.scores(matrix.counts, matrix.unassigned))
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
    if instance_scores is not None:
        print(instance_line(result))
        metrics.update(instance_metrics(result, result["class_names"]))
    elif instances_missing is not None:
        print(f"no iIoU or category scores: {instances_missing} is missing")
    metrics.update(missing=len(missing), unmatched_files=unused, unassigned_pixels=unassigned,
                   predictions=str(args.predictions), pred_ids=args.pred_ids, dataset=cfg.name, root=cfg.root,
                   split=cfg.val_split)
    lines = segmentation_report(result, out, metrics)
    for line in with_instance_lines(lines, result) if instance_scores is not None else lines:
        print(line)
    return 0
