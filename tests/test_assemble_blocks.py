"""Squeeze-and-Excitation and DropBlock as switches on the ResNet family (issue 13, Assemble-ResNet), and the
trainer's DropBlock keep-probability schedule."""
import time

import pytest
import torch
from train_fakes import tiny_loaders

from data_helpers import read_reference
from deepres.core.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig, validate_config
from deepres.core.runs import read_metrics
from deepres.models import create_model, list_models, register_model
from deepres.models.layers import DropBlock2d, SqueezeExcite, drop_block_2d, set_drop_block_keep
from deepres.train.loop import fit

# ---------------------------------------------------------------------------------------- Squeeze-and-Excitation


@pytest.mark.parametrize("name, side", [("resnet20", 16), ("resnet50", 32)])
def test_se_blocks_keep_the_output_shape_and_every_parameter_learns(name, side):
    model = create_model(name, se=True, num_classes=5)
    out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    se_params = [(k, p) for k, p in model.named_parameters() if ".se." in k]
    assert se_params  # one SE per block
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in model.named_parameters())


def test_seresnet50_has_timms_keys_shapes_and_parameter_count():
    model = create_model("seresnet50")
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == read_reference("seresnet50", source="timm")
    # timm's published size of seresnet50: resnet50's 25,557,032 + 16 SE modules (2,530,992)
    assert sum(p.numel() for p in model.parameters()) == 28_088_024


def test_se_gates_each_channel_by_its_global_average():
    se = SqueezeExcite(32)
    x = torch.randn(3, 32, 5, 5)
    gate = se(x) / x  # per (sample, channel) a constant in (0, 1)
    assert torch.allclose(gate, gate[:, :, :1, :1].expand_as(gate), atol=1e-5)
    assert ((gate > 0) & (gate < 1)).all()
    # the gate depends only on the spatial mean: a permuted map gets the same one
    shuffled = x.flatten(2)[:, :, torch.randperm(25)].view_as(x)
    assert torch.allclose(se(shuffled) / shuffled, gate, atol=1e-5)


def test_assemble_se_has_no_biases_and_floors_the_reduction():
    se = SqueezeExcite(40, rd_divisor=1, bias=False)
    assert [k for k in se.state_dict()] == ["fc1.weight", "fc2.weight"]
    assert se.fc1.out_channels == 2  # 40 // 16, as the TF code's channel // ratio
    assert SqueezeExcite(40).fc1.out_channels == 8  # timm: make_divisible(2.5, 8)
    model = create_model("resnet50", se=True, se_bias=False, se_divisor=1)
    assert not any(k.endswith("se.fc1.bias") for k in model.state_dict())


# ----------------------------------------------------------------------------------------------------- DropBlock


@pytest.mark.parametrize("mode", ["assemble", "timm"])
def test_dropblock_is_the_identity_at_keep_one_and_in_eval_mode(mode):
    block = DropBlock2d(7, mode=mode)
    x = torch.randn(4, 8, 14, 14)
    assert torch.equal(block(x), x)  # keep_prob starts at 1.0
    block.keep_prob = 0.5
    assert not torch.equal(block(x), x)
    block.eval()
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("mode, shape, block_size", [("assemble", (2, 256, 56, 56), 7), ("timm", (256, 2, 56, 56), 3)])
def test_dropblock_drops_about_one_minus_keep_and_preserves_the_mean(mode, shape, block_size):
    # Many independent masks (channels for "assemble", samples for "timm") so the fraction is tight.
    torch.manual_seed(0)
    block = DropBlock2d(block_size, mode=mode)
    block.keep_prob = 0.9
    out = block(torch.ones(shape))
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.015
    assert out.mean().item() == pytest.approx(1.0, abs=1e-5)  # kept activations scaled by count / kept
    assert torch.allclose(out[out > 0], torch.full_like(out[out > 0], 1 / (1 - dropped)), rtol=1e-5)


def test_the_two_modes_share_their_masks_differently():
    torch.manual_seed(0)
    x = torch.ones(6, 16, 20, 20)
    assemble = drop_block_2d(x, 0.3, 5, mode="assemble") == 0
    assert (assemble == assemble[:1]).all()  # one mask per channel, shared by the batch
    assert not (assemble == assemble[:, :1]).all()  # channels differ
    timm = drop_block_2d(x, 0.3, 5, mode="timm") == 0
    assert (timm == timm[:, :1]).all()  # one mask per sample, shared by its channels
    assert not (timm == timm[:1]).all()  # samples differ
    rows = assemble.any(-1).sum(-1)  # "assemble" blocks are whole 5x5 squares (timm's are clipped at the border)
    assert rows[assemble.flatten(2).any(-1)].min() >= 5


def test_assemble_blocks_stay_inside_the_map():
    # Seeds only where a whole block fits: with a 5x5 map and 5x5 blocks a channel is dropped whole or not at all.
    torch.manual_seed(0)
    out = drop_block_2d(torch.ones(1, 64, 5, 5), 0.5, 5, mode="assemble")
    per_channel = (out[0] == 0).flatten(1).float().mean(1)
    assert set(per_channel.tolist()) <= {0.0, 1.0} and 0 < per_channel.sum() < 64


