"""deepres export: ONNX (dynamic batch, run by ONNX Runtime), TorchScript and torch.export files that match
PyTorch, carry their preprocessing, and never overwrite a file unasked."""
import json
import os
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch

from deepres.cli import main
from deepres.inference.export import export_model, preprocess_from_metadata, preprocessing_metadata, read_metadata
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
