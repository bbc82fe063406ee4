"""`deepres export --format triton`: Triton's model repository layout, a config.pbtxt that matches the ONNX file (with
the classifier's labels file and the preprocessing formula), and an ONNX file that ONNX Runtime runs with PyTorch's
outputs, at any image size for a segmentation model."""
import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from serve_helpers import FASHION_CLASSES, fashion_run, seg_run
from deepres.cli import main
from deepres.inference.export import read_metadata
from deepres.inference.triton import labels_text, triton_model_name
from deepres.tasks.build import load_model


def test_triton_repository_layout_config_and_onnx(tmp_path, capsys):
    run = fashion_run(tmp_path / "run")
    repo = tmp_path / "models"
    assert main(["export", str(run), "--format", "triton", "--out", str(repo), "--max-batch", "16",
                 "--max-wait-ms", "2.5"]) == 0
    assert "wrote the Triton model" in capsys.readouterr().out
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == [
        "resnet20", "resnet20/1", "resnet20/1/model.onnx", "resnet20/config.pbtxt", "resnet20/labels.txt"]
    assert (repo / "resnet20" / "labels.txt").read_text().splitlines() == FASHION_CLASSES  # output index order
    config = (repo / "resnet20" / "config.pbtxt").read_text()
    assert re.search(r'^name: "resnet20"$', config, re.M) and re.search(r'^platform: "onnxruntime_onnx"$', config, re.M)
    assert re.search(r"^max_batch_size: 16$", config, re.M)
    assert re.search(r"dynamic_batching \{\s+max_queue_delay_microseconds: 2500\s+\}", config)
    assert re.search(r'input \[\s+\{\s+name: "input"\s+data_type: TYPE_FP32\s+dims: \[ 1, 28, 28 \]', config)
    assert re.search(r'output \[\s+\{\s+name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 10 \]\s+'
                     r'label_filename: "labels.txt"\s+\}\s+\]', config)
    parameter = re.search(r'key: "deepres_preprocessing"\s+value: \{ string_value: (".*") \}', config).group(1)
    preprocessing = json.loads(json.loads(parameter))
    assert preprocessing["input_size"] == [1, 28, 28]
    formula = json.loads(re.search(r'key: "deepres_input"\s+value: \{ string_value: (".*") \}', config).group(1))
    assert formula == preprocessing["input_layout"]  # the same sentence, for this model's numbers only
    assert "centre crop 28x28" in formula and "x = (pixel / 255 - [0.449]) / [0.226]" in formula
    assert formula.endswith("float32 NCHW [N, 1, 28, 28]")

    onnx_file = repo / "resnet20" / "1" / "model.onnx"
    assert read_metadata(onnx_file)["class_names"][-1] == "ankle_boot"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    got = session.run(["logits"], {"input": x.numpy()})[0]
    with torch.inference_mode():
        want = load_model(run).model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

    assert main(["export", str(run), "--format", "triton", "--out", str(repo)]) == 2  # never replaced silently
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx", "--max-batch", "4"]) == 2
    assert "options of --format triton" in capsys.readouterr().err


@pytest.mark.parametrize("name, expected", [("resnet50.tv_in1k", "resnet50.tv_in1k"), ("a/b c", "a_b_c")])
def test_triton_model_names_are_folder_safe(name, expected):
    assert triton_model_name(name) == expected


def test_triton_segmentation_model_takes_any_image_size(tmp_path, capsys):
    run = seg_run(tmp_path / "run")
    repo = tmp_path / "models"
    assert main(["export", str(run), "--format", "triton", "--out", str(repo)]) == 0
    assert "check batch 2 at 15x24" in capsys.readouterr().out  # the export's own check at a second size
    config = (repo / "fcn_resnet20" / "config.pbtxt").read_text()
    assert re.search(r'input \[\s+\{\s+name: "input"\s+data_type: TYPE_FP32\s+dims: \[ 1, -1, -1 \]', config)
    assert re.search(r'output \[\s+\{\s+name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 3, -1, -1 \]\s+\}', config)
    assert "label_filename" not in config  # Triton's classification would rank C*H*W flattened values
    assert (repo / "fcn_resnet20" / "labels.txt").read_text() == "background\nshirt\nbag\n"
    formula = json.loads(re.search(r'key: "deepres_input"\s+value: \{ string_value: (".*") \}', config).group(1))
    assert "no resize and no crop" in formula and formula.endswith("[N, 1, H, W] (H, W: the image's)")

    session = ort.InferenceSession(str(repo / "fcn_resnet20" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape] == ["batch", 1, "height", "width"]
    model = load_model(run).model
    for shape in [(1, 1, 28, 28), (2, 1, 37, 50)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        got = session.run(["logits"], {"input": x.numpy()})[0]
        with torch.inference_mode():
            want = model(x).numpy()
        assert got.shape == (shape[0], 3, *shape[2:])
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_labels_file_refuses_names_that_are_not_one_line():
    assert labels_text(["a b", "c"]) == "a b\nc\n"
    with pytest.raises(ValueError, match="'bad\\\\nname'.*labels.txt"):
        labels_text(["ok", "bad\nname"])
