"""`deepres predict`: one line per image, the CSV file, bad images, never overwriting --out, and a segmentation
model's files: class-map PNGs at the image's exact size, overlay JPEGs enlarged for viewing."""
import csv

import numpy as np
import pytest
import torch
from data_helpers import write_image
from serve_helpers import seg_run
from PIL import Image

from deepres import inference_model, init_model
from deepres.cli import main
from deepres.models import create_model
from deepres.core.checkpoint import save_checkpoint
from deepres.core.config import Config, config_to_dict
from deepres.tasks.segmentation import overlay_pixels

CLASSES = ["cat", "dog", "cow", "owl"]


@pytest.fixture
def run_dir(tmp_path):
    """A deepres run directory holding a 4-class ResNet-20 for 16x16 synthetic images."""
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_chans = "resnet20", 4, 3
    cfg.data.name, cfg.data.synthetic_image_size = "synthetic", 16
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, in_chans=3)
    save_checkpoint(tmp_path / "run" / "checkpoints", "last", model=model, state={"step": 1, "epoch": 1},
                    config=config_to_dict(cfg), classes=CLASSES)
    return tmp_path / "run"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        write_image(folder / name, size=(20, 16), seed=i)
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predict_prints_lines_and_writes_csv(run_dir, images, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["predict", str(images), "--model", str(run_dir), "--top-k", "5", "--batch-size", "2",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = inference_model(init_model(run_dir), images, top_k=4)
    assert [line.split("\t")[:2] for line in lines] == [[r["path"], r["pred_class"]] for r in expected]
    rows = read_csv(out)
    header = rows[0]
    assert header[:4] == ["path", "pred_label", "pred_class", "pred_score"] and header[-1] == "error"
    assert header[4:7] == ["top1_label", "top1_class", "top1_score"] and "top5_score" in header
    for row, want in zip(rows[1:], expected):
        record = dict(zip(header, row))
        assert record["path"] == want["path"] and int(record["pred_label"]) == want["pred_label"]
        assert record["pred_class"] == want["pred_class"] in CLASSES
        assert abs(float(record["pred_score"]) - want["pred_score"]) < 1e-5
        assert record["top2_class"] == want["top_k_classes"][1]
        assert record["top5_label"] == "" and record["error"] == ""  # 4 classes: no 5th
    assert len(rows) == 4


def test_predict_never_overwrites_out_without_force(run_dir, images, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    out.write_text("precious\n")
    assert main(["predict", str(images), "--model", str(run_dir), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert main(["predict", str(images), "--model", str(run_dir), "--out", str(out), "--force"]) == 0
    assert read_csv(out)[0][0] == "path" and len(read_csv(out)) == 4


def test_predict_bad_images_stop_or_are_marked_failed(run_dir, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(images), "--model", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err and not out.exists()
    assert main(["predict", str(images), "--model", str(run_dir), "--out", str(out), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "broken.png\tFAILED" in captured.err and "1 of 4 images could not be decoded" in captured.err
    rows = read_csv(out)
    failed = [row for row in rows[1:] if row[0].endswith("broken.png")]
    assert len(rows) == 5 and len(failed) == 1 and "not an image" in failed[0][-1] and failed[0][1] == ""


def test_predict_precision_switches(run_dir, images, tmp_path, capsys):
    assert main(["predict", str(images), "--model", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "precision path: " in err and "fold_bn" in err  # the default: bf16 or fp32 by CPU, BN folded either way
    # on the CPU like init_model below (on a GPU, cuDNN's TF32 convolutions differ from the CPU's at ~2e-4)
    assert main(["predict", str(images), "--model", str(run_dir), "--precision", "eager", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "fast path" not in err
    exact = inference_model(init_model(run_dir, precision="eager"), images, top_k=1)
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == [r["path"] for r in exact]
    assert [float(line.split("\t")[2]) for line in out.strip().splitlines()] == pytest.approx(
        [r["pred_score"] for r in exact], abs=1e-4)
    assert main(["predict", str(images), "--model", str(run_dir), "--precision", "int8",
                 "--calibration", str(images)]) == 0
    assert "precision path: int8" in capsys.readouterr().err
    assert main(["predict", str(images), "--model", str(run_dir), "--precision", "int8"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert main(["predict", str(images), "--model", str(run_dir), "--calibration", str(images)]) == 2
    assert "--precision int8 only" in capsys.readouterr().err
    assert main(["predict", str(images), "--model", str(run_dir), "--precision", "int8", "--calibration",
                 str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_predict_user_errors_are_one_line(run_dir, images, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.png"), "--model", str(run_dir)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(images), "--model", str(run_dir), "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err
    assert main(["predict", str(images), "--model", "resnet50.no_such_tag"]) == 2
    assert "resnet50.tv_in1k" in capsys.readouterr().err
    assert main(["predict", str(images), "--model", str(run_dir), "--device", "toaster"]) == 2
    assert "--device 'toaster'" in capsys.readouterr().err


def test_segmentation_pngs_keep_the_exact_size_and_overlays_are_enlarged(tmp_path, capsys):
    """A 28-px model: its class-map PNG is 28 x 28 for programs, its overlay 280 x 280 for people; a non-square image
    is enlarged by one integer factor; a large image's overlay keeps the image's own resolution."""
    seg_run(tmp_path / "run")
    sizes = {"small": (28, 28), "strip": (20, 36), "photo": (300, 260)}  # (height, width)
    for name, (height, width) in sizes.items():
        pixels = np.random.default_rng(height).integers(0, 256, (height, width), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    out = tmp_path / "pred"
    assert main(["predict", *(str(tmp_path / f"{name}.png") for name in sizes), "--model", str(tmp_path / "run"),
                 "--out", str(out), "--precision", "eager"]) == 0
    for name, (height, width), (view_height, view_width) in zip(sizes, sizes.values(),
                                                                [(280, 280), (260, 468), (300, 260)]):
        with Image.open(out / f"{name}.png") as png, Image.open(out / f"{name}_overlay.jpg") as jpeg:
            assert png.size == (width, height) and png.mode == "P"
            assert jpeg.size == (view_width, view_height)
            class_map, palette = torch.from_numpy(np.array(png)), np.array(png.getpalette()).reshape(-1, 3)
            written = np.asarray(jpeg.convert("RGB"), dtype=np.float32)
        with Image.open(tmp_path / f"{name}.png") as image:
            rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        factor = view_height // height
        small = overlay_pixels(rgb, class_map, palette)
        expected = small.repeat(factor, axis=0).repeat(factor, axis=1).astype(np.float32)
        assert np.abs(written - expected).mean() < 6, name  # the same picture, through JPEG quality 90
