"""The Cityscapes benchmark's other three numbers beside class IoU: class iIoU, category IoU and category iIoU, as
cityscapesScripts 2.3.0 computes them (evaluation/evalPixelLevelSemanticLabeling.py, tables from helpers/labels.py).

- Category IoU: the IoU of the 7 categories (flat, construction, object, nature, sky, human, vehicle) from the
  class confusion matrix summed into categories (void holds no evaluated class and is nan, left out of the mean);
  a prediction that names no evaluated class (a caravan) is a miss for its pixel, as in class IoU.
- iIoU = iTP / (iTP + FP + iFN) for the 8 evaluated classes with instances (person, rider, car, truck, bus, train,
  motorcycle, bicycle): each ground-truth instance's pixels weigh avgClassSize[class] / (its size in pixels), so a
  small instance counts as much as a large one; FP is the unweighted false positives of class IoU. An instance is
  an instanceIds value > 1000 (labelId = id // 1000; exactly theirs: `instanceNp > 1000`); values below 1000 are
  label ids without an instance id (crowd / group regions) and weigh nothing, and instances of classes not
  evaluated (caravan, trailer) are skipped. Category iIoU, for the two categories whose classes all have instances
  (human, vehicle): the same with the prediction counted right when its label is any label of the category
  (caravan and trailer included) and the instance weighted by its class's avgClassSize.
- A score whose TP + FP + FN is 0 is nan and left out of the mean (theirs): a class only ever predicted scores 0.

Only sums are kept (float64 weighted counts, int64 pixel counts): they add up over images, batches and ranks
(all_reduce), so N processes score as one. `instance_loader` gives `deepres eval` the same evaluation loader with
each mask's instanceIds map beside it, at the masks' stored size like class IoU.
"""
import math
from pathlib import Path

import numpy as np
import torch

from deepres.core.distributed import all_reduce_sum
from deepres.data import Loader, SegmentationDataset
from deepres.data.readers.seg_labels import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_TO_TRAIN, CITYSCAPES_TRAIN_TO_LABEL

NUM_CLASSES = len(CITYSCAPES_CLASSES)  # the 19 evaluated classes, in train id order
CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")  # labels.py order, void left out
# labels.py's `category` of label ids 0..33, as indices into CATEGORIES (-1: void)
LABEL_CATEGORY = np.array([-1] * 7 + [0] * 4 + [1] * 6 + [2] * 4 + [3] * 2 + [4] + [5] * 2 + [6] * 8, np.int64)
INSTANCE_LABEL_IDS = range(24, 34)  # labels.py's hasInstances: person, rider, car, truck, bus, caravan, trailer,
#                                     train, motorcycle, bicycle
# evalPixelLevelSemanticLabeling.py's args.avgClassSize: the mean instance size of each class with instances, pixels
AVG_CLASS_SIZE = {
    "bicycle": 4672.3249222261, "caravan": 36771.8241758242, "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518, "bus": 35732.1511111111, "train": 67583.7075812274, "car": 12794.0202738185,
    "person": 3462.4756337644, "truck": 27855.1264367816, "trailer": 16926.9763313609,
}
INSTANCE_OFFSET = 1000  # instanceIds: label id * 1000 + instance number

CLASS_CATEGORY = LABEL_CATEGORY[CITYSCAPES_TRAIN_TO_LABEL[:NUM_CLASSES]]  # train id -> category index
CLASS_HAS_INSTANCES = np.isin(CITYSCAPES_TRAIN_TO_LABEL[:NUM_CLASSES], list(INSTANCE_LABEL_IDS))
# a category whose labels (id >= 0; license plate has none) all have instances: human, vehicle
CATEGORY_HAS_INSTANCES = np.array([all(i in INSTANCE_LABEL_IDS for i in np.flatnonzero(LABEL_CATEGORY == k))
                                   for k in range(len(CATEGORIES))])
