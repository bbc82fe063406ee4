import math

import pytest
import torch
import torch.nn.functional as F

from data_helpers import read_reference
from deepres.cli import main as cli_main
from deepres.models import create_model, default_input_size, list_models
from deepres.models.complexity import model_complexity
from deepres.models.registry import builder_module



def small_input(name, batch=2, in_chans=3):
    # 32 px keeps every stage at >= 1x1 for ImageNet nets (stride 32); CIFAR nets get 16 px to stay fast.
    side = 16 if default_input_size(name)[1] == 32 else 32
    return torch.randn(batch, in_chans, side, side)


# The library's classifiers only: stand-ins that other test modules register (train_fakes) would join the list when
# those modules are collected first; segmentation models are covered by test_seg_models.py.
CLASSIFIERS = [n for n in list_models()
               if not n.startswith("_test") and builder_module(n) != "deepres.models.segmentation"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward_every_model(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("resnet101", 44_549_160),
    ("resnet152", 60_192_808), ("wide_resnet50_2", 68_883_240), ("resnext50_32x4d", 25_028_904),
    ("resnet50d", 25_576_264),  # timm's count
])
def test_imagenet_parameter_counts(name, expected):
    assert model_complexity(name, flops=False)["params"] == expected


@pytest.mark.parametrize("name, millions", [
    ("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85), ("resnet110", 1.7),
    ("resnet1202", 19.4), ("preact_resnet164", 1.7), ("preact_resnet1001", 10.3), ("wrn_28_10", 36.5),
])
def test_cifar_parameter_counts_match_papers(name, millions):
    params = model_complexity(name, num_classes=10, flops=False)["params"]
    assert round(params / 1e6, 1 if millions >= 1 else 2) == millions


def test_resnet20_option_a_exact_count():
    assert model_complexity("resnet20", num_classes=10, flops=False)["params"] == 269_722


def test_option_b_projection_adds_parameters():
    a = sum(p.numel() for p in create_model("resnet20").parameters())
    b = sum(p.numel() for p in create_model("resnet20", shortcut="B").parameters())
    assert b > a


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_state_dict_matches_torchvision_layout(name):
    ours = [(k, tuple(v.shape)) for k, v in create_model(name).state_dict().items()]
    assert ours == read_reference(name)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def torchvision_forward(sd, layers, bottleneck):
    """ResNet forward written from torchvision's definition, reading only the state dict (eval mode)."""

    def run(x):
        x = F.max_pool2d(F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1")), 3, 2, 1)
        for li, n in enumerate(layers):
            for b in range(n):
                p, stride = f"layer{li + 1}.{b}", 2 if b == 0 and li > 0 else 1
                if bottleneck:  # v1.5: stride on the 3x3
                    out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                    out = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
                    out = _bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
                else:
                    out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
                    out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
                if f"{p}.downsample.0.weight" in sd:
                    x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
                x = F.relu(out + x)
        return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])

    return run


@pytest.mark.parametrize("name, layers, bottleneck", [("resnet18", (2, 2, 2, 2), False),
                                                      ("resnet50", (3, 4, 6, 3), True)])
def test_logits_match_torchvision_definition(name, layers, bottleneck):
    torch.manual_seed(0)
    model = create_model(name).eval()
    # Non-trivial BN statistics, so a swapped mean/var or a misplaced BN would show.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = torchvision_forward(model.state_dict(), layers, bottleneck)(x)
        assert torch.allclose(model(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet50", "resnet18d", "resnet20", "preact_resnet18", "wrn_16_8",
                                  "resnet38_a1"])
def test_shared_interface(name):
    model = create_model(name, num_classes=5).eval()
    x = small_input(name)
    with torch.no_grad():
        stages = model.forward_stages(x)
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        assert torch.equal(stages[-1], feats)
        assert pooled.shape == (2, model.num_features)
        assert torch.allclose(logits, model(x))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


