"""One end-to-end CLI run on a tiny set in the official CIFAR-10 pickle layout: train, then evaluate the
checkpoint in the three ways a user would (run directory, multi-scale + flip with files, a plain .pth)."""
import json
import re
import sys

import pytest
import torch
from data_helpers import write_cifar10

from deepres.cli import main
from deepres.core.runs import read_metrics


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    write_cifar10(tmp / "cifar", images_per_batch=32)  # 160 train, 32 test images
    recipe = tmp / "cifar_tiny.yaml"
    recipe.write_text(f"""
model: {{name: resnet20}}
data: {{name: cifar10, root: {tmp / 'cifar'}, val_split: test, batch_size: 32, eval_batch_size: 16,
        crop_padding: 4, mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26]}}
optim: {{lr: 0.05, nesterov: true}}
schedule: {{name: cosine}}
train: {{epochs: 2, log_every_iters: 2, seed: 3}}
expect: {{accuracy: 10.0, note: random labels; only the plumbing is tested}}
""")
    assert main(["train", str(recipe), "--out", str(tmp / "runs")]) == 0
    return tmp, tmp / "runs" / "cifar_tiny"


def test_train_writes_a_complete_run_directory(trained_run):
    _, run_dir = trained_run
    for name in ("config.yaml", "metrics.jsonl", "env.json", "curves.png", "checkpoints/last.safetensors",
                 "checkpoints/last.state.pt", "checkpoints/best.safetensors"):
        assert (run_dir / name).is_file(), name
    steps, epochs = read_metrics(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2] and steps
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_eval_reproduces_the_trainers_accuracy(trained_run, capsys):
    tmp, run_dir = trained_run
    _, epochs = read_metrics(run_dir)
    capsys.readouterr()
    assert main(["eval", str(run_dir / "checkpoints" / "last.safetensors")]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {epochs[-1]['top1']:.2f}%" in out
    assert "32 images" in out


def test_eval_multiscale_flip_writes_files_and_protects_them(trained_run, capsys):
    tmp, run_dir = trained_run
    out_dir = tmp / "eval_ms"
    assert main(["eval", str(run_dir), "--test-scales", "32,40", "--flip", "--out", str(out_dir)]) == 0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["scales"] == [32, 40] and metrics["flip"] and metrics["n"] == 32
    header = (out_dir / "confusion.csv").read_text().splitlines()[0]
    assert "airplane" in header and "truck" in header
    assert (out_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out_dir / "metrics.json").read_text()
    assert main(["eval", str(run_dir), "--out", str(out_dir)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out_dir / "metrics.json").read_text() == before


def test_eval_plain_state_dict_needs_and_uses_model_name(trained_run, capsys):
    tmp, run_dir = trained_run
    from deepres.core.checkpoint import load_weights

    state_dict, _ = load_weights(run_dir / "checkpoints" / "last.safetensors")
    torch.save({"module." + k: v for k, v in state_dict.items()}, tmp / "plain.pth")  # a DDP-style checkpoint
    assert main(["eval", str(tmp / "plain.pth")]) == 2
    assert "--model" in capsys.readouterr().err
    _, epochs = read_metrics(run_dir)
    args = ["eval", str(tmp / "plain.pth"), "--model", "resnet20", "--dataset", "cifar10", "--data",
            str(tmp / "cifar"), "--split", "test", "--set", "data.mean=[0.49,0.48,0.45]",
            "--set", "data.std=[0.25,0.24,0.26]"]
    assert main(args) == 0
    assert f"top-1 {epochs[-1]['top1']:.2f}%" in capsys.readouterr().out
    assert main(["eval", str(tmp / "missing.pth"), "--model", "resnet20"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_eval_needs_only_the_val_folder_and_uses_the_checkpoints_classes(tmp_path, capsys):
    """A folder-trained checkpoint evaluated on a val folder alone, holding 2 of its 3 classes: labels follow
    the checkpoint's class list (a model that always says "owl" is right on exactly the owl images)."""
    from data_helpers import write_image
    from deepres.models import create_model
    from deepres.core.checkpoint import save_checkpoint
    from deepres.core.config import Config, config_to_dict

    for cls, count in (("cat", 3), ("owl", 2)):
        for i in range(count):
            write_image(tmp_path / "data" / "val" / cls / f"{i}.png", size=(24, 20), seed=i)
    cfg = Config()
    cfg.model.name, cfg.model.num_classes = "resnet20", 3
    cfg.data.name, cfg.data.root, cfg.data.image_size = "folder", str(tmp_path / "data"), 16
    model = create_model("resnet20", num_classes=3)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 1000.0]))  # always "owl"
    save_checkpoint(tmp_path / "run" / "checkpoints", "last", model=model, state={"step": 1, "epoch": 1},
                    config=config_to_dict(cfg), classes=["cat", "dog", "owl"])
    assert main(["eval", str(tmp_path / "run"), "--out", str(tmp_path / "eval")]) == 0
    assert "5 images" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["top1"] == pytest.approx(40.0) and metrics["n"] == 5
    assert (tmp_path / "eval" / "confusion.csv").read_text().splitlines()[0].split(",")[1:] == ["cat", "dog", "owl"]


def always_owl_checkpoint(tmp_path, corrupt: str | None = None):
    """A run directory whose model always says "owl" (of cat, owl), and a val folder of 3 cats and 2 owls."""
    from data_helpers import write_image
    from deepres.models import create_model
    from deepres.core.checkpoint import save_checkpoint
    from deepres.core.config import Config, config_to_dict

    for cls, count in (("cat", 3), ("owl", 2)):
        for i in range(count):
            write_image(tmp_path / "data" / "val" / cls / f"{i}.png", size=(24, 20), seed=i)
    if corrupt:
        (tmp_path / "data" / "val" / corrupt).write_bytes(b"not a png")
    cfg = Config()
    cfg.model.name, cfg.model.num_classes = "resnet20", 2
    cfg.data.name, cfg.data.root, cfg.data.image_size = "folder", str(tmp_path / "data"), 16
    model = create_model("resnet20", num_classes=2)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, 1000.0]))  # always "owl"
    save_checkpoint(tmp_path / "run" / "checkpoints", "last", model=model, state={"step": 1, "epoch": 1},
                    config=config_to_dict(cfg), classes=["cat", "owl"])
    return tmp_path / "run"