_CLASS_SIZE = np.array([AVG_CLASS_SIZE.get(name, math.nan) for name in CITYSCAPES_CLASSES])  # train id order
_LABEL_CATEGORY_256 = np.full(256, -1, np.int64)
_LABEL_CATEGORY_256[:len(LABEL_CATEGORY)] = LABEL_CATEGORY


def label_id_categories(label_ids) -> torch.Tensor:
    """The category index (into CATEGORIES; -1: void or no label id) of each predicted Cityscapes label id, uint8
    array or tensor -> int64 tensor: what category iIoU counts a label-id prediction by (a caravan is a vehicle)."""
    return torch.from_numpy(_LABEL_CATEGORY_256[np.asarray(label_ids, np.uint8)])


def _train_id_categories(classes: torch.Tensor) -> torch.Tensor:
    """The category of each predicted train id (-1 for a value that names no class)."""
    table = torch.as_tensor(CLASS_CATEGORY, device=classes.device)
    valid = (classes >= 0) & (classes < NUM_CLASSES)
    return torch.where(valid, table[classes.clamp(0, NUM_CLASSES - 1)], torch.full_like(classes, -1))


class CityscapesInstanceScores:
    """The sums behind iIoU and category iIoU (module docstring), on `device`; class IoU's confusion matrix (the
    FP counts, and category IoU) comes to scores() from the ConfusionMatrix scored beside it."""

    def __init__(self, device: torch.device | str = "cpu"):
        zeros = dict(dtype=torch.float64, device=device)
        self.class_tp = torch.zeros(NUM_CLASSES, **zeros)  # weighted, per train id
        self.class_fn = torch.zeros(NUM_CLASSES, **zeros)
        self.category_tp = torch.zeros(len(CATEGORIES), **zeros)  # weighted, per category
        self.category_fn = torch.zeros(len(CATEGORIES), **zeros)
        # scored pixels of another category predicted as any label of this one: category iIoU's FP
        self.category_fp = torch.zeros(len(CATEGORIES), dtype=torch.int64, device=device)
        self.instances = torch.zeros((), dtype=torch.int64, device=device)  # instances weighted, for the record

    def update(self, prediction: torch.Tensor, target: torch.Tensor, instances: torch.Tensor, *,
               prediction_categories: torch.Tensor | None = None) -> None:
        """Add a batch at the ground truth's resolution: `prediction` (N, H, W) train ids (any other value names no
        class), `target` (N, H, W) train ids with 255 for unscored pixels, `instances` (N, H, W) the gtFine
        instanceIds; `prediction_categories` the category of each predicted label (label_id_categories of a
        label-id prediction), else that of its train id."""
        device = self.class_tp.device
        prediction, target = prediction.to(device).long(), target.to(device).long()
        instances = instances.to(device).long()
        if not prediction.shape == target.shape == instances.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)}, target {tuple(target.shape)} and instances "
                             f"{tuple(instances.shape)} differ in shape")
        categories = (_train_id_categories(prediction) if prediction_categories is None
                      else prediction_categories.to(device).long())
        class_category = torch.as_tensor(CLASS_CATEGORY, device=device)
        scored = (target >= 0) & (target < NUM_CLASSES)
        gt_category = class_category[target.clamp(0, NUM_CLASSES - 1)]
        wrong = scored & (categories >= 0) & (categories != gt_category)
        self.category_fp += torch.bincount(categories[wrong], minlength=len(CATEGORIES))
        for n in range(prediction.shape[0]):  # an instance id names one instance of one image
            self._add_instances(prediction[n], categories[n], instances[n])

    def _add_instances(self, prediction: torch.Tensor, categories: torch.Tensor, instances: torch.Tensor) -> None:
        device = self.class_tp.device
        inside = instances > INSTANCE_OFFSET
        ids, which, sizes = torch.unique(instances[inside], return_inverse=True, return_counts=True)
        if ids.numel() == 0:
            return
        label_ids = ids // INSTANCE_OFFSET
        if int(label_ids.max()) > 255:
            raise ValueError(f"instance id {int(ids.max())} names label id {int(label_ids.max())}, not a "
                             f"Cityscapes label id")
        classes = torch.as_tensor(CITYSCAPES_LABEL_TO_TRAIN.astype(np.int64), device=device)[label_ids]
        evaluated = classes < NUM_CLASSES  # caravan, trailer, ego vehicle...: not evaluated, skipped
        has_instances = torch.as_tensor(CLASS_HAS_INSTANCES, device=device)[classes.clamp(0, NUM_CLASSES - 1)]
        if (evaluated & ~has_instances).any():  # theirs fails on these (KeyError); real gtFine has none
            bad = int(ids[evaluated & ~has_instances][0])
            raise ValueError(f"instance id {bad}: {CITYSCAPES_CLASSES[int(classes[ids == bad][0])]} is a class "
                             f"without instances")
        classes = classes.clamp(0, NUM_CLASSES - 1)
        pixel_class = classes[which]
        hits = torch.bincount(which[prediction[inside] == pixel_class], minlength=ids.numel())
        category = torch.as_tensor(CLASS_CATEGORY, device=device)[classes]
        category_hits = torch.bincount(which[categories[inside] == category[which]], minlength=ids.numel())
        # weight avgClassSize / instance size, times whole pixel counts: float(tp) * weight, as theirs
        weight = torch.as_tensor(_CLASS_SIZE, device=device)[classes] / sizes.double()
        keep = evaluated
        missed, category_missed = sizes - hits, sizes - category_hits
        self.class_tp.index_add_(0, classes[keep], (hits.double() * weight)[keep])
        self.class_fn.index_add_(0, classes[keep], (missed.double() * weight)[keep])
        self.category_tp.index_add_(0, category[keep], (category_hits.double() * weight)[keep])
        self.category_fn.index_add_(0, category[keep], (category_missed.double() * weight)[keep])
        self.instances += keep.sum()

    def all_reduce(self) -> None:
        """Sum over all ranks, each having scored its own images (collective: every rank calls it)."""
        for total in (self.class_tp, self.class_fn, self.category_tp, self.category_fn, self.category_fp,
                      self.instances):
            all_reduce_sum(total)

    def scores(self, confusion: torch.Tensor, unassigned: torch.Tensor | None = None) -> dict:
        """iiou, category_iou, category_iiou (%), per_class_iiou (19, nan for the classes without instances),
        per_category_iou and per_category_iiou (7, nan where undefined), categories, instances; `confusion`
        (19, 19) is class IoU's pixel counts (rows ground truth), `unassigned` (19) its ground-truth pixels
        predicted as no class (ConfusionMatrix.counts and .unassigned)."""
        confusion = torch.as_tensor(confusion).double().cpu()
        if confusion.shape != (NUM_CLASSES, NUM_CLASSES):
            raise ValueError(f"a Cityscapes confusion matrix is {NUM_CLASSES}x{NUM_CLASSES}, got "
                             f"{tuple(confusion.shape)}")
        unassigned = (torch.zeros(NUM_CLASSES, dtype=torch.float64) if unassigned is None
                      else torch.as_tensor(unassigned).double().cpu())
        false_positive = confusion.sum(dim=0) - confusion.diagonal()
        tp, fn = self.class_tp.cpu(), self.class_fn.cpu()
        iiou = [_ratio(tp[c], tp[c] + false_positive[c] + fn[c]) if CLASS_HAS_INSTANCES[c] else math.nan
                for c in range(NUM_CLASSES)]

        members = torch.zeros(NUM_CLASSES, len(CATEGORIES), dtype=torch.float64)
        members[torch.arange(NUM_CLASSES), torch.as_tensor(CLASS_CATEGORY)] = 1.0
        by_category = members.T @ confusion @ members  # rows ground-truth category, columns predicted
        hit = by_category.diagonal()
        labelled = by_category.sum(dim=1) + members.T @ unassigned
        category_iou = [_ratio(hit[k], labelled[k] + by_category[:, k].sum() - hit[k])
                        for k in range(len(CATEGORIES))]

        ctp, cfn, cfp = self.category_tp.cpu(), self.category_fn.cpu(), self.category_fp.cpu().double()
        category_iiou = [_ratio(ctp[k], ctp[k] + cfp[k] + cfn[k]) if CATEGORY_HAS_INSTANCES[k] else math.nan
                         for k in range(len(CATEGORIES))]
        return {"iiou": _nanmean(iiou), "category_iou": _nanmean(category_iou),
                "category_iiou": _nanmean(category_iiou), "per_class_iiou": iiou,
                "per_category_iou": category_iou, "per_category_iiou": category_iiou,
                "categories": list(CATEGORIES), "instances": int(self.instances)}


