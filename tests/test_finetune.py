"""Fine-tuning switches: layer depths (stem, stages, head), frozen stages, layer-wise lr decay, and a run that
starts from another run's weights with another head, freezing what it says it freezes."""
import pytest
import torch
from safetensors.torch import load_file

from deepres.core.config import Config, DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, validate_config
from deepres.models import create_model
from deepres.models.base import freeze_stages, frozen_modules, layer_depths
from deepres.train.loop import fit
from deepres.train.optim import param_groups


def test_layer_depths_put_the_stem_first_and_the_head_last():
    depths, stages = layer_depths(create_model("resnet20"))
    assert stages == 3
    assert depths["conv1.weight"] == depths["bn1.bias"] == 0
    assert depths["layer1.0.conv1.weight"] == 1 and depths["layer3.2.bn2.weight"] == 3
    assert depths["fc.weight"] == depths["fc.bias"] == 4
    seg_depths, _ = layer_depths(create_model("fcn_resnet20", num_classes=3))
    assert seg_depths["backbone.conv1.weight"] == 0 and seg_depths["backbone.layer2.0.conv1.weight"] == 2
    assert {d for name, d in seg_depths.items() if name.startswith("classifier")} == {4}
    with pytest.raises(ValueError, match="stages"):
        layer_depths(torch.nn.Linear(2, 2))


def test_layer_decay_scales_each_stage_by_its_distance_from_the_head():
    model = create_model("resnet20", num_classes=10)
    groups = param_groups(model, 1e-4, False, layer_decay=0.5, head_lr_mult=10.0)
    mult = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
    assert mult[id(model.conv1.weight)] == pytest.approx(0.5 ** 4)
    assert mult[id(model.layer1[0].conv1.weight)] == pytest.approx(0.5 ** 3)
    assert mult[id(model.layer3[0].conv1.weight)] == pytest.approx(0.5)
    assert mult[id(model.fc.weight)] == pytest.approx(10.0)  # with head_lr_mult
    with pytest.raises(ValueError, match="optim.layer_decay"):
        validate_config(Config(optim=OptimConfig(layer_decay=0.0)))


def test_freeze_stages_stops_gradients_to_the_stem_and_the_first_stages():
    model = create_model("resnet20")
    frozen = freeze_stages(model, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(not name.startswith(("conv1", "bn1", "layer1")) for name in trainable)
    assert any(name.startswith("layer2") for name in trainable) and "fc.weight" in trainable
    assert frozen == sum(p.numel() for name, p in model.named_parameters() if name not in trainable)
    assert frozen_modules(model, 0) == [model.conv1, model.bn1, model.maxpool]  # the stem only (its pool: Identity)
    assert frozen_modules(model, -1) == []
    with pytest.raises(ValueError, match="frozen_stages=4"):
        freeze_stages(model, 4)


def test_fine_tuning_loads_another_head_and_keeps_the_frozen_stages(tmp_path):
    quiet = dict(progress=False)
    source = Config(model=ModelConfig(name="resnet20", kwargs={"layers": (1, 1, 1)}),
                    data=DataConfig(name="synthetic", synthetic_size=(64, 16), synthetic_image_size=16, batch_size=16),
                    train=TrainConfig(epochs=1, **quiet), run=RunConfig(out_dir=str(tmp_path), name="source"))
    fit(source, device="cpu", log=lambda _: None)
    before = load_file(str(tmp_path / "source" / "checkpoints" / "last.safetensors"))
    lines = []
    tuned = Config(model=ModelConfig(name="resnet20", kwargs={"layers": (1, 1, 1)}, pretrained=str(tmp_path / "source"),
                                     frozen_stages=1),
                   data=DataConfig(name="synthetic", synthetic_size=(64, 16), synthetic_image_size=16, batch_size=16,
                                   num_classes=4),
                   optim=OptimConfig(layer_decay=0.7), train=TrainConfig(epochs=2, **quiet),
                   run=RunConfig(out_dir=str(tmp_path), name="tuned"))
    assert fit(tuned, device="cpu", log=lines.append)["finished"]
    after = load_file(str(tmp_path / "tuned" / "checkpoints" / "last.safetensors"))
    assert after["fc.weight"].shape == (4, 64) and before["fc.weight"].shape == (10, 64)
    assert any("left at init: fc.weight" in line for line in lines)
    assert any("frozen_stages=1" in line for line in lines)
    for key in before:  # stem and stage 1: weights and BN statistics as loaded; stage 2 on: trained
        if key.startswith(("conv1", "bn1", "layer1")):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])
