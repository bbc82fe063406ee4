"""`deepres score PRED_DIR`: prediction PNGs of any tool scored against each dataset's ground truth, in the
dataset's own label convention, on tiny datasets written in their real layouts; IoUs computed by hand."""
import csv
import json
import shutil

import numpy as np
import pytest
from data_helpers import write_ade, write_gray_png, write_image, write_palette_png, write_voc
from PIL import Image

from deepres.cli import main

VOC_IDS = ["2007_000033", "2007_000042"]
# ground truth (3 x 4) with VOC's 255 borders, and predictions; pixels under 255 are never scored
VOC_GT = {"2007_000033": np.array([[255, 255, 255, 255], [0, 0, 15, 15], [0, 0, 15, 15]], np.uint8),
          "2007_000042": np.array([[0, 0, 0, 0], [0, 0, 0, 0], [255, 255, 5, 5]], np.uint8)}
VOC_PRED = {"2007_000033": np.array([[15, 15, 15, 15], [0, 15, 15, 15], [0, 0, 15, 0]], np.uint8),
            "2007_000042": np.array([[0, 0, 0, 0], [0, 0, 0, 5], [5, 5, 5, 0]], np.uint8)}
# by hand: background TP 10, FN 2, FP 2; person (15) TP 3, FN 1, FP 1; bottle (5) TP 1, FN 1, FP 1; 18 scored pixels
VOC_IOU = {"background": 10 / 14, "person": 3 / 5, "bottle": 1 / 3}
VOC_MIOU = 100 * sum(VOC_IOU.values()) / 3
VOC_PIXEL_ACC = 100 * 14 / 18
VOC_MEAN_ACC = 100 * (10 / 12 + 3 / 4 + 1 / 2) / 3


def score(*args) -> int:
    return main(["score", *map(str, args)])


@pytest.fixture
def voc(tmp_path):
    write_voc(tmp_path / "data", {"val": VOC_IDS}, size=(4, 3), masks=VOC_GT)
    return tmp_path / "data"


def write_voc_predictions(folder, ids=VOC_IDS):
    for i in ids:
        write_palette_png(folder / f"{i}.png", VOC_PRED[i])
    return folder


