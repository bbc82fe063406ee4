"""deepres export: ONNX (dynamic batch, run by ONNX Runtime), TorchScript and torch.export files that match
PyTorch, carry their preprocessing, and never overwrite a file unasked."""
import json
import os
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch

import re

import torch.nn.functional as F

from deepres import init_model
from deepres.cli import main
from deepres.core.preprocess import IMAGENET_MEAN, Preprocess
from deepres.inference.export import (export_model, preprocess_from_metadata, preprocessing_formula,
                                      preprocessing_metadata, read_metadata)
from deepres.tasks.build import load_model
from deepres.models import create_model
from deepres.core.checkpoint import save_checkpoint
from deepres.core.config import Config, config_to_dict

CLASSES = [f"class_{i}" for i in range(10)]
# torch 2.13 deprecates torch.jit; these tests load TorchScript files on purpose
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


@pytest.fixture
def umask_027():
    """Run under umask 027: new files should be 0640 and new folders 0750, as any program's are."""
    old = os.umask(0o027)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A deepres run directory holding an (untrained) grayscale ResNet-20 checkpoint with its config inside."""
    run = tmp_path_factory.mktemp("export") / "run"
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_chans = "resnet20", 10, 1
    cfg.data.image_size, cfg.data.mean, cfg.data.std = 28, (0.2860,), (0.3530,)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    for m in model.modules():  # non-trivial BN statistics, so ORT's own conv-BN fusion is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(run / "checkpoints", "last", model=model, state={"step": 1, "epoch": 1},
                    config=config_to_dict(cfg), classes=CLASSES)
    return run, model.eval()


def test_onnx_export_has_dynamic_batch_and_metadata(run_dir, tmp_path, capsys):
    run, model = run_dir
    out = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    assert "max abs logit error" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 1, 28, 28)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)
    meta = read_metadata(out)
    assert meta["class_names"] == CLASSES and meta["input_size"] == [1, 28, 28]
    assert meta["mean"] == [0.2860] and meta["std"] == [0.3530] and meta["normalize"] == "meanstd"
    assert meta["resize"] == 28 and meta["crop_size"] == 28 and meta["model"] == "resnet20"
    pp = preprocess_from_metadata(meta)  # the same transform deepres predict applies to this checkpoint
    assert pp == load_model(run).preprocess


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_torch_formats_load_back_and_match(run_dir, tmp_path, fmt):
    run, model = run_dir
    out = tmp_path / ("model.pt2" if fmt == "export" else "model.pt")
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    loaded = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(out).module()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    assert read_metadata(out)["class_names"] == CLASSES


def test_refuses_to_overwrite_without_force(run_dir, tmp_path, capsys):
    run, _ = run_dir
    out = tmp_path / "model.torchscript.pt"
    out.write_bytes(b"precious")
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 2  # a user error
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out), "--force"]) == 0
    assert read_metadata(out)["num_classes"] == 10


def test_failed_check_writes_nothing(run_dir, tmp_path, capsys):
    run, _ = run_dir
    out = tmp_path / "model.onnx"
    # ONNX Runtime fuses conv and BN, so its logits differ from PyTorch's by ~1e-6: a 1e-12 limit must fail
    assert main(["export", str(run), "--out", str(out), "--exporter", "legacy", "--tolerance", "1e-12"]) == 1  # failed
    assert "disagrees with PyTorch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_plain_state_dict_needs_model_name(tmp_path, capsys):
    model = create_model("resnet20", num_classes=7).eval()
    weights = tmp_path / "plain.pth"
    torch.save(model.state_dict(), weights)
    assert main(["export", str(weights), "--format", "onnx", "--exporter", "legacy"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["export", str(weights), "--model", "resnet20", "--exporter", "legacy"]) == 0
    meta = read_metadata(tmp_path / "plain.onnx")  # default name: beside the checkpoint
    assert meta["input_size"] == [3, 32, 32] and meta["num_classes"] == 7
    assert meta["class_names"] == [str(i) for i in range(7)] and meta["resize"] == meta["crop_size"] == 32


def test_read_metadata_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.randn(1, 2)), str(plain))
    with pytest.raises(KeyError, match="deepres.json"):
        read_metadata(plain)



@pytest.mark.parametrize("name", ["m.torchscript.pt", "m.pt2"])
def test_read_metadata_reads_the_json_member_without_loading_the_program(tmp_path, monkeypatch, name):
    """The program inside may be anything (TorchScript code, pickles): reading the metadata must not run it."""
    def refuse(*args, **kwargs):
        raise AssertionError("read_metadata loaded the program")
    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch.export, "load", refuse)
    metadata = {"input_size": [3, 32, 32], "class_names": ["a", "b"]}
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data.pkl", b"not a program")
        archive.writestr("m/extra/deepres.json", json.dumps(metadata))
    assert read_metadata(path) == metadata
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/extra/deepres.json", "{not json")
    with pytest.raises(ValueError, match=r"m\.(torchscript\.pt|pt2).*deepres\.json"):
        read_metadata(path)
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=rf"{name}.*not a zip"):
        read_metadata(path)

def test_export_model_leaves_the_model_as_it_was(run_dir, tmp_path):
    _, model = run_dir
    model.train()
    try:
        metadata = preprocessing_metadata(load_model(run_dir[0]))
        result = export_model(model, tmp_path / "m.pt", format="torchscript", metadata=metadata, log=lambda s: None)
        assert model.training and result["max_abs_error"] <= 1e-5  # exported in eval mode, from a copy
    finally:
        model.eval()


def test_exported_file_honours_the_umask(run_dir, tmp_path, umask_027):
    metadata = preprocessing_metadata(load_model(run_dir[0]))
    export_model(run_dir[1], tmp_path / "m.pt", format="torchscript", metadata=metadata, log=lambda s: None)
    assert oct((tmp_path / "m.pt").stat().st_mode & 0o777) == "0o640"


def test_preprocessing_formula_states_this_models_numbers():
    assert preprocessing_formula(Preprocess()) == (
        "decode to 8-bit RGB (alpha dropped, gray repeated); shorter side to 256 px, longer side int(256 * longer / "
        "shorter), antialiased bilinear (torch F.interpolate antialias=True, align_corners=False), clamped to 0..255 "
        "and rounded to uint8; an image already that size is not resampled; centre crop 224x224 at top = "
        "round((H - 224) / 2), left = round((W - 224) / 2) (half to even); x = (pixel / 255 - [0.485, 0.456, 0.406]) "
        "/ [0.229, 0.224, 0.225] (R, G, B), in float32; float32 NCHW [N, 3, 224, 224]")
    caffe = preprocessing_formula(Preprocess(resize=320, crop_size=320, interpolation="bicubic", normalize="mean",
                                             mean=IMAGENET_MEAN))
    assert "shorter side to 320 px" in caffe and "antialiased bicubic" in caffe and "centre crop 320x320" in caffe
    assert "x = pixel - [123.675, 116.28, 103.53] (R, G, B; 255 * mean), in float32, on the 0-255 scale" in caffe
    assert "/ 255" not in caffe and "std" not in caffe  # plain mean subtraction: nothing else
    gray = preprocessing_formula(Preprocess(resize=28, crop_size=28, in_chans=1))  # ImageNet mean on a gray model
    assert "gray = (19595 R + 38470 G + 7471 B + 32768) >> 16" in gray and "(pixel / 255 - [0.449]) / [0.226]" in gray


def _by_hand(formula: str, image: torch.Tensor) -> torch.Tensor:
    """The formula's steps on a uint8 RGB image (3, H, W), with the numbers read from the formula itself."""
    side, crop = (int(v) for v in re.search(r"shorter side to (\d+) px.*centre crop (\d+)x", formula).groups())
    mode = re.search(r"antialiased (\w+)", formula).group(1)
    h, w = image.shape[-2:]
    size = (side, int(side * w / h)) if h <= w else (int(side * h / w), side)
    resized = F.interpolate(image[None].float(), size=size, mode=mode, antialias=True, align_corners=False)[0]
    resized = resized.clamp(0, 255).round().to(torch.uint8)
    top, left = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
    pixel = resized[:, top:top + crop, left:left + crop].int()
    if "gray = " in formula:
        r, g, b = pixel
        pixel = ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16)[None]
    pixel = pixel.float()

    def numbers(text):
        return torch.tensor([float(v) for v in text.split(", ")], dtype=torch.float32).view(-1, 1, 1)

    meanstd = re.search(r"x = \(pixel / 255 - \[(.*?)\]\) / \[(.*?)\]", formula)
    if meanstd:
        return (pixel / 255 - numbers(meanstd.group(1))) / numbers(meanstd.group(2))
    return pixel - numbers(re.search(r"x = pixel - \[(.*?)\]", formula).group(1))


@pytest.mark.parametrize("preprocess", [
    Preprocess(resize=16, crop_size=12, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)),
    Preprocess(resize=16, crop_size=12, in_chans=1, interpolation="bicubic", normalize="mean", mean=IMAGENET_MEAN),
], ids=["rgb-meanstd-bilinear", "gray-mean-bicubic"])
def test_the_stated_formula_reproduces_what_the_predictor_feeds(preprocess):
    image = torch.randint(0, 256, (3, 24, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = create_model("resnet20", num_classes=4, in_chans=preprocess.in_chans)
    fed = []
    model.register_forward_pre_hook(lambda module, args: fed.append(args[0][0].clone()))
    init_model(model, preprocess=preprocess, class_names=list("abcd"), precision="eager").predict(image)
    assert len(fed) == 1 and fed[0].shape == (preprocess.in_chans, 12, 12)
    assert torch.equal(_by_hand(preprocessing_formula(preprocess), image), fed[0])  # exactly, not approximately
