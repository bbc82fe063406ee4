"""Segmentation end to end through the CLI on real images: Fashion-MNIST scenes written by `deepres data make`,
then train (aux head, bootstrapped loss, lr multipliers) -> eval (whole and test-time views) -> predict (palette
PNGs, overlays) -> score (the predictions against the ground truth), export to ONNX, and the Python API. Also the
segmentation loaders: joint crops, ragged evaluation batches, and model.pretrained into a backbone."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import FASHION_MNIST_DIR, blob_mask, write_gray_png, write_image
from deepres.cli import main
from deepres.core.config import DataConfig, load_config
from deepres.core.runs import read_metrics
from deepres.data import build_loaders
from deepres.inference import init_model
from deepres.models import create_model
from deepres.tasks.build import load_initial_weights

needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                         reason="Debian dataset-fashion-mnist not installed (make test installs it)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    scenes = tmp / "scenes"
    assert main(["data", "make", "fashion-mnist-scenes", str(scenes), "--train", "64", "--test", "12", "--size",
                 "32", "--quiet"]) == 0
    recipe = tmp / "scenes_tiny.yaml"
    recipe.write_text(f"""
model: {{name: fcn_resnet20, kwargs: {{widths: [8, 16, 32], aux: true}}}}
data: {{name: pairs, root: {scenes}, val_split: test, in_chans: 1, image_size: 32, scale_range: [0.75, 1.25],
        mean: [0.16], std: [0.29], batch_size: 16, eval_batch_size: 5, workers: 0}}