def read_per_class(path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {row["class"]: float(row["iou_percent"]) for row in csv.DictReader(f)}


def test_voc_palette_predictions_hand_computed_with_255_borders(voc, tmp_path, capsys):
    preds = write_voc_predictions(tmp_path / "preds")
    out = tmp_path / "out"
    assert score(preds, "--dataset", "voc", "--data", voc, "--split", "val", "--out", out) == 0
    printed = capsys.readouterr().out
    assert f"mIoU {VOC_MIOU:.2f}%" in printed and f"pixel acc {VOC_PIXEL_ACC:.2f}%" in printed
    assert "2 predictions" in printed and "person" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(VOC_MIOU)
    assert metrics["pixel_acc"] == pytest.approx(VOC_PIXEL_ACC)
    assert metrics["mean_acc"] == pytest.approx(VOC_MEAN_ACC)
    assert (metrics["n"], metrics["pixels"], metrics["missing"], metrics["dataset"]) == (2, 18, 0, "voc")
    assert metrics["per_class_iou"]["person"] == pytest.approx(100 * 3 / 5)
    assert sorted(p.name for p in out.iterdir()) == ["confusion.csv", "confusion.png", "metrics.json",
                                                      "per_class.csv"]
    per_class = read_per_class(out / "per_class.csv")
    assert per_class["bottle"] == pytest.approx(100 / 3, abs=1e-3) and np.isnan(per_class["cat"])


def test_voc_grayscale_predictions_score_the_same(voc, tmp_path, capsys):
    for i in VOC_IDS:
        write_gray_png(tmp_path / "preds" / f"{i}.png", VOC_PRED[i])
    assert score(tmp_path / "preds", "--dataset", "voc", "--data", voc) == 0
    assert f"mIoU {VOC_MIOU:.2f}%" in capsys.readouterr().out


def test_out_is_never_overwritten_without_force(voc, tmp_path, capsys):
    preds = write_voc_predictions(tmp_path / "preds")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert score(preds, "--dataset", "voc", "--data", voc, "--out", out) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert score(preds, "--dataset", "voc", "--data", voc, "--out", out, "--force") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").is_file()
    (tmp_path / "a_file").write_text("x")
    assert score(preds, "--dataset", "voc", "--data", voc, "--out", tmp_path / "a_file") == 2


def test_missing_predictions_are_an_error_unless_allowed(voc, tmp_path, capsys):
    preds = write_voc_predictions(tmp_path / "preds", ids=VOC_IDS[:1])
    assert score(preds, "--dataset", "voc", "--data", voc) == 2
    err = capsys.readouterr().err
    assert "1 of 2 images" in err and "2007_000042" in err and "--allow-missing" in err and len(err.splitlines()) == 1
    assert score(preds, "--dataset", "voc", "--data", voc, "--allow-missing") == 0
    printed = capsys.readouterr().out
    assert "1 predictions" in printed and "1 images had no prediction" in printed
    # 2007_000033 alone: background 3 / (3 + 1 + 1), person 3 / 5
    assert f"mIoU {100 * (3 / 5 + 3 / 5) / 2:.2f}%" in printed
    assert score(tmp_path / "empty_preds", "--dataset", "voc", "--data", voc) == 2  # no folder
    (tmp_path / "empty_preds").mkdir()
    assert score(tmp_path / "empty_preds", "--dataset", "voc", "--data", voc, "--allow-missing") == 2


def test_size_mismatch_and_rgb_predictions_are_errors_naming_the_file(voc, tmp_path, capsys):
    preds = write_voc_predictions(tmp_path / "preds")
    write_palette_png(preds / "2007_000042.png", np.zeros((4, 4), np.uint8))
    assert score(preds, "--dataset", "voc", "--data", voc) == 2
    err = capsys.readouterr().err
    assert "2007_000042.png: prediction is 4x4 but its ground truth" in err and "3" in err
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(preds / "2007_000042.png")
    assert score(preds, "--dataset", "voc", "--data", voc) == 2
    err = capsys.readouterr().err
    assert "2007_000042.png" in err and "mode RGB" in err and len(err.splitlines()) == 1


def test_set_takes_data_overrides_only(voc, tmp_path, capsys):
    preds = write_voc_predictions(tmp_path / "preds", ids=VOC_IDS[:1])
    assert score(preds, "--dataset", "voc", "--data", voc, "--set", "data.limit_val=1") == 0
    assert "1 predictions" in capsys.readouterr().out
    write_voc_predictions(preds)
    assert score(preds, "--dataset", "voc", "--data", voc, "--set", "data.limit_val=1") == 0
    printed = capsys.readouterr().out
    assert "1 predictions" in printed and "1 PNG files matched no image" in printed  # says what it left out
    assert score(preds, "--dataset", "voc", "--data", voc, "--set", "train.epochs=3") == 2
    assert "data.* overrides only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- Cityscapes
CITIES = {"frankfurt": "frankfurt_000000_000294", "lindau": "lindau_000001_000019"}
# label ids: road 7 -> train 0, car 26 -> 13, person 24 -> 11; unlabeled 0 and parking 9 -> 255 (not scored)
CS_GT = np.array([[7, 7, 26, 26], [0, 24, 9, 7]], np.uint8)
# road predicted as sidewalk (8) once, as unlabeled (0: a label id scored as no class, a miss) once
CS_PRED_LABEL_IDS = np.array([[7, 8, 26, 26], [7, 24, 24, 0]], np.uint8)
CS_PRED_TRAIN_IDS = np.array([[0, 1, 13, 13], [0, 11, 11, 255]], np.uint8)
# by hand, per image and so overall: road 1 / 3, sidewalk 0 / 1, car 2 / 2, person 1 / 1; 4 of 6 pixels right
CS_MIOU = 100 * (1 / 3 + 0 + 1 + 1) / 4


@pytest.fixture
def cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    for city, stem in CITIES.items():
        write_image(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", size=(4, 2))
        write_gray_png(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", CS_GT)
    return root


def test_cityscapes_label_id_predictions_in_city_folders_or_by_prefix(cityscapes, tmp_path, capsys):
    preds = tmp_path / "preds"
    # as named like the image in a city folder, and by cityscapesScripts' <city>_<seq>_<frame>*.png at the top
    write_gray_png(preds / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png", CS_PRED_LABEL_IDS)
    write_gray_png(preds / "lindau_000001_000019_pred_labelIds.png", CS_PRED_LABEL_IDS)
    out = tmp_path / "out"
    assert score(preds, "--dataset", "cityscapes", "--data", cityscapes, "--out", out) == 0
    printed = capsys.readouterr().out
    assert f"mIoU {CS_MIOU:.2f}%" in printed and f"pixel acc {100 * 4 / 6:.2f}%" in printed
    assert "(label ids)" in printed and "2 predicted as no class" in printed
    iou = json.loads((out / "metrics.json").read_text())["per_class_iou"]
    assert iou["road"] == pytest.approx(100 / 3) and iou["car"] == 100 and iou["sidewalk"] == 0

    train_preds = tmp_path / "train_preds"
    for stem in CITIES.values():
        write_gray_png(train_preds / f"{stem}_leftImg8bit.png", CS_PRED_TRAIN_IDS)
    assert score(train_preds, "--dataset", "cityscapes", "--data", cityscapes, "--pred-ids", "train") == 0
    assert f"mIoU {CS_MIOU:.2f}%" in capsys.readouterr().out

    write_gray_png(preds / "frankfurt_000000_000294_other.png", CS_PRED_LABEL_IDS)
    assert score(preds, "--dataset", "cityscapes", "--data", cityscapes) == 2
    assert "2 predictions match frankfurt_000000_000294*.png" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- ADE20K
ADE_GT = np.array([[0, 1, 150], [2, 0, 149]], np.uint8)  # annotation: 0 = other (not scored), k = class k - 1


def test_ade20k_official_plus_one_predictions_and_zero_is_a_miss(tmp_path, capsys):
    root = tmp_path / "ade"
    write_ade(root, "validation", ADE_GT, count=2)
    preds, train_preds = tmp_path / "preds", tmp_path / "train_preds"
    for n in (1, 2):
        # wall (1) right, 150 and 149 right; building (2) predicted as 0 "other": a miss, never class 0 (wall)
        write_gray_png(preds / f"ADE_val_{n:08d}.png", np.array([[5, 1, 150], [0, 3, 149]], np.uint8))
        write_gray_png(train_preds / f"ADE_val_{n:08d}.png", np.array([[4, 0, 149], [255, 2, 148]], np.uint8))
    out = tmp_path / "out"
    assert score(preds, "--dataset", "ade20k", "--data", root, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "mIoU 75.00%" in printed and "pixel acc 75.00%" in printed and "2 predicted as no class" in printed
    per_class = read_per_class(out / "per_class.csv")
    assert per_class["wall"] == 100 and per_class["building"] == 0 and np.isnan(per_class["sky"])
    assert score(train_preds, "--dataset", "ade20k", "--data", root, "--pred-ids", "train") == 0
    assert "mIoU 75.00%" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- pairs
def test_pairs_class_index_predictions(tmp_path, capsys):
    root = tmp_path / "pairs"
    root.mkdir()
    (root / "classes.txt").write_text("background\nshirt\nboot\n")
    gt = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    write_image(root / "test" / "images" / "scene_0.png", size=(3, 2))
    write_gray_png(root / "test" / "masks" / "scene_0.png", gt)
    write_gray_png(tmp_path / "preds" / "scene_0.png", np.array([[0, 1, 2], [2, 2, 0]], np.uint8))
    assert score(tmp_path / "preds", "--dataset", "pairs", "--data", root, "--split", "test") == 0
    # background 2 / 2, shirt 1 / 2, boot 2 / 3
    assert f"mIoU {100 * (1 + 1 / 2 + 2 / 3) / 3:.2f}%" in capsys.readouterr().out


def test_a_missing_default_split_names_the_splits_that_exist(tmp_path, capsys):
    """fashion-mnist-scenes has train/ and test/, no val/: the error says which --split to pass."""
    root = tmp_path / "scenes"
    root.mkdir()
    (root / "classes.txt").write_text("background\nshirt\n")
    for split in ("train", "test"):
        write_image(root / split / "images" / "scene_0.png", size=(3, 2))
        write_gray_png(root / split / "masks" / "scene_0.png", np.zeros((2, 3), np.uint8))
    write_gray_png(tmp_path / "preds" / "scene_0.png", np.zeros((2, 3), np.uint8))
    assert score(tmp_path / "preds", "--dataset", "pairs", "--data", root) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"{root / 'val' / 'images'}" in err
    assert "the default split (val) is not there; the splits there are test, train: pass --split test" in err
    assert score(tmp_path / "preds", "--dataset", "pairs", "--data", root, "--split", "tset") == 2
    assert "--split tset is not there; the splits there are test, train: pass --split test" in capsys.readouterr().err
    assert score(tmp_path / "preds", "--dataset", "pairs", "--data", root, "--split", "test") == 0
    # Cityscapes: leftImg8bit/<split>; VOC: ImageSets/Segmentation/<split>.txt
    write_image(tmp_path / "cs" / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png")
    assert score(tmp_path / "preds", "--dataset", "cityscapes", "--data", tmp_path / "cs") == 2
    assert "the splits there are train: pass --split train" in capsys.readouterr().err
    write_voc(tmp_path / "voc", {"train": VOC_IDS}, size=(4, 3), masks=VOC_GT)
    assert score(tmp_path / "preds", "--dataset", "voc", "--data", tmp_path / "voc") == 2
    assert "val.txt: the default split (val) is not there; the splits there are train" in capsys.readouterr().err


# -------------------------------------------------------------------------------- the ground truth itself
@pytest.mark.parametrize("dataset", ["voc", "cityscapes", "ade20k", "pairs"])
def test_ground_truth_as_predictions_scores_100(dataset, voc, cityscapes, tmp_path, capsys):
    preds = tmp_path / "preds"
    if dataset == "voc":
        root, masks = voc, sorted((voc / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))
    elif dataset == "cityscapes":  # the official gtFine file names, in city folders
        root, masks = cityscapes, sorted((cityscapes / "gtFine" / "val").glob("*/*_labelIds.png"))
    elif dataset == "ade20k":
        root = tmp_path / "ade"
        write_ade(root, "validation", ADE_GT, count=2)
        masks = sorted((root / "annotations" / "validation").glob("*.png"))
    else:
        root = tmp_path / "pairs"
        root.mkdir()
        (root / "classes.txt").write_text("background\nthing\n")
        write_image(root / "val" / "images" / "a.jpg", size=(3, 2))
        write_gray_png(root / "val" / "masks" / "a.png", np.array([[0, 1, 1], [1, 0, 0]], np.uint8))
        masks = [root / "val" / "masks" / "a.png"]
    for mask in masks:
        target = preds / mask.relative_to(mask.parents[1] if dataset == "cityscapes" else mask.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mask, target)
    assert score(preds, "--dataset", dataset, "--data", root) == 0
    printed = capsys.readouterr().out
    assert "mIoU 100.00%  pixel acc 100.00%  mean acc 100.00%" in printed and "no class" not in printed
