"""The neon Mini-Places2 network (models/neon.py) as miniplaces_msra.py builds it, its fully convolutional multi-scale
test through `deepres eval`, the scale-jitter data setting of its recipe, and the plain (no-shortcut) CIFAR ResNets."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepres.cli import main
from deepres.core.config import DataConfig, load_config
from deepres.data import build_loaders
from deepres.data.loaders import ItemTransform
from deepres.models import create_model
from deepres.models.complexity import count_params
from deepres.models.neon import NeonModule
from deepres.tasks.build import load_model
from deepres.tasks.evaluate import evaluate

MULTISCALE = [112, 128, 160, 240]  # miniplaces_eval.py's scales


def tiny_neon(**kwargs):
    torch.manual_seed(0)
    return create_model("neon_miniplaces_resnet", depth=1, widths=(4, 8, 8, 8), num_classes=5, **kwargs)


def randomise_bn_statistics(model, seed=1):
    """Eval-mode BN that is not the identity, so the checks below see its affine map."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


# ------------------------------------------------------------------------------------------- the network
def test_default_depth_shapes_and_parameter_count_from_their_layer_list():
    model = create_model("neon_miniplaces_resnet")  # --depth 9, 100 classes
    # Their layers, each conv without bias and followed by BN (gamma + beta = 2 per channel):
    stem = 3 * 3 * 3 * 32 + 2 * 32  # Conv(3x3, 32, stride 2)
    stage1 = 9 * (2 * (3 * 3 * 32 * 32) + 2 * 2 * 32)  # 9 modules of two 3x3 convs at 32
    stage2 = (3 * 3 * 32 * 64 + 3 * 3 * 64 * 64 + 2 * 2 * 64) + 8 * (2 * (3 * 3 * 64 * 64) + 2 * 2 * 64)
    stage3 = (3 * 3 * 64 * 128 + 3 * 3 * 128 * 128 + 2 * 2 * 128) + 8 * (2 * (3 * 3 * 128 * 128) + 2 * 2 * 128)
    stage4 = (3 * 3 * 128 * 256 + 3 * 3 * 256 * 256 + 2 * 2 * 256) + 8 * (2 * (3 * 3 * 256 * 256) + 2 * 2 * 256)
    shortcuts = 0  # IdentityInit projections are never trained
    classifier = 256 * 100 + 2 * 100  # Affine(nout=100) without bias, then BN
    expected = stem + stage1 + stage2 + stage3 + stage4 + shortcuts + classifier
    assert expected == 13_757_416
    assert count_params(model) == expected
    with torch.device("meta"):
        assert count_params(create_model("neon_miniplaces_plain")) == expected  # plain: minus 0 shortcut params
    with torch.no_grad():
        stages = model.eval().forward_stages(torch.randn(1, 3, 112, 112))
        assert model.forward_head(stages[-1]).shape == (1, 100)
    shapes = [tuple(f.shape) for f in stages]
    assert shapes == [(1, 32, 56, 56), (1, 64, 28, 28), (1, 128, 14, 14), (1, 256, 7, 7)]  # 7x7 before their pool
    assert sum(isinstance(m, NeonModule) for m in model.modules()) == 4 * 9


def test_state_dict_is_the_same_clean_layout_for_both_networks():
    resnet, plain = create_model("neon_miniplaces_resnet", depth=2), create_model("neon_miniplaces_plain", depth=2)
    keys = list(resnet.state_dict())
    assert keys == list(plain.state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert [k for k in keys if k.startswith("layer2.0.")][:2] == ["layer2.0.conv1.weight", "layer2.0.bn1.weight"]
    assert [k for k in keys if k.startswith("fc")] == ["fc.weight", "fc.bn.weight", "fc.bn.bias", "fc.bn.running_mean",
                                                       "fc.bn.running_var", "fc.bn.num_batches_tracked"]
    plain.load_state_dict(resnet.state_dict())  # either loads the other's weights


def test_projection_shortcuts_are_fixed_zero_padded_identities():
    model = create_model("neon_miniplaces_resnet", depth=1)
    strided = [m for m in model.modules() if isinstance(m, NeonModule) and m.shortcut is not None]
    assert [m.conv1.stride for m in strided] == [(2, 2)] * 3  # the first module of stages 2-4 only
    for module in strided:
        in_chs, out_chs = module.conv1.in_channels, module.conv1.out_channels
        x = torch.randn(2, in_chs, 14, 14)
        expected = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, out_chs - in_chs, 7, 7)], dim=1)
        assert torch.equal(module.shortcut(x), expected)
    before = [m.shortcut.weight.clone() for m in strided]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean().backward()
    opt.step()
    assert all(torch.equal(m.shortcut.weight, w) for m, w in zip(strided, before))  # neon never updates them