def test_stage_features_halve_resolution():
    model = create_model("resnet50").eval()
    with torch.no_grad():
        sizes = [f.shape[-1] for f in model.forward_stages(torch.randn(1, 3, 64, 64))]
    assert sizes == [16, 8, 4, 2]


@pytest.mark.parametrize("name, output_stride, expected", [
    ("resnet50", 16, [16, 8, 4, 4]), ("resnet50", 8, [16, 8, 8, 8]), ("resnet18", 8, [16, 8, 8, 8]),
    ("resnet38_a", 8, [32, 16, 8, 8, 8, 8]), ("resnet38_a1", 16, [32, 16, 8, 4, 4, 4]),
])
def test_output_stride_dilates_last_stages(name, output_stride, expected):
    model = create_model(name, output_stride=output_stride).eval()
    with torch.no_grad():
        sizes = [f.shape[-1] for f in model.forward_stages(torch.randn(1, 3, 64, 64))]
    assert sizes == expected


def test_bad_output_stride_is_an_error():
    with pytest.raises(ValueError, match="output_stride"):
        create_model("resnet50", output_stride=12)


def test_dilated_model_keeps_pretrained_layout():
    assert ({k: v.shape for k, v in create_model("resnet50", output_stride=8).state_dict().items()}
            == {k: v.shape for k, v in create_model("resnet50").state_dict().items()})


def test_grayscale_input():
    model = create_model("resnet20", in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_zero_init_last_makes_units_identity():
    model = create_model("resnet18", zero_init_last=True).eval()
    unit = model.layer1[0]
    x = torch.randn(1, 64, 8, 8).relu()
    with torch.no_grad():
        assert torch.allclose(unit(x), x)
    preact = create_model("preact_resnet18", zero_init_last=True).eval()
    with torch.no_grad():
        assert torch.allclose(preact.layer1[0](x), x)


def test_block_variants_change_behaviour():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    outputs = {}
    for variant in [{}, {"relu_after_add": False}, {"bn_after_add": True},
                    {"bn_after_add": True, "relu_after_add": False}]:
        torch.manual_seed(1)
        model = create_model("resnet20", **variant)
        outputs[str(variant)] = model.forward_stages(x)[0]
    assert (outputs["{}"] >= 0).all()  # ReLU after the addition
    assert (outputs["{'relu_after_add': False}"] < 0).any()
    # BN after the addition, no ReLU: in training mode each channel of a unit's output has zero mean.
    both = outputs["{'bn_after_add': True, 'relu_after_add': False}"]
    assert both.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    # Same parameters as the reference: BN moves, it is not added.
    counts = {sum(p.numel() for p in create_model("resnet20", **v).parameters())
              for v in ({}, {"bn_after_add": True})}
    assert len(counts) == 1


def test_stride_in_1x1_option():
    v1 = create_model("resnet50", stride_in_1x1=True)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    v15 = create_model("resnet50")
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)


def test_resnet38_block_dropout_only_in_training():
    model = create_model("resnet38_a1", block_dropout=(0.3, 0.5), num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))


def test_resnet38_width_scales_every_stage():
    """width scales each stage's channels (rounded to multiples of 4); the layout and the depth stay Model A1's."""
    full, thin = create_model("resnet38_a1", num_classes=10), create_model("resnet38_a1", num_classes=10, width=0.25)
    assert full.stage_channels == (128, 256, 512, 1024, 2048, 4096)
    assert thin.stage_channels == (32, 64, 128, 256, 512, 1024) and thin.conv1a.out_channels == 16
    assert [k.split(".")[0] for k in thin.state_dict()] == [k.split(".")[0] for k in full.state_dict()]
    assert thin(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="width must be in"):
        create_model("resnet38_a1", width=0)


def test_unknown_model_and_option_errors():
    with pytest.raises(KeyError, match="unknown model 'resnet51'"):
        create_model("resnet51")
    with pytest.raises(ValueError, match="does not accept option 'bogus'"):
        create_model("resnet18", bogus=1)