def _ratio(part, whole) -> float:
    return 100.0 * float(part) / float(whole) if float(whole) > 0 else math.nan


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def instance_loader(loader) -> tuple[Loader | None, str]:
    """(the same evaluation loader over its dataset with the instanceIds maps, "") for Cityscapes gtFine data in
    its 19 train ids whose instanceIds files all exist; (None, the first missing file) when one is missing; (None,
    "") for any other data. Training never reads the instance files: only `deepres eval` asks for them."""
    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, Loader) or not isinstance(dataset, SegmentationDataset) or dataset.instances:
        return None, ""
    paths = dataset.instance_paths()
    if paths is None or dataset.num_classes != NUM_CLASSES:
        return None, ""
    missing = next((path for path in paths if not Path(path).is_file()), None)  # one stat per image
    if missing is not None:
        return None, missing
    return loader.over(dataset.with_instances()), ""


# ------------------------------------------------------------------------------------ what is printed and kept
def instance_line(scores: dict) -> str:
    """The line `deepres eval` and `deepres score` print under the mIoU line."""
    return (f"iIoU {scores['iiou']:.2f}%  category IoU {scores['category_iou']:.2f}%  category iIoU "
            f"{scores['category_iiou']:.2f}%  (Cityscapes benchmark definitions, {scores['instances']} instances)")


