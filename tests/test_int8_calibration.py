"""int8 by default when it is safe: a calibration stored in the checkpoint (ranges + agreement with fp32) round-trips,
precision="auto" picks int8 only when the stored agreement clears the bar on a CPU with VNNI/AMX, and says why; older
checkpoints without the section still load; `deepres calibrate` and train.calibrate_int8 write it."""
import json
from dataclasses import replace

import pytest
import safetensors
import torch
from train_fakes import TINY_MODEL, tiny_data, tiny_loaders

import deepres.inference.plan as plan_module
from deepres import init_model
from deepres.cli import main
from deepres.core.checkpoint import load_checkpoint, load_weights, save_checkpoint, set_weights_metadata
from deepres.core.config import Config, config_to_dict
from deepres.inference.calibrate import calibrate_after_training, calibrate_int8
from deepres.inference.int8 import (Int8Calibration, activation_ranges, observe_int8, quantize_int8,
                                    run_calibration)
from deepres.inference.plan import AGREEMENT_BAR, choose_path
from deepres.inference.runner import build_runner, example_batch
from deepres.models import create_model
from deepres.train import fit


def tiny_config(tmp, name, **train):
    cfg = Config()
    cfg.model.name = TINY_MODEL
    cfg.data.name, cfg.data.batch_size = "synthetic", 16
    cfg.train = replace(cfg.train, **{"epochs": 6, "progress": False, **train})  # 6: >= 90% top-1 (test_train_loop)
    cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov = 0.2, 0.9, True
    cfg.schedule.warmup_iters = 0
    cfg.run.out_dir, cfg.run.name = str(tmp), name
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two runs of the tiny conv-BN-ReLU net on four noisy patterns: one calibrated at the end of training
    (train.calibrate_int8), one without (an older checkpoint)."""
    tmp = tmp_path_factory.mktemp("int8")
    runs = {}
    for name, calibrate in (("calibrated", True), ("plain", False)):
        cfg = tiny_config(tmp, name, calibrate_int8=calibrate, int8_calibration_images=48, int8_agreement_images=32)
        loaders = tiny_loaders()
        result = fit(cfg, device="cpu", loaders=loaders, log=lambda line: None)
        calibrate_after_training(cfg, result["run_dir"], loaders=loaders[:2], log=lambda line: None)
        assert result["top1"] >= 90.0
        runs[name] = tmp / name
    return runs


@pytest.fixture
def flags(monkeypatch):
    """Set this CPU's int8 flags as the auto rule sees them."""
    def set_flags(values):
        monkeypatch.setattr(plan_module, "cpu_int8_flags", lambda: list(values))
    return set_flags


def eval_images():
    return tiny_data()[1][0]


def test_calibration_round_trips_through_the_checkpoint(trained):
    ckpt = trained["calibrated"] / "checkpoints"
    for name in ("best", "last"):
        _, metadata = load_weights(ckpt / f"{name}.safetensors")
        assert "int8_calibration" in metadata or name == "last"  # predict loads best: that one is calibrated
    _, metadata = load_weights(ckpt / "best.safetensors")
    stored = Int8Calibration.from_json(metadata["int8_calibration"])
    assert stored.calibration_images == 48 and stored.eval_images == 32 and 0 <= stored.agreement <= 100
    assert stored.ranges and all(low <= high for low, high in stored.ranges.values())
    assert Int8Calibration.from_json(json.loads(json.dumps(stored.to_json()))) == stored
    load_checkpoint(ckpt, "best")  # the rewritten weights still pair with their training state
    assert init_model(trained["calibrated"]).int8_calibration == stored


def test_set_weights_metadata_keeps_tensors_and_other_metadata(tmp_path):
    model = create_model(TINY_MODEL)
    save_checkpoint(tmp_path, "last", model=model, state={"step": 3, "epoch": 1}, config={"a": 1}, classes=["x"])
    before, meta_before = load_weights(tmp_path / "last.safetensors")
    set_weights_metadata(tmp_path / "last.safetensors", "int8_calibration", {"format": 1})
    after, meta_after = load_weights(tmp_path / "last.safetensors")
    assert meta_after.pop("int8_calibration") == {"format": 1} and meta_after == meta_before
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    with pytest.raises(ValueError, match="'config' cannot be set"):
        set_weights_metadata(tmp_path / "last.safetensors", "config", {})


