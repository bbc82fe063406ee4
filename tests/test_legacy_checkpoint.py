"""A run directory written by deepres before the core/tasks reshape (commit fbbaa53; tests/data/legacy_run, made
by `deepres train tests/data/legacy_run/recipe.yaml`) must keep loading: evaluated, predicted from and resumed
with today's code, with the numbers it recorded."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from deepres.cli import main

LEGACY = Path(__file__).parent / "data" / "legacy_run"


@pytest.fixture
def legacy_run(tmp_path):
    run_dir = tmp_path / "legacy_run"
    shutil.copytree(LEGACY, run_dir)
    return run_dir


def _recorded_epoch(run_dir, epoch):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, lines) if r["epoch"] == epoch)


def test_legacy_run_evaluates_to_its_recorded_accuracy(legacy_run, capsys):
    # synthetic val images are generated from fixed seeds, so the stored weights must score exactly as recorded
    assert main(["eval", str(legacy_run)]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {_recorded_epoch(legacy_run, 2)['top1']:.2f}%" in out  # 76.56%


def test_legacy_run_predicts_with_its_config_and_classes(legacy_run):
    from deepres.data import make_synthetic
    from deepres.inference import inference_model, init_model

    predictor = init_model(str(legacy_run), precision="eager")
    assert predictor.class_names == ["class_0", "class_1", "class_2", "class_3"]
    val = make_synthetic(64, num_classes=4, image_size=16, in_chans=3, seed=2)  # the synthetic val split
    results = inference_model(predictor, [image for image in val.images])
    correct = sum(r["pred_label"] == int(label) for r, label in zip(results, val.labels))
    assert 100.0 * correct / len(val) == pytest.approx(_recorded_epoch(legacy_run, 2)["top1"])


def test_legacy_run_resumes_from_its_training_state(legacy_run):
    from deepres.train import fit, load_config

    cfg = load_config(legacy_run / "recipe.yaml", [f"run.out_dir={legacy_run.parent}"])
    result = fit(cfg, resume=True, log=lambda _: None)  # finished: state, optimizer, EMA and RNG load, no step runs
    assert result["finished"] and result["step"] == 16 and result["epoch"] == 2
    assert result["best_top1"] == pytest.approx(_recorded_epoch(legacy_run, 2)["top1"])
    state = torch.load(legacy_run / "checkpoints" / "last.state.pt", weights_only=True)
    assert state["ema"] is not None and state["step"] == 16