def test_dropblock_option_adds_no_keys_and_places_modules_in_the_last_two_stages():
    plain, dropping = create_model("resnet50"), create_model("resnet50", dropblock=True)
    assert [(k, v.shape) for k, v in dropping.state_dict().items()] == \
        [(k, v.shape) for k, v in plain.state_dict().items()]
    assert [(k, tuple(v.shape)) for k, v in dropping.state_dict().items()] == read_reference("resnet50")
    names = [n for n, m in dropping.named_modules() if isinstance(m, DropBlock2d)]
    assert {n.split(".")[0] for n in names} == {"layer3", "layer4"}
    assert "layer3.0.downsample.2" in names and "layer4.0.downsample.2" in names  # after the shortcut's BN
    scales = {n.split(".")[0]: dropping.get_submodule(n).gamma_scale for n in names}
    assert scales == {"layer3": 0.25, "layer4": 1.0}
    # keep 1.0: the same function as without DropBlock, in training mode too
    dropping.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(plain.train()(x), dropping.train()(x))
    assert set_drop_block_keep(dropping, 0.5) == len(names)
    assert not torch.allclose(plain(x), dropping(x))


@pytest.mark.parametrize("placement, calls_per_block, sizes", [("assemble", 3, {7}), ("timm", 1, {5, 3})])
def test_dropblock_placement_decides_where_and_how_big(placement, calls_per_block, sizes):
    model = create_model("resnet50", dropblock=True, dropblock_placement=placement).train()
    set_drop_block_keep(model, 0.9)
    calls = {}
    for name, module in model.named_modules():
        if isinstance(module, DropBlock2d):
            module.register_forward_hook(lambda m, i, o, name=name: calls.update({name: calls.get(name, 0) + 1}))
    model(torch.randn(1, 3, 64, 64))
    blocks = [n for n in calls if not n.split(".")[-1].isdigit()]  # a block's own drop_block (not a shortcut's)
    assert len(blocks) == 6 + 3 and {calls[n] for n in blocks} == {calls_per_block}
    assert any("downsample" in n for n in calls) == (placement == "assemble")
    assert {model.get_submodule(n).block_size for n in blocks} == sizes
    if placement == "timm":
        assert model.layer3[0].drop_block.block_size == 5 and model.layer4[0].drop_block.block_size == 3
    with pytest.raises(ValueError, match="dropblock_placement"):
        create_model("resnet20", dropblock=True, dropblock_placement="everywhere")


def test_dropblock_on_a_cifar_resnet_trains():
    model = create_model("resnet20", dropblock=True, dropblock_mode="timm", se=True)
    set_drop_block_keep(model, 0.8)
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="mode"):
        create_model("resnet20", dropblock=True, dropblock_mode="channel")


# ----------------------------------------------------------------------------------- the trainer's keep schedule

_built = []
if "_test_dropblock_tinynet" not in list_models():
    @register_model(input_size=(1, 8, 8))
    def _test_dropblock_tinynet(**kwargs):
        """A CIFAR ResNet-8 with DropBlock, remembered so a test can read its modules after fit()."""
        model = create_model("resnet20", layers=(1, 1, 1), dropblock=True, **kwargs)
        _built.append(model)
        return model


@pytest.mark.parametrize("start, end", [(1.0, 0.9), (0.9, 0.7)])  # from scratch; Assemble's fine-tuning
def test_fit_moves_keep_prob_linearly_to_train_dropblock_keep(tmp_path, start, end):
    cfg = Config(model=ModelConfig(name="_test_dropblock_tinynet"), data=DataConfig(name="synthetic", batch_size=16),
                 train=TrainConfig(epochs=2, progress=False, dropblock_keep=end, dropblock_keep_start=start),
                 run=RunConfig(out_dir=str(tmp_path), name="run"))
    _built.clear()
    began = time.perf_counter()
    result = fit(cfg, loaders=tiny_loaders(), device="cpu", log=lambda _: None)
    wall = time.perf_counter() - began
    _, epochs = read_metrics(tmp_path / "run")  # the keep schedule must not disturb the epoch's timing
    assert len(epochs) == 2 and all(0 < e["epoch_time_s"] < wall for e in epochs)
    total = result["step"]  # 64 images / 16 per batch x 2 epochs = 8 optimizer steps
    assert total == 8
    keeps = {m.keep_prob for m in _built[0].modules() if isinstance(m, DropBlock2d)}
    expected = start - (start - end) * (total - 1) / total  # set for the last step
    assert len(keeps) == 1 and keeps.pop() == pytest.approx(expected)


def test_dropblock_keep_is_validated():
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="train.dropblock_keep"):
            validate_config(Config(train=TrainConfig(dropblock_keep=bad)))