def test_auto_picks_int8_only_when_the_stored_agreement_clears_the_bar_on_a_vnni_cpu(trained, flags):
    predictor = init_model(trained["calibrated"])
    stored = predictor.int8_calibration
    assert stored.agreement >= AGREEMENT_BAR  # the patterns are easy: int8 agrees with fp32 on all of them
    flags(["avx512_vnni"])
    predictor(eval_images()[:4])
    assert predictor.runner_info.dtype == "int8" and predictor.runner_info.precision == "auto"
    assert "avx512_vnni" in predictor.plan.reason and f"{stored.agreement:.2f}%" in predictor.plan.reason

    flags([])  # no VNNI / AMX: today's default
    predictor.refresh()
    predictor(eval_images()[:4])
    assert predictor.runner_info.dtype in ("bf16", "fp32") and "no VNNI or AMX" in predictor.plan.reason

    flags(["amx_int8"])  # a low stored agreement: not int8 either
    predictor.int8_calibration = replace(stored, agreement=99.4)
    predictor.refresh()
    predictor(eval_images()[:4])
    assert predictor.runner_info.dtype in ("bf16", "fp32") and "99.40%" in predictor.plan.reason
    assert "below the 99.5% bar" in predictor.plan.reason


def test_an_old_checkpoint_without_calibration_keeps_the_default(trained, flags):
    _, metadata = load_weights(trained["plain"] / "checkpoints" / "best.safetensors")
    assert "int8_calibration" not in metadata
    flags(["amx_int8"])
    predictor = init_model(trained["plain"])
    assert predictor.int8_calibration is None
    predictor(eval_images()[:2])
    assert predictor.runner_info.dtype in ("bf16", "fp32") and "no int8 calibration stored" in predictor.plan.reason


def test_int8_predictions_agree_with_fp32_on_the_trained_model(trained, flags):
    flags(["avx512_vnni"])
    images = eval_images()
    exact = init_model(trained["calibrated"], precision="eager")(images).argmax(1)  # preprocessed batches, as trained
    int8 = init_model(trained["calibrated"])
    quantized = int8(images).argmax(1)
    assert int8.runner_info.dtype == "int8"
    assert (exact == quantized).float().mean() >= 0.9
    assert set(exact.tolist()) == {0, 1, 2, 3}  # the model learned the four patterns
    asked = init_model(trained["calibrated"], precision="int8")  # no calibration images: the stored ranges serve
    assert torch.equal(asked(images), int8(images)) and asked.plan.reason == "precision='int8' was asked for"


def test_ranges_rebuild_the_same_int8_model_as_the_images(trained):
    """The stored ranges alone give the int8 model that calibrating on the images gives."""
    model = init_model(trained["calibrated"], precision="eager").model
    images = eval_images()
    observed = observe_int8(model, images[:2])
    run_calibration(observed, [images])
    ranges = json.loads(json.dumps(activation_ranges(observed)))  # as stored
    from_images = quantize_int8(model, [images], images[:2])
    from_ranges = quantize_int8(model, None, images[:2], ranges=ranges)
    with torch.inference_mode():
        assert torch.equal(from_ranges(images), from_images(images))
    bad = dict(ranges)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="do not fit this model"):
        build_runner(model, choose_path(model, "cpu", bad, "int8"), example_batch((1, 8, 8)))


def test_calibrate_int8_takes_images_through_a_predictor_and_rejects_bad_batches(trained):
    predictor = init_model(trained["calibrated"], precision="eager")
    images = (tiny_data()[1][0].clamp(-1, 1) * 127 + 128).to(torch.uint8)  # uint8 images, as files would be
    result = calibrate_int8(predictor, images, images, max_calibration_images=20, max_eval_images=10)
    assert result.calibration_images == 20 and result.eval_images == 10
    with pytest.raises(ValueError, match="preprocessed float NCHW"):
        calibrate_int8(predictor.model, [images], [images])
    with pytest.raises(ValueError, match="calibration images are empty"):
        calibrate_int8(predictor.model, [], [images.float()])


@pytest.mark.parametrize("data, message", [
    ([1, 2], "expected a JSON object"),
    ({"format": 2}, "format 2"),
    ({"format": 1, "ranges": {}, "agreement": 1.0, "eval_images": 1, "calibration_images": 1, "x": 0}, "unknown"),
    ({"format": 1, "ranges": {"a": [0.0]}, "agreement": 1.0, "eval_images": 1, "calibration_images": 1}, "min, max"),
    ({"format": 1, "ranges": {}, "agreement": 101, "eval_images": 1, "calibration_images": 1}, "percentage"),
])
def test_a_malformed_stored_calibration_is_a_clear_error(data, message):
    with pytest.raises(ValueError, match=message):
        Int8Calibration.from_json(data, "ckpt.safetensors")