def test_flops_match_published_tables():
    assert model_complexity("resnet50")["gmacs"] == pytest.approx(4.09, abs=0.01)
    assert model_complexity("resnet18")["gmacs"] == pytest.approx(1.81, abs=0.01)
    assert model_complexity("resnet20", num_classes=10)["gmacs"] == pytest.approx(0.041, abs=0.001)


def test_models_cli_table(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path))
    assert cli_main(["models", "--filter", "resnet50*"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert set(rows) == {"resnet50", "resnet50c", "resnet50d"}
    assert rows["resnet50"][1:3] == ["25.56", "4.09"]
    assert math.isclose(float(rows["resnet50d"][2]), 4.33, abs_tol=0.01)
    assert cli_main(["models", "--filter", "nothing*"]) == 2


def test_models_cli_reuses_its_cached_table_and_says_gmacs(capsys, monkeypatch, tmp_path):
    """The table is counted once (meta-device builds and FLOP counting take ~13 s for the whole zoo) and read
    from the cache afterwards, while the models package and torch are unchanged."""
    from deepres.models import complexity

    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path))
    assert cli_main(["models", "--filter", "resnet5*"]) == 0
    first = capsys.readouterr().out
    assert first.splitlines()[0].split()[:4] == ["model", "params", "(M)", "GMACs"]
    assert {line.split()[0] for line in first.splitlines()[1:]} == {"resnet50", "resnet50c", "resnet50d", "resnet56"}

    def no_counting(*args, **kwargs):
        raise AssertionError("counted again instead of reading the cache")

    monkeypatch.setattr(complexity, "model_complexity", no_counting)
    assert cli_main(["models", "--filter", "resnet5*"]) == 0
    assert capsys.readouterr().out == first
    assert cli_main(["models", "--filter", "resnet5*", "--no-flops"]) == 0  # cached rows have GMACs anyway
    assert capsys.readouterr().out == first
    (tmp_path / "model_complexity.json").write_text("{not json")  # a damaged cache is counted anew
    monkeypatch.undo()
    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path))
    assert cli_main(["models", "--filter", "resnet5*"]) == 0 and capsys.readouterr().out == first


def test_models_help_names_gmacs_not_flops(capsys):
    with pytest.raises(SystemExit):
        cli_main(["models", "--help"])
    help_text = capsys.readouterr().out
    assert "GMACs" in help_text and "FLOP" not in help_text.upper().replace("--NO-FLOPS", "")


@pytest.mark.parametrize("unit_name, in_chs", [("b6", 1024), ("b7", 2048)])
def test_resnet38_dropout_only_before_the_last_conv_of_a_unit(unit_name, in_chs):
    """ademxapp's res_block (util/symbol/resnet_v2.py) gives the dropout rate only to its last conv stage
    (`this_dropout_rate = dropout_rate if i == len(filters)-1 else 0.`): the input of every other conv of a B6/B7
    unit is the same in training and evaluation, the last conv's is not."""
    unit = getattr(create_model("resnet38_a1", block_dropout=(0.3, 0.5), num_classes=4), unit_name)
    seen: dict[str, list[torch.Tensor]] = {}
    for name, conv in unit.named_children():
        if isinstance(conv, torch.nn.Conv2d):
            conv.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(args[0]))
    x = torch.randn(2, in_chs, 4, 4)
    torch.manual_seed(0)
    with torch.no_grad():
        unit.eval()(x)
        unit.train()
        for m in unit.modules():  # batch statistics aside, dropout is the only difference between the modes
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        unit(x)
    dropped = {name for name, (evaluated, trained) in seen.items() if not torch.equal(evaluated, trained)}
    assert dropped == {"conv_branch2b2"}


