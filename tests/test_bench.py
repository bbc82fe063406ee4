"""deepres bench in a tiny configuration: every path timed, a table printed, the JSON rows written."""
import json

import pytest
import torch

from deepres.inference.bench import PATHS
from deepres.cli import main
from deepres.models import create_model
from deepres.core.checkpoint import save_checkpoint
from deepres.core.config import Config, config_to_dict

TINY = ["--seconds", "0", "--warmup", "1", "--min-iterations", "2", "--max-iterations", "2"]
ROW_PATHS = ["eager_fp32", "fp32", "bf16", "int8", "onnxruntime_fp32"]


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A run directory with an untrained ResNet-20 whose config points at the synthetic dataset (16x16 images)."""
    run = tmp_path_factory.mktemp("bench") / "run"
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_chans = "resnet20", 10, 3
    cfg.data.name, cfg.data.synthetic_size, cfg.data.synthetic_image_size = "synthetic", (64, 48), 16
    cfg.data.image_size, cfg.data.batch_size = 16, 32
    save_checkpoint(run / "checkpoints", "last", model=create_model("resnet20"), state={"step": 1, "epoch": 1},
                    config=config_to_dict(cfg))
    return run


def test_bench_times_every_path_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--case", "resnet20:16:1", "--case", "resnet20:16:3", "--paths", ",".join(ROW_PATHS),
            "--agreement-images", "4", "--rounds", "2", "--out", str(out), *TINY]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["batch_size"], r["path"]) for r in rows] == [(b, p) for p in ROW_PATHS for b in (1, 3)]
    for r in rows:
        assert r["iterations"] == 4  # 2 calls in each of 2 rounds
        assert r["images_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0
        assert 0 <= r["agreement"] <= 100 and r["agreement_n"] == 6  # 4 rounded up to whole batches of 3
    eager = [r for r in rows if r["path"] == "eager_fp32"]
    assert all(r["agreement"] == 100 and r["max_abs_error"] == 0 for r in eager)
    assert {r["path"] for r in rows if r["default"]} in ({"bf16"}, {"fp32"})
    assert report["environment"]["threads"] == torch.get_num_threads() and report["checkpoint_agreement"] == []
    assert "| resnet20 | 16 | 3 | onnxruntime_fp32 |" in capsys.readouterr().out


def test_bench_agreement_on_a_checkpoints_test_set(synthetic_run, capsys):
    paths = ["eager_fp32", "fp32", "bf16"]
    assert main(["bench", "--case", "resnet20:16:2", "--paths", ",".join(paths), "--agreement-images", "2",
                 "--agreement-checkpoint", str(synthetic_run), "--agreement-limit", "40", *TINY]) == 0
    table = capsys.readouterr().out.split("On real data")[1]
    lines = [line for line in table.splitlines() if line.startswith("| ") and "path" not in line]
    assert [line.split("|")[1].strip() for line in lines] == paths
    assert all(line.rstrip(" |").endswith("40") for line in lines)  # the limit: 40 test images
    assert "| eager_fp32 |" in table and "| 100.00% |" in table


def test_bench_refuses_bad_input(tmp_path):
    out = tmp_path / "taken.json"
    out.write_text("{}")
    assert main(["bench", "--case", "resnet20:16:1", "--out", str(out), *TINY]) == 2
    assert out.read_text() == "{}"
    assert main(["bench", "--case", "resnet20:16", *TINY]) == 2
    assert main(["bench", "--case", "nosuchnet:16:1", *TINY]) == 2
    assert main(["bench", "--case", "resnet20:16:1", "--paths", "fp64", *TINY]) == 2
    assert main(["bench", "--case", "resnet20:16:1", "--rounds", "0", *TINY]) == 2
    assert "bf16_compile" in PATHS


def test_onnxruntime_static_int8_is_calibrated_on_the_given_images_and_agrees(tmp_path):
    from deepres.inference.bench import agreement, build_path, run_batches

    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    images = torch.randn(24, 3, 16, 16)
    runner, info, _ = build_path("onnxruntime_int8", model, (3, 16, 16), calibration=[images[:12], images[12:]],
                                 workdir=tmp_path)
    assert info is None and (tmp_path / "int8.onnx").is_file()
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    logits = run_batches(runner, images, 8)
    reference = run_batches(model, images, 8)
    assert logits.shape == reference.shape
    agree, error = agreement(logits, reference)
    assert error < float(reference.abs().max())  # quantized, so not exact, but close to the fp32 logits
    assert agree >= 50


def test_bench_times_a_checkpoint_on_real_images_with_its_default_path(synthetic_run, capsys):
    assert main(["bench", "--case", "none", "--paths", "fp32,onnxruntime_int8", "--agreement-checkpoint",
                 str(synthetic_run), "--agreement-limit", "16", "--checkpoint-batch", "4", *TINY]) == 0
    out = capsys.readouterr().out
    table = out.split("On real data")[1]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ") and "path" not in line]
    assert [r[1].strip() for r in rows] == ["default", "fp32", "onnxruntime_int8"]
    assert all(r[6].strip() == "4" and float(r[7]) > 0 for r in rows)  # batch 4, images/s
    # the run carries no int8 calibration: the default is bf16 or fp32 and it says why
    assert "default: " in table and "no int8 calibration stored" in table
    assert "| resnet20 |" not in out  # --case none: no random-weight cases
    assert main(["bench", "--case", "none", *TINY]) == 2
    assert main(["bench", "--case", "none", "--agreement-checkpoint", str(synthetic_run), "--checkpoint-batch",
                 "-1", *TINY]) == 2