optim: {{lr: 0.05, head_lr_mult: 2.0, bias_lr_mult: 2.0, bias_decay_mult: 0.0}}
schedule: {{name: poly}}
train: {{epochs: 2, loss: bootstrap, bootstrap_min_kept: 64, aux_weight: 0.4, log_every_iters: 2}}
expect: {{accuracy: 5.0, metric: miou, note: a 2-epoch plumbing run}}
""")
    assert main(["train", str(recipe), "--out", str(tmp / "runs")]) == 0
    return tmp, scenes, tmp / "runs" / "scenes_tiny"


@needs_fashion_mnist
def test_train_records_miou_and_keeps_the_best_by_it(trained):
    _, _, run = trained
    _, epochs = read_metrics(run)
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert 0 <= e["miou"] <= 100 and e["test_error"] == pytest.approx(100 - e["miou"])
        assert 0 <= e["pixel_acc"] <= 100 and e["test_loss"] > 0
    assert (run / "checkpoints" / "best.safetensors").is_file() and (run / "curves.png").is_file()


@needs_fashion_mnist
def test_eval_reproduces_the_trainers_miou_and_writes_per_class_iou(trained, capsys):
    tmp, _, run = trained
    _, epochs = read_metrics(run)
    capsys.readouterr()
    # the precision training evaluated in (train.amp: auto), so the numbers are the same ones
    assert main(["eval", str(run / "checkpoints" / "last.safetensors"), "--amp", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"mIoU {epochs[-1]['miou']:.2f}%" in out and "12 images" in out and "Trouser" in out
    views = tmp / "eval_views"
    assert main(["eval", str(run), "--flip", "--scale-ratios", "0.75,1.0", "--mode", "slide", "--crop", "24",
                 "--stride", "8", "--out", str(views)]) == 0
    metrics = json.loads((views / "metrics.json").read_text())
    assert metrics["flip"] and metrics["scale_ratios"] == [0.75, 1.0] and metrics["mode"] == "slide"
    assert metrics["n"] == 12 and len(metrics["per_class_iou"]) == 11
    assert (views / "per_class.csv").read_text().splitlines()[0] == "class,pixels,iou_percent,accuracy_percent"
    assert (views / "confusion.png").is_file()
    assert main(["eval", str(run), "--test-scales", "32"]) == 2  # a classification option: a clear error


@needs_fashion_mnist
def test_predict_writes_palette_pngs_that_score_like_eval(trained, capsys):
    tmp, scenes, run = trained
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    eval_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mIoU"))
    predictions = tmp / "pred"
    images = scenes / "test" / "images"
    assert main(["predict", str(images), "--model", str(run), "--out", str(predictions),
                 "--precision", "eager"]) == 0
    pngs = sorted(p for p in predictions.glob("*.png"))
    assert len(pngs) == 12 and len(list(predictions.glob("*_overlay.jpg"))) == 12
    first = Image.open(pngs[0])
    assert first.mode == "P" and first.size == (32, 32) and np.array(first).max() < 11
    capsys.readouterr()
    assert main(["score", str(predictions), "--dataset", "pairs", "--data", str(scenes), "--split", "test"]) == 0
    score_out = capsys.readouterr().out
    assert eval_line.split("  mean")[0] in score_out  # the same mIoU and pixel accuracy from the written files
    # an existing non-empty output folder is never written into without --force
    assert main(["predict", str(images), "--model", str(run), "--out", str(predictions)]) == 2
    assert main(["predict", str(images), "--model", str(run), "--label-ids"]) == 2  # 11 classes, not Cityscapes'


@needs_fashion_mnist
def test_api_and_onnx_export_of_a_segmentation_run(trained, capsys):
    tmp, scenes, run = trained
    predictor = init_model(str(run), precision="eager")
    image = scenes / "test" / "images" / "000000.png"
    result = predictor.predict(str(image))
    assert result["class_map"].shape == (32, 32) and result["class_map"].dtype == torch.uint8
    assert torch.allclose(result["probabilities"].sum(0), torch.ones(32, 32), atol=1e-5)
    assert sum(result["class_shares"].values()) == pytest.approx(1.0)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp / "seg.onnx")]) == 0
    assert (tmp / "seg.onnx").is_file()
    assert "input [batch, 1, H, W] (any height and width), onnx)" in capsys.readouterr().out


def _pairs(root, sizes):
    for i, (h, w) in enumerate(sizes):
        write_image(root / "val" / "images" / f"{i}.png", size=(w, h), seed=i)
        write_gray_png(root / "val" / "masks" / f"{i}.png", blob_mask(h, w, [0, 1, 2, 255], seed=i))
        write_image(root / "train" / "images" / f"{i}.png", size=(w, h), seed=10 + i)
        write_gray_png(root / "train" / "masks" / f"{i}.png", blob_mask(h, w, [0, 1, 2], seed=10 + i))
    (root / "classes.txt").write_text("a\nb\nc\n")


def test_loaders_crop_pairs_jointly_and_batch_ragged_eval_images(tmp_path):
    _pairs(tmp_path, [(20, 30), (40, 24), (20, 30)])
    cfg = DataConfig(name="pairs", root=str(tmp_path), train_split="train", val_split="val", image_size=16,
                     scale_range=(0.5, 1.5), batch_size=2, eval_batch_size=3, workers=0)
    train, val, info = build_loaders(cfg, "cpu", seed=0)
    assert info.num_classes == 3 and info.classes == ["a", "b", "c"]
    train.set_epoch(0)
    images, masks = next(iter(train))
    assert images.shape == (2, 3, 16, 16) and masks.shape == (2, 16, 16) and masks.dtype == torch.uint8
    assert set(masks.unique().tolist()) <= {0, 1, 2, 255}
    images, masks = next(iter(val))  # stored sizes differ: one batch per image, masks as stored
    assert isinstance(images, list) and [tuple(x.shape) for x in images] == [(1, 3, 20, 30), (1, 3, 40, 24),
                                                                             (1, 3, 20, 30)]
    assert [tuple(m.shape) for m in masks] == [(1, 20, 30), (1, 40, 24), (1, 20, 30)]
    resized = DataConfig(**{**cfg.__dict__, "test_size": 10})
    images, masks = next(iter(build_loaders(resized, "cpu")[1]))
    assert tuple(images[0].shape[-2:]) == (7, 10) and tuple(masks[0].shape[-2:]) == (20, 30)  # longer side 10


def test_pretrained_classifier_weights_go_into_a_segmentation_backbone(tmp_path):
    classifier = create_model("resnet20", num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "cls.pth")
    seg = create_model("fcn_resnet20", num_classes=11)
    report = load_initial_weights(seg, str(tmp_path / "cls.pth"))
    assert report["dropped"] == ["fc.weight", "fc.bias"] and not report["missing"] + report["unexpected"]
    assert torch.equal(seg.backbone.layer1[0].conv1.weight, classifier.layer1[0].conv1.weight)


def test_shipped_segmentation_recipes_name_registered_models_and_the_miou():
    for name in ("voc/deeplabv3_resnet50", "voc/fcn_resnet38_a1", "cityscapes/fcn_resnet38_a1",
                 "cityscapes/fcn_resnet38_a1_stage2", "cityscapes/deeplabv3_resnet101", "ade20k/deeplabv3_resnet50",
                 "ade20k/fcn_resnet38_a1", "fashion_mnist_scenes/fcn_resnet20"):
        cfg = load_config(name)
        assert cfg.expect.metric == "miou", name
        create_model(cfg.model.name, num_classes=cfg.model.num_classes or None, **cfg.model.kwargs)
