"""`deepres export --format triton`: Triton's model repository layout, a config.pbtxt that matches the ONNX file, and
an ONNX file that ONNX Runtime runs with PyTorch's outputs."""
import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from serve_helpers import fashion_run
from deepres.cli import main
from deepres.inference.export import read_metadata
from deepres.inference.triton import triton_model_name
from deepres.tasks.build import load_model


def test_triton_repository_layout_config_and_onnx(tmp_path, capsys):
    run = fashion_run(tmp_path / "run")
    repo = tmp_path / "models"
    assert main(["export", str(run), "--format", "triton", "--out", str(repo), "--max-batch", "16",
                 "--max-wait-ms", "2.5"]) == 0
    assert "wrote the Triton model" in capsys.readouterr().out
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == [
        "resnet20", "resnet20/1", "resnet20/1/model.onnx", "resnet20/config.pbtxt"]
    config = (repo / "resnet20" / "config.pbtxt").read_text()
    assert re.search(r'^name: "resnet20"$', config, re.M) and re.search(r'^platform: "onnxruntime_onnx"$', config, re.M)
    assert re.search(r"^max_batch_size: 16$", config, re.M)
    assert re.search(r"dynamic_batching \{\s+max_queue_delay_microseconds: 2500\s+\}", config)
    assert re.search(r'input \[\s+\{\s+name: "input"\s+data_type: TYPE_FP32\s+dims: \[ 1, 28, 28 \]', config)
    assert re.search(r'output \[\s+\{\s+name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 10 \]', config)
    parameter = re.search(r'key: "deepres_preprocessing"\s+value: \{ string_value: (".*") \}', config).group(1)
    assert json.loads(json.loads(parameter))["input_size"] == [1, 28, 28]

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