@pytest.mark.parametrize("name, residual", [("neon_miniplaces_plain", False), ("neon_miniplaces_resnet", True)])
def test_plain_network_has_no_shortcut(name, residual):
    model = create_model(name, depth=2).eval()
    for m in model.modules():
        if isinstance(m, NeonModule):  # the residual branch outputs zeros
            torch.nn.init.zeros_(m.bn2.weight)
            torch.nn.init.zeros_(m.bn2.bias)
    features = model.forward_features(torch.randn(2, 3, 64, 64))
    if residual:  # the stem's output carried by the shortcuts (zero-padded channels stay zero)
        assert features[:, :32].abs().sum() > 0
    else:
        assert torch.equal(features, torch.zeros_like(features))
        assert all(m.shortcut is None for m in model.modules() if isinstance(m, NeonModule))


@pytest.mark.parametrize("side", [48, 100, 112, 128, 240])
def test_any_input_size_and_the_dense_head_averages_to_the_classifier(side):
    model = tiny_neon().eval()
    randomise_bn_statistics(model)
    x = torch.randn(3, 3, side, side)
    dense = model.forward_dense(x)  # the classifier as a 1x1 conv + BN, miniplaces_eval.py's form
    map_side = -(-side // 16)  # stride 2 stem, then 2, 2, 2
    assert dense.shape == (3, 5, map_side, map_side)
    assert torch.allclose(dense.mean((2, 3)), model(x), atol=1e-5)


def test_multiscale_evaluation_averages_the_per_scale_softmax_of_the_dense_scores():
    model = tiny_neon().eval()
    randomise_bn_statistics(model)
    torch.manual_seed(2)
    images, labels = torch.randn(6, 3, 128, 128), torch.tensor([0, 1, 2, 3, 4, 0])
    result = evaluate(model, [(images, labels)], num_classes=5, scales=MULTISCALE)
    with torch.no_grad():
        per_scale = []
        for side in MULTISCALE:  # the whole image at each scale
            view = images if side == 128 else F.interpolate(images, size=(side, side), mode="bilinear",
                                                             align_corners=False, antialias=True)
            per_scale.append(model.forward_dense(view).mean((2, 3)).softmax(1))  # positions, then softmax
        probs = torch.stack(per_scale).mean(0)  # then the scales
    assert result["loss"] == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-5)
    assert result["top1"] == pytest.approx(100.0 * (probs.argmax(1) == labels).float().mean().item())
    single = evaluate(model, [(images, labels)], num_classes=5)
    assert single["loss"] != pytest.approx(result["loss"], rel=1e-3)  # the scales change the prediction


def test_depth_and_plain_options_are_checked():
    with pytest.raises(ValueError, match="depth"):
        create_model("neon_miniplaces_resnet", depth=0)
    with pytest.raises(ValueError, match="plain"):
        create_model("neon_miniplaces_plain", zero_init_last=True)


# ------------------------------------------------------------------------------- the recipe and deepres eval
def write_miniplaces(root, per_split=(12, 6)):
    """Mini-Places2 as it unpacks: images/train/<letter>/<class>/..., images/val/..., development_kit lists."""
    classes = ["a/abbey", "b/bar", "c/canyon"]
    rng = np.random.default_rng(0)
    data = root / "development_kit" / "data"
    data.mkdir(parents=True)
    (data / "categories.txt").write_text("".join(f"/{name} {i}\n" for i, name in enumerate(classes)))
    for split, count in zip(("train", "val"), per_split):
        lines = []
        for k in range(count):
            rel = f"train/{classes[k % 3]}/{k:08d}.png" if split == "train" else f"val/{k:08d}.png"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(root / "images" / rel)
            lines.append(f"{rel} {k % 3}\n")
        (data / f"{split}.txt").write_text("".join(lines))


@pytest.fixture(scope="module")
def neon_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("neon")
    write_miniplaces(tmp / "miniplaces")
    args = ["train", "miniplaces2/neon_resnet", "--out", str(tmp / "runs")]
    for setting in (f"data.root={tmp / 'miniplaces'}", "model.kwargs.depth=1", "model.kwargs.widths=[4,8,8,8]",
                    "train.max_iters=2", "data.batch_size=4", "data.eval_batch_size=4", "data.workers=0",
                    "train.calibrate_int8=false"):
        args += ["--set", setting]
    assert main(args) == 0
    return tmp, tmp / "runs" / "miniplaces2-neon_resnet"