@pytest.mark.parametrize("name, num_classes, millions", [
    # mmcls ResNet page, CIFAR-10 and CIFAR-100 tables (ResNet_CIFAR: 3x3 stride-1 stem, no max-pool)
    ("cifar_resnet18", 10, 11.17), ("cifar_resnet34", 10, 21.28), ("cifar_resnet50", 10, 23.52),
    ("cifar_resnet101", 10, 42.51), ("cifar_resnet152", 10, 58.16), ("cifar_resnet50", 100, 23.71),
])
def test_cifar_stem_resnet_parameter_counts_match_mmcls(name, num_classes, millions):
    assert round(model_complexity(name, num_classes=num_classes, flops=False)["params"] / 1e6, 2) == millions


def test_gmacs_count_conv_and_linear_multiply_accumulates_only():
    """The `deepres models` convention: one MAC per weight use of a conv or linear layer; BN, ReLU, pooling and the
    residual additions are free (mmcv's counter, behind mmcls's FLOPs column, adds them)."""
    model = create_model("cifar_resnet18").eval()
    macs = []

    def count(module, args, out):
        if isinstance(module, torch.nn.Conv2d):
            macs.append(out.numel() * module.weight[0].numel())
        elif isinstance(module, torch.nn.Linear):
            macs.append(out.numel() * module.in_features)

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert model_complexity("cifar_resnet18")["gmacs"] == pytest.approx(sum(macs) / 1e9, rel=1e-12)


@pytest.mark.parametrize("name, mmcls_gflops", [
    ("resnet18", 1.82), ("resnet34", 3.68), ("resnet50", 4.12), ("resnet101", 7.85), ("resnet152", 11.58),
    ("cifar_resnet18", 0.56), ("cifar_resnet34", 1.16), ("cifar_resnet50", 1.31), ("cifar_resnet101", 2.52),
    ("cifar_resnet152", 3.74),
])
def test_mmcls_flops_are_our_gmacs_plus_under_one_percent(name, mmcls_gflops):
    # mmcls's tables (2 decimals) count BN, ReLU and pooling on top of conv + linear: 0.05-0.9% above ours
    gmacs = model_complexity(name)["gmacs"]
    assert gmacs - 0.005 <= mmcls_gflops <= gmacs * 1.01


@pytest.mark.parametrize("side, padded, caffe", [
    (224, [112, 56, 28, 14, 7, 7], [112, 56, 28, 14, 7, 7]),
    (225, [113, 57, 29, 15, 8, 8], [112, 56, 28, 14, 7, 7]),  # rounding up without padding: the report's sizes
])
def test_resnet38_a_caffe_pool_style_is_unpadded_ceil_mode(side, padded, caffe):
    """Model A as ademxapp evaluates its released weights (--pool-top-infer-style caffe): the same parameters, max-pools
    without padding that round up."""
    torch.manual_seed(0)
    models = {style: create_model("resnet38_a", pool_style=style, num_classes=3).eval()
              for style in ("padded", "caffe")}
    models["caffe"].load_state_dict(models["padded"].state_dict())
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        stages = {style: model.forward_stages(x) for style, model in models.items()}
    assert [f.shape[-1] for f in stages["padded"]] == padded
    assert [f.shape[-1] for f in stages["caffe"]] == caffe
    if padded == caffe:  # even sides: the same sizes, but windows one pixel apart
        assert not torch.allclose(stages["padded"][0], stages["caffe"][0])
    caffe = models["caffe"]
    with torch.no_grad():
        b2 = caffe.b2_2(caffe.b2_1(caffe.b2(F.max_pool2d(caffe.conv1a(x), 3, 2, 0, ceil_mode=True))))
    assert torch.allclose(b2, stages["caffe"][0], atol=1e-5)
    with pytest.raises(ValueError, match="pool_style 'caffe' is for Model A"):
        create_model("resnet38_a1", pool_style="caffe")
    with pytest.raises(ValueError, match="pool_style must be one of padded, caffe"):
        create_model("resnet38_a", pool_style="same")