def instance_metrics(scores: dict, class_names: list[str]) -> dict:
    """metrics.json's fields: the three means, iIoU by class (those with instances), IoU and iIoU by category."""
    per_class = {name: value for name, value, has in zip(class_names, scores["per_class_iiou"], CLASS_HAS_INSTANCES)
                 if has}
    per_category_iiou = {name: value for name, value, has in zip(CATEGORIES, scores["per_category_iiou"],
                                                                  CATEGORY_HAS_INSTANCES) if has}
    return {"iiou": scores["iiou"], "category_iou": scores["category_iou"], "category_iiou": scores["category_iiou"],
            "instances": scores["instances"], "per_class_iiou": per_class,
            "per_category_iou": dict(zip(CATEGORIES, scores["per_category_iou"])),
            "per_category_iiou": per_category_iiou}


def with_instance_lines(lines: list[str], scores: dict) -> list[str]:
    """The per-class lines of tasks.reports.segmentation_report (the first 19, in class order) with each instance
    class's iIoU added, then one line per category; what followed them (the files written) stays last."""
    classes = [line + (f"  iIoU {iiou:6.2f}%" if has else "")
               for line, iiou, has in zip(lines[:NUM_CLASSES], scores["per_class_iiou"], CLASS_HAS_INSTANCES)]
    width = max(len(name) for name in CATEGORIES)
    categories = [f"  category {name:<{width}}  IoU {iou:6.2f}%" + (f"  iIoU {iiou:6.2f}%" if has else "")
                  for name, iou, iiou, has in zip(CATEGORIES, scores["per_category_iou"],
                                                  scores["per_category_iiou"], CATEGORY_HAS_INSTANCES)]
    return classes + categories + lines[NUM_CLASSES:]