def test_eval_drops_a_corrupt_image_and_counts_only_real_ones(tmp_path, capsys):
    """With data.on_bad_image=skip a corrupt val image is dropped, not replaced: n and accuracy are those of the
    real images (an always-"owl" model is right on 1 of the 4 good ones), and the skip is reported."""
    run = always_owl_checkpoint(tmp_path, corrupt="owl/1.png")
    assert main(["eval", str(run), "--out", str(tmp_path / "eval"), "--set", "data.on_bad_image=skip"]) == 0
    out = capsys.readouterr().out
    assert "4 images, 1 skipped" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["skipped"] == 1 and metrics["top1"] == pytest.approx(25.0)


def test_eval_shows_progress_on_a_terminal_and_reports_speed(tmp_path, capsys, monkeypatch):
    run = always_owl_checkpoint(tmp_path)
    assert main(["eval", str(run), "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no bar when stderr is not a terminal (logs, CI)
    last = captured.out.strip().splitlines()[-1]
    assert re.search(r"top-1 40\.00% .*5 images in \d+\.\d+ s, \d+(\.\d+)? images/s", last), last
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["eval", str(run), "--batch-size", "2"]) == 0
    assert re.search(r"eval: .*\d/3 ", capsys.readouterr().err)  # the bar of 3 batches (5 images, 2 a batch)


@pytest.mark.parametrize("scales, words", [("abc", "'abc' is not a whole number"), ("224,0", "0"),
                                           ("100000", "at most 4096")])
def test_eval_test_scales_errors_name_the_option(tmp_path, capsys, scales, words):
    # checked before the checkpoint is read: a missing one would be the error otherwise
    assert main(["eval", str(tmp_path / "missing.safetensors"), "--test-scales", scales]) == 2
    err = capsys.readouterr().err
    assert f"--test-scales {scales}" in err and words in err and len(err.strip().splitlines()) == 1