def test_deepres_eval_runs_their_multiscale_protocol(neon_run, capsys):
    tmp, run_dir = neon_run
    capsys.readouterr()
    out_dir = tmp / "eval_ms"
    assert main(["eval", str(run_dir), "--eval-preset", "crop128_resize128", "--test-scales", "112,128,160,240",
                 "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "(6 images, 0 skipped, scales [112, 128, 160, 240]" in printed
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["scales"] == MULTISCALE and metrics["n"] == 6 and not metrics["flip"]
    # the same numbers from the stored images: mean subtraction, then the dense scores of each whole-image scale
    loaded = load_model(run_dir)
    cfg, model = loaded.config, loaded.model.eval()
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1) * 255
    lines = (tmp / "miniplaces" / "development_kit" / "data" / "val.txt").read_text().split("\n")
    paths, labels = zip(*(line.split() for line in lines if line))
    images = torch.stack([torch.from_numpy(np.array(Image.open(tmp / "miniplaces" / "images" / p))).permute(2, 0, 1)
                          for p in paths]).float() - mean
    with torch.no_grad():
        probs = torch.stack([
            model.forward_dense(images if side == 128 else F.interpolate(
                images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)).mean((2, 3))
            .softmax(1) for side in MULTISCALE]).mean(0)
    expected_loss = F.nll_loss(probs.log(), torch.tensor([int(y) for y in labels])).item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_neon_recipes_state_their_protocol_and_numbers():
    for name, model in (("miniplaces2/neon_resnet", "neon_miniplaces_resnet"),
                        ("miniplaces2/neon_plain", "neon_miniplaces_plain")):
        cfg = load_config(name)
        assert cfg.model.name == model and cfg.expect.metric == "top5" and cfg.expect.accuracy == 82.5
        assert "17.5%" in cfg.expect.note and "14.6%" in cfg.expect.note
        assert cfg.data.short_side_range == (128, 240) and cfg.data.image_size == 112
        assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 5e-4)
        assert not cfg.optim.wd_exclude_bn_bias and cfg.data.batch_size == 128
        assert (cfg.schedule.milestones, cfg.schedule.gamma, cfg.train.epochs) == ([40, 70], 0.1, 80)
    assert load_config("miniplaces2/resnet").model.name == "resnet18"  # the stand-in stays


# ------------------------------------------------------------------------------------------ scale jitter
def test_short_side_range_rescales_then_crops_at_random():
    ramp = (torch.arange(32, dtype=torch.uint8) * 8).expand(3, 32, 32).contiguous()  # 8 per pixel, left to right
    jitter = ItemTransform(size=16, random_crop=True, short_side_range=(32, 64))
    slopes = set()
    for seed in range(24):
        out = jitter(ramp, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
        slope = (out[0, 8, -2].item() - out[0, 8, 1].item()) / 13  # 8 * 32 / side for a side in 32..64
        assert 3.5 <= slope <= 8.5
        slopes.add(round(slope, 1))
    assert len(slopes) > 4  # the side varies
    again = jitter(ramp, torch.Generator().manual_seed(3))
    assert torch.equal(again, jitter(ramp, torch.Generator().manual_seed(3)))


def test_short_side_range_in_the_loader_and_its_checks():
    cfg = DataConfig(name="synthetic", synthetic_size=(16, 4), synthetic_image_size=12, image_size=8,
                     short_side_range=(8, 20), batch_size=4, eval_batch_size=4, workers=0, hflip=False)
    train, val, _ = build_loaders(cfg, "cpu", seed=1)
    train.set_epoch(0)
    first = [x for x, _ in train]
    assert {tuple(x.shape) for x in first} == {(4, 3, 8, 8)}
    train.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, (x for x, _ in train)))  # replayed exactly
    assert tuple(next(iter(val))[0].shape) == (4, 3, 12, 12)  # evaluation is not jittered
    with pytest.raises(ValueError, match="short_side_range"):
        load_config("miniplaces2/neon_resnet", ["data.short_side_range=[100, 240]"])  # below the 112 crop
    with pytest.raises(ValueError, match="short_side_range"):
        load_config("miniplaces2/neon_resnet", ["data.short_side_range=[240, 128]"])


# -------------------------------------------------------------------------------------- plain CIFAR ResNets
@pytest.mark.parametrize("depth", [20, 56, 110])
def test_plain_cifar_rows_have_no_shortcut_and_train_one_step(depth):
    plain = create_model(f"plain{depth}")
    assert count_params(plain) == count_params(create_model(f"resnet{depth}"))  # option A shortcuts have none
    assert list(plain.state_dict()) == list(create_model(f"resnet{depth}").state_dict())
    units = [m for name in plain.stage_names for m in getattr(plain, name)]
    assert len(units) == 3 * (depth - 2) // 6 and all(u.downsample is None and not u.residual for u in units)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    before = plain.fc.weight.clone()
    loss = F.cross_entropy(plain(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, plain.fc.weight)
    # with every unit's last BN zeroed, a plain net's features are zero (a ResNet's would carry the stem's output)
    plain.eval()
    for u in units:
        torch.nn.init.zeros_(u.bn2.weight)
        torch.nn.init.zeros_(u.bn2.bias)
    assert torch.equal(plain.forward_features(x), torch.zeros(4, 64, 4, 4))


def test_plain_drops_the_projection_shortcuts_parameters():
    # resnet18's three projections (1x1 conv + BN): 64->128, 128->256, 256->512
    projections = sum(c_in * c_out + 2 * c_out for c_in, c_out in ((64, 128), (128, 256), (256, 512)))
    assert count_params(create_model("resnet18")) - count_params(create_model("resnet18", residual=False)) \
        == projections == 173_824
    with pytest.raises(ValueError, match="residual=False"):
        create_model("resnet20", residual=False, zero_init_last=True)