def test_deepres_calibrate_writes_into_a_run_on_its_own_dataset(tmp_path, capsys, flags):
    cfg = tiny_config(tmp_path, "r")
    cfg.model.num_classes, cfg.model.in_chans = 10, 3
    cfg.data.synthetic_size, cfg.data.synthetic_image_size, cfg.data.image_size = (40, 24), 8, 8
    model = create_model(TINY_MODEL, num_classes=10, in_chans=3)
    save_checkpoint(tmp_path / "r" / "checkpoints", "last", model=model, state={"step": 1, "epoch": 1},
                    config=config_to_dict(cfg))
    weights = tmp_path / "r" / "checkpoints" / "last.safetensors"
    with safetensors.safe_open(str(weights), framework="pt") as f:
        assert "int8_calibration" not in (f.metadata() or {})
    flags([])
    assert main(["calibrate", str(tmp_path / "r"), "--images", "16", "--eval-images", "24"]) == 0
    out = capsys.readouterr().out
    stored = Int8Calibration.from_json(load_weights(weights)[1]["int8_calibration"])
    assert stored.calibration_images == 16 and stored.eval_images == 24
    assert f"{stored.agreement:.2f}% of 24 images" in out and "this CPU has no VNNI" in out
    assert main(["calibrate", str(tmp_path / "missing")]) != 0
    assert "checkpoint not found" in capsys.readouterr().err


def test_deepres_train_with_calibrate_int8_stores_the_calibration(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"model: {{name: {TINY_MODEL}, num_classes: 10, in_chans: 3}}\n"
                      "data: {name: synthetic, synthetic_size: [32, 16], synthetic_image_size: 8, image_size: 8, "
                      "batch_size: 16}\n"
                      "train: {epochs: 1, progress: false, calibrate_int8: true, int8_calibration_images: 16, "
                      "int8_agreement_images: 8}\n")
    assert main(["train", str(recipe), "--out", str(tmp_path), "--set", "run.name=r"]) == 0
    assert "int8 agrees with fp32 on" in capsys.readouterr().out
    stored = Int8Calibration.from_json(load_weights(tmp_path / "r" / "checkpoints" / "best.safetensors")[1]
                                       ["int8_calibration"])
    assert stored.calibration_images == 16 and stored.eval_images == 8


def test_a_deterministic_run_is_calibrated_too(tmp_path):
    """train.deterministic turns on torch's deterministic-only mode, which the quantized kernels (no deterministic
    variant) would refuse; calibration lifts it for its own duration only."""
    cfg = tiny_config(tmp_path, "r", epochs=1, deterministic=True, calibrate_int8=True, int8_calibration_images=16,
                      int8_agreement_images=8)
    lines = []
    loaders = tiny_loaders()
    result = fit(cfg, device="cpu", loaders=loaders, log=lines.append)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # as in a process that runs deterministically throughout
    try:
        calibrate_after_training(cfg, result["run_dir"], loaders=loaders[:2], log=lines.append)
        deterministic_after = torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was)
    assert not any("calibration failed" in line for line in lines), lines
    assert any("int8 agrees with fp32 on" in line for line in lines)
    assert deterministic_after  # the setting is back once calibration is done


def test_fit_alone_leaves_the_checkpoint_uncalibrated(tmp_path):
    fit(tiny_config(tmp_path, "r", epochs=1, calibrate_int8=True), device="cpu", loaders=tiny_loaders(),
        log=lambda line: None)
    _, metadata = load_weights(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert "int8_calibration" not in metadata


def test_a_failed_calibration_after_training_is_logged_and_leaves_the_run(tmp_path, monkeypatch):
    import deepres.inference.calibrate as calibrate_module

    def broken(*args, **kwargs):
        raise RuntimeError("observer tracing failed")

    monkeypatch.setattr(calibrate_module, "calibrate_checkpoint", broken)
    lines = []
    cfg = tiny_config(tmp_path, "r", epochs=1, calibrate_int8=True)
    result = fit(cfg, device="cpu", loaders=tiny_loaders(), log=lines.append)
    calibrate_after_training(cfg, result["run_dir"], log=lines.append)
    assert result["finished"]
    assert any("int8 calibration failed (RuntimeError: observer tracing failed)" in line
               and f"deepres calibrate {tmp_path / 'r'}" in line for line in lines)
    _, metadata = load_weights(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert "int8_calibration" not in metadata
