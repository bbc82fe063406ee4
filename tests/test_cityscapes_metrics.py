"""Cityscapes' class iIoU, category IoU and category iIoU (deepres.tasks.cityscapes_metrics) on a two-image fixture in
the real gtFine layout (labelIds + 16-bit instanceIds): the accumulator, `deepres score` and `deepres eval`, against
numbers worked out by hand below and, once, by cityscapesScripts' own evaluator (tests/data/cityscapes_reference).

Run as a script (`python tests/test_cityscapes_metrics.py DIR`) it writes the fixture into DIR for that reference."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_gray_png, write_image
from PIL import Image

from deepres.cli import main
from deepres.core.checkpoint import save_checkpoint
from deepres.core.config import Config, config_to_dict
from deepres.data import DataConfig, build_eval_dataset
from deepres.data.readers.seg_labels import CITYSCAPES_CLASSES, cityscapes_label_to_train
from deepres.models import create_model
from deepres.tasks.cityscapes_metrics import CityscapesInstanceScores, label_id_categories
from deepres.tasks.segmentation import ConfusionMatrix

STEMS = {"frankfurt": "frankfurt_000000_000294", "lindau": "lindau_000001_000019"}  # image A, image B
# label ids: 0 unlabeled and 9 parking are not evaluated (ignored); 7 road, 8 sidewalk, 11 building, 23 sky,
# 24 person, 25 rider, 26 car, 29 caravan (a vehicle label that is not evaluated)
LABEL_IDS = {
    "frankfurt": [[23, 23, 23, 23, 11, 11, 11, 11],
                  [26, 26, 26, 26, 26, 26, 24, 0],
                  [26, 26, 26, 26, 7, 7, 24, 0],
                  [7, 7, 7, 7, 7, 7, 7, 0]],
    "lindau": [[23] * 8,
               [26, 26, 26, 26, 8, 8, 8, 8],
               [26, 26, 26, 26, 8, 8, 8, 8],
               [9, 9, 7, 7, 7, 24, 24, 24]],
}
# A: car 26000 (8 px), car 26001 (2 px), person 24000 (2 px); B: a crowd of cars (26: no instance id), person
# 24000 (3 px, another instance: ids are per image)
INSTANCE_IDS = {
    "frankfurt": [[23, 23, 23, 23, 11, 11, 11, 11],
                  [26000, 26000, 26000, 26000, 26001, 26001, 24000, 0],
                  [26000, 26000, 26000, 26000, 7, 7, 24000, 0],
                  [7, 7, 7, 7, 7, 7, 7, 0]],
    "lindau": [[23] * 8,
               [26, 26, 26, 26, 8, 8, 8, 8],
               [26, 26, 26, 26, 8, 8, 8, 8],
               [9, 9, 7, 7, 7, 24000, 24000, 24000]],
}
PRED_LABEL_IDS = {
    "frankfurt": [[23, 23, 23, 11, 11, 11, 11, 11],
                  [26, 26, 26, 26, 26, 29, 24, 24],  # car 26001's second pixel predicted caravan
                  [26, 26, 24, 24, 7, 7, 26, 26],
                  [7, 7, 7, 7, 7, 7, 7, 7]],
    "lindau": [[23] * 8,
               [26, 26, 26, 26, 8, 8, 8, 7],
               [26, 26, 7, 7, 8, 8, 8, 8],
               [7, 7, 7, 7, 7, 24, 25, 26]],  # the person: right, as rider, as car
}

# ---- by hand (59 scored pixels: 32 - 3 unlabeled in A, 32 - 2 parking in B) ----
# class confusion, train ids: road 12/12 right, FP 3 (B: car->road 2, sidewalk->road 1): 12/15; sidewalk 7 of 8
# (1 -> road): 7/8; building 4/4, FP 1 (A: sky->building): 4/5; sky 11 of 12: 11/12; person 2 of 5 (A: 1 -> car;
# B: 1 -> rider, 1 -> car), FP 2 (A: car->person): 2/7; rider: only predicted (FP 1): 0; car 13 of 18 (A: 2 ->
# person, 1 -> caravan = no class; B: 2 -> road), FP 2 (person->car in A and B): 13/20
IOU = {"road": 12 / 15, "sidewalk": 7 / 8, "building": 4 / 5, "sky": 11 / 12, "person": 2 / 7, "rider": 0.0,
       "car": 13 / 20}
MIOU = 100 * sum(IOU.values()) / 7
# iIoU: each instance's pixels weigh avgClassSize / instance size (W_CAR, W_PERSON); FP unweighted
W_CAR, W_PERSON = 12794.0202738185, 3462.4756337644
# car 26000: 6 of 8 right (2 -> person), weight W/8; car 26001: 1 of 2 (1 -> caravan), weight W/2; B's crowd: none
CAR_ITP, CAR_IFN = 6 * W_CAR / 8 + 1 * W_CAR / 2, 2 * W_CAR / 8 + 1 * W_CAR / 2
# person A: 1 of 2 (weight W/2); person B: 1 of 3 (weight W/3)
PERSON_ITP, PERSON_IFN = W_PERSON / 2 + W_PERSON / 3, W_PERSON / 2 + 2 * W_PERSON / 3
IIOU = {"person": PERSON_ITP / (PERSON_ITP + 2 + PERSON_IFN), "rider": 0 / (0 + 1 + 0),  # rider: FP 1, so 0, not nan
        "car": CAR_ITP / (CAR_ITP + 2 + CAR_IFN)}  # truck, bus, train, motorcycle, bicycle: 0 / 0 = nan, left out
MEAN_IIOU = 100 * sum(IIOU.values()) / 3
# categories from the class confusion: flat (road, sidewalk) 20 of 20, FP 2 (B: car->road): 20/22; construction
# 4/5; sky 11/12; human (person, rider) 3 of 5 (person->rider is right here), FP 2: 3/7; vehicle 13 of 18 (caravan
# is no evaluated class: a miss), FP 2: 13/20; object and nature: nan
CATEGORY_IOU = {"flat": 20 / 22, "construction": 4 / 5, "sky": 11 / 12, "human": 3 / 7, "vehicle": 13 / 20}
MEAN_CATEGORY_IOU = 100 * sum(CATEGORY_IOU.values()) / 5
# category iIoU, instances weighted by their class's avgClassSize. human: person A 1 of 2, person B 2 of 3 (rider
# counts), FP 2 (A: car->person). vehicle, label-id predictions: car 26000 6 of 8, car 26001 2 of 2 (caravan is a
# vehicle label), FP 2 (person->car); train-id predictions (caravan is 255, no class): 26001 1 of 2
HUMAN_ITP, HUMAN_IFN = W_PERSON / 2 + 2 * W_PERSON / 3, W_PERSON / 2 + W_PERSON / 3
VEHICLE_ITP, VEHICLE_IFN = 6 * W_CAR / 8 + 2 * W_CAR / 2, 2 * W_CAR / 8
CATEGORY_IIOU = {"human": HUMAN_ITP / (HUMAN_ITP + 2 + HUMAN_IFN),
                 "vehicle": VEHICLE_ITP / (VEHICLE_ITP + 2 + VEHICLE_IFN)}
MEAN_CATEGORY_IIOU = 100 * sum(CATEGORY_IIOU.values()) / 2
MEAN_CATEGORY_IIOU_TRAIN_IDS = 100 * (CATEGORY_IIOU["human"] + IIOU["car"]) / 2  # vehicle iIoU = car's then

# Computed once by cityscapesScripts 2.3.0 (evalPixelLevelSemanticLabeling.evaluateImgLists) on this fixture with
# tests/data/cityscapes_reference/reference.py: (class IoU, class iIoU, category IoU, category iIoU), %
CITYSCAPESSCRIPTS_LABEL_IDS = (61.819727891, 34.716583883, 74.086580087, 72.904826154)
CITYSCAPESSCRIPTS_TRAIN_IDS = (61.819727891, 34.716583883, 74.086580087, 60.405803097)


def write_fixture(root: Path) -> Path:
    """gtFine/val (labelIds, 16-bit instanceIds), leftImg8bit/val, and the predictions as label ids
    (predictions/label_ids/<stem>_leftImg8bit.png) and as train ids (predictions/train_ids, caravan -> 255)."""
    for city, stem in STEMS.items():
        write_image(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", size=(8, 4))
        gt = root / "gtFine" / "val" / city
        write_gray_png(gt / f"{stem}_gtFine_labelIds.png", np.array(LABEL_IDS[city], np.uint8))
        Image.fromarray(np.array(INSTANCE_IDS[city], np.uint16)).save(gt / f"{stem}_gtFine_instanceIds.png")
        pred = np.array(PRED_LABEL_IDS[city], np.uint8)
        write_gray_png(root / "predictions" / "label_ids" / f"{stem}_leftImg8bit.png", pred)
        write_gray_png(root / "predictions" / "train_ids" / f"{stem}_leftImg8bit.png", cityscapes_label_to_train(pred))
    return root


@pytest.fixture
def cityscapes(tmp_path):
    return write_fixture(tmp_path / "cityscapes")


def accumulate(cities, *, label_ids: bool = True):
    matrix, instances = ConfusionMatrix(19), CityscapesInstanceScores()
    for city in cities:
        raw = np.array(PRED_LABEL_IDS[city], np.uint8)[None]
        prediction = torch.from_numpy(cityscapes_label_to_train(raw)).long()
        target = torch.from_numpy(cityscapes_label_to_train(np.array(LABEL_IDS[city], np.uint8)[None])).long()
        matrix.update(prediction, target)
        instances.update(prediction, target, torch.tensor([INSTANCE_IDS[city]]),
                         prediction_categories=label_id_categories(raw) if label_ids else None)
    return matrix, instances


def test_hand_computed_iiou_and_category_scores():
    matrix, instances = accumulate(STEMS)
    s, classes = instances.scores(matrix.counts, matrix.unassigned), matrix.scores(list(CITYSCAPES_CLASSES))
    assert classes["miou"] == pytest.approx(MIOU)
    per_class = dict(zip(CITYSCAPES_CLASSES, s["per_class_iiou"]))
    assert {name: per_class[name] for name in IIOU} == pytest.approx({k: 100 * v for k, v in IIOU.items()})
    assert all(math.isnan(per_class[name]) for name in ("truck", "bus", "train", "motorcycle", "bicycle", "road"))
    assert s["iiou"] == pytest.approx(MEAN_IIOU)
    per_category = dict(zip(s["categories"], s["per_category_iou"]))
    assert {k: per_category[k] for k in CATEGORY_IOU} == pytest.approx({k: 100 * v for k, v in CATEGORY_IOU.items()})
    assert math.isnan(per_category["object"]) and math.isnan(per_category["nature"])
    assert s["category_iou"] == pytest.approx(MEAN_CATEGORY_IOU)
    per_category_iiou = dict(zip(s["categories"], s["per_category_iiou"]))
    assert per_category_iiou["human"] == pytest.approx(100 * CATEGORY_IIOU["human"])
    assert per_category_iiou["vehicle"] == pytest.approx(100 * CATEGORY_IIOU["vehicle"])
    assert math.isnan(per_category_iiou["flat"])
    assert s["category_iiou"] == pytest.approx(MEAN_CATEGORY_IIOU) and s["instances"] == 4  # the crowd is none
    # cityscapesScripts on the same files agrees with the hand-worked numbers
    assert (classes["miou"], s["iiou"], s["category_iou"], s["category_iiou"]) == pytest.approx(
        CITYSCAPESSCRIPTS_LABEL_IDS, abs=1e-8)
    # train-id predictions: the caravan pixel is no class, so no vehicle either
    s = accumulate(STEMS, label_ids=False)[1].scores(matrix.counts, matrix.unassigned)
    assert s["category_iiou"] == pytest.approx(MEAN_CATEGORY_IIOU_TRAIN_IDS) and s["iiou"] == pytest.approx(MEAN_IIOU)
    assert s["category_iiou"] == pytest.approx(CITYSCAPESSCRIPTS_TRAIN_IDS[3], abs=1e-8)


def test_sums_add_up_over_images_and_ranks():
    whole_matrix, whole = accumulate(STEMS)
    shards = [accumulate([city]) for city in STEMS]  # two "ranks", one image each: all_reduce sums the tensors
    for name in ("class_tp", "class_fn", "category_tp", "category_fn", "category_fp", "instances"):
        assert torch.allclose(sum(getattr(shard, name).double() for _, shard in shards),
                              getattr(whole, name).double(), rtol=1e-12, atol=0)
    # one batch of both images: an instance id is per image (both images have a person 24000)
    batch = CityscapesInstanceScores()
    raw = np.array([PRED_LABEL_IDS[c] for c in STEMS], np.uint8)
    target = torch.from_numpy(cityscapes_label_to_train(np.array([LABEL_IDS[c] for c in STEMS], np.uint8))).long()
    batch.update(torch.from_numpy(cityscapes_label_to_train(raw)).long(), target,
                 torch.tensor([INSTANCE_IDS[c] for c in STEMS]), prediction_categories=label_id_categories(raw))
    assert batch.scores(whole_matrix.counts, whole_matrix.unassigned)["iiou"] == pytest.approx(MEAN_IIOU)


def test_an_instance_of_a_class_without_instances_is_an_error():
    scores = CityscapesInstanceScores()
    road = torch.zeros(1, 1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="instance id 7001: road is a class without instances"):
        scores.update(road, road, torch.tensor([[[7001, 7001]]]))


def test_the_reader_gives_instance_maps_only_when_asked(cityscapes):
    val = build_eval_dataset(DataConfig(name="cityscapes", root=str(cityscapes)))
    assert val[0][1].shape == (4, 8) and val[0][1].dtype == torch.uint8  # training and plain eval: unchanged
    paths = val.instance_paths()
    assert [Path(p).name for p in paths] == [f"{s}_gtFine_instanceIds.png" for s in STEMS.values()]
    image, target = val.with_instances().subset(1)[0]
    assert target.shape == (2, 4, 8) and target.dtype == torch.int32 and image.shape == (3, 4, 8)
    assert target[1].tolist() == INSTANCE_IDS["frankfurt"] and target[0, 1, 6] == 11  # person
    Image.fromarray(np.full((4, 8), 40000, np.uint16)).save(paths[1])  # label id 40: no such label
    with pytest.raises(ValueError, match="instanceIds.png: instance id 40000 names no label id"):
        val.read_instances(1)


# ------------------------------------------------------------------------------------------------ deepres score
def test_score_prints_and_writes_the_four_cityscapes_numbers(cityscapes, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["score", str(cityscapes / "predictions" / "label_ids"), "--dataset", "cityscapes", "--data",
                 str(cityscapes), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"mIoU {MIOU:.2f}%" in printed
    assert (f"iIoU {MEAN_IIOU:.2f}%  category IoU {MEAN_CATEGORY_IOU:.2f}%  category iIoU "
            f"{MEAN_CATEGORY_IIOU:.2f}%") in printed and "4 instances" in printed
    assert f"iIoU {100 * IIOU['car']:6.2f}%" in next(line for line in printed.splitlines() if "  car " in line)
    assert "category human" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iiou"] == pytest.approx(CITYSCAPESSCRIPTS_LABEL_IDS[1], abs=1e-8)
    assert metrics["category_iou"] == pytest.approx(CITYSCAPESSCRIPTS_LABEL_IDS[2], abs=1e-8)
    assert metrics["category_iiou"] == pytest.approx(CITYSCAPESSCRIPTS_LABEL_IDS[3], abs=1e-8)
    assert metrics["per_class_iiou"]["person"] == pytest.approx(100 * IIOU["person"])
    assert sorted(metrics["per_class_iiou"]) == sorted(["person", "rider", "car", "truck", "bus", "train",
                                                        "motorcycle", "bicycle"])
    assert metrics["per_category_iiou"]["vehicle"] == pytest.approx(100 * CATEGORY_IIOU["vehicle"])

    assert main(["score", str(cityscapes / "predictions" / "train_ids"), "--dataset", "cityscapes", "--data",
                 str(cityscapes), "--pred-ids", "train"]) == 0
    assert f"category iIoU {MEAN_CATEGORY_IIOU_TRAIN_IDS:.2f}%" in capsys.readouterr().out


def test_score_without_instance_files_says_so(cityscapes, capsys):
    next((cityscapes / "gtFine" / "val" / "lindau").glob("*_instanceIds.png")).unlink()
    assert main(["score", str(cityscapes / "predictions" / "label_ids"), "--dataset", "cityscapes", "--data",
                 str(cityscapes)]) == 0
    printed = capsys.readouterr().out
    assert f"mIoU {MIOU:.2f}%" in printed and "iIoU" not in printed.replace("no iIoU", "")
    assert "no iIoU or category scores: " in printed and "lindau_000001_000019_gtFine_instanceIds.png" in printed


# ------------------------------------------------------------------------------------------------- deepres eval
def test_eval_reports_them_at_the_labels_resolution(cityscapes, tmp_path, capsys):
    """A 19-class model that predicts car everywhere (all weights 0, the classifier's car bias 1)."""
    cfg = Config()
    cfg.model.name, cfg.model.num_classes = "fcn_resnet20", 19
    cfg.data.name, cfg.data.root = "cityscapes", str(cityscapes)
    model = create_model("fcn_resnet20", num_classes=19)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.classifier[4].bias[13] = 1.0
    save_checkpoint(tmp_path / "run" / "checkpoints", "last", model=model, state={"step": 1, "epoch": 1},
                    config=config_to_dict(cfg), classes=list(CITYSCAPES_CLASSES))
    out = tmp_path / "out"
    assert main(["eval", str(tmp_path / "run"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # car: all 18 right, FP = the other 41 scored pixels: IoU 18/59; every other class present 0 (mIoU over 6).
    # iIoU: each car instance counts W_CAR whole (size x W/size), none missed; person instances missed whole (0).
    car_iiou = 2 * W_CAR / (2 * W_CAR + 41)
    # categories: vehicle 18/59, flat, construction, sky, human 0; human iIoU 0, vehicle iIoU = car's
    assert f"mIoU {100 * 18 / 59 / 6:.2f}%" in printed
    assert (f"iIoU {100 * car_iiou / 2:.2f}%  category IoU {100 * 18 / 59 / 5:.2f}%  category iIoU "
            f"{100 * car_iiou / 2:.2f}%") in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iiou"] == pytest.approx(100 * car_iiou / 2) and metrics["instances"] == 4
    assert metrics["per_class_iiou"]["car"] == pytest.approx(100 * car_iiou)
    assert metrics["per_class_iiou"]["person"] == 0 and math.isnan(metrics["per_class_iiou"]["rider"])
    assert metrics["per_category_iou"]["vehicle"] == pytest.approx(100 * 18 / 59)
    # images shrunk for the model (longer side 8 -> 4): still scored on the 4x8 labels and instance maps
    assert main(["eval", str(tmp_path / "run"), "--test-size", "4", "--out", str(out), "--force"]) == 0
    assert "test size 4" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pixels"] == 59 and metrics["iiou"] == pytest.approx(100 * car_iiou / 2)

    next((cityscapes / "gtFine" / "val" / "lindau").glob("*_instanceIds.png")).unlink()
    assert main(["eval", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert f"mIoU {100 * 18 / 59 / 6:.2f}%" in printed and "no iIoU or category scores" in printed


if __name__ == "__main__":
    print(write_fixture(Path(sys.argv[1])))
