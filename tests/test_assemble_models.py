"""Assemble-ResNet parts and rows (models/assemble.py, the sk / aa / big_little options of ResNet): the official
parameter count, SK attention, the blur, timm's key layouts and an ONNX export checked by ONNX Runtime."""
import pytest
import torch

from data_helpers import read_reference
from deepres.inference.export import export_model
from deepres.models import create_model
from deepres.models.assemble import BlurPool2d, SelectiveKernel, SplitSelectiveKernel, binomial_filter
from deepres.models.complexity import model_complexity


@pytest.mark.parametrize("name, options, side", [
    ("assemble_resnet50", {}, 64), ("resnetblur50", {}, 32), ("skresnet18", {}, 32),
    ("skresnet50", {}, 64),
    ("resnet20", {"sk": True}, 16), ("resnet20", {"sk": True, "aa": "conv", "aa_size": 5}, 16),
    ("resnet50", {"sk": True, "aa": "stem"}, 32), ("resnet18d", {"aa": "both"}, 32),
])
def test_forward_backward_through_the_registry(name, options, side):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **options)
    out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():  # eval mode takes a single image (the SK attention's BN sees 1x1 maps)
        assert model(torch.randn(1, 3, side, side)).shape == (1, 5)


def test_assemble_resnet50_has_the_official_parameter_count():
    # clovaai/assembled-cnn script/ctl_r50zc_bldskaa_ls_drbl_mixupaa_kd_ep600.sh prints, for its 1001-class model:
    # "Total params: 41,925,801 / Trainable params: 41,848,489 / Non-trainable params: 77,312" (BN mean and var).
    model = create_model("assemble_resnet50", num_classes=1001)
    assert model_complexity("assemble_resnet50", num_classes=1001, flops=False)["params"] == 41_848_489
    assert sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))) == 77_312


def test_assemble_resnet152_builds_with_big_little_depths():
    # Same code, alpha 1 beta 2, blocks 5/12/30/3: little branches of max(1, n // 2 - 1) blocks at full width.
    model = create_model("assemble_resnet152", num_classes=3).eval()
    assert [len(model.layer1.little), len(model.layer2.big), len(model.layer3.big)] == [1, 11, 29]
    with torch.no_grad():
        sizes = [f.shape[-1] for f in model.forward_stages(torch.randn(1, 3, 64, 64))]
    assert sizes == [8, 4, 4, 2]  # stage strides 2, 2, 1, 2 after a stride-4 stem (Big-Little Net's layout)


def test_sk_attention_weights_sum_to_one_over_the_branches():
    torch.manual_seed(0)
    official = SelectiveKernel(8, 16).eval()
    branches = torch.randn(3, 2, 16, 5, 5)
    weights = official.attention(branches)
    assert weights.shape == (3, 2, 16, 1, 1) and (weights > 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(3, 16, 1, 1))
    split = SplitSelectiveKernel(8, 16).eval()
    torch.testing.assert_close(split.attn(branches).sum(1), torch.ones(3, 16, 1, 1))
    # With equal branches the unit returns that branch whatever the weights are.
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        both = torch.relu(official.bn(official.conv(x))).unflatten(1, (2, -1))
        same = both[:, :1].expand_as(both)
        torch.testing.assert_close((same * official.attention(same)).sum(1), same[:, 0])


@pytest.mark.parametrize("size", range(1, 8))
def test_blur_of_a_constant_image_is_constant_and_adds_no_state(size):
    blur = BlurPool2d(4, size, stride=2)
    out = blur(torch.full((1, 4, 10, 10), 3.0))
    assert out.shape == (1, 4, 5, 5)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))
    assert blur.state_dict() == {}


def test_blur_3_is_the_binomial_filter_and_downsamples_by_two():
    impulse = torch.zeros(1, 1, 7, 7)
    impulse[0, 0, 2, 2] = 16.0
    out = BlurPool2d(1, 3, stride=1)(impulse)  # stride 1 shows the kernel itself
    torch.testing.assert_close(out[0, 0, 1:4, 1:4], torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]))
    assert binomial_filter(5).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1..7"):
        binomial_filter(8)


def test_anti_aliasing_moves_the_stride_and_keeps_the_keys():
    plain, blurred = create_model("resnet50"), create_model("resnet50", aa="conv")
    assert ({k: v.shape for k, v in plain.state_dict().items()}
            == {k: v.shape for k, v in blurred.state_dict().items()})
    with torch.no_grad():
        sizes = [f.shape[-1] for f in blurred.eval().forward_stages(torch.randn(1, 3, 64, 64))]
    assert sizes == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="stem max-pool"):
        create_model("resnet20", aa="stem")
    with pytest.raises(ValueError, match="aa must be"):
        create_model("resnet50", aa="everywhere")
    with pytest.raises(ValueError, match="module 0"):
        create_model("assemble_resnet50", aa="both")


def test_resnetblur50_loads_timm_keys():
    # timm's resnetblur50: BlurPool2d (non-persistent filter) at `aa` in the strided blocks and after a stride-1
    # max-pool in the stem, so its state dict is resnet50's key for key.
    ours = [(k, tuple(v.shape)) for k, v in create_model("resnetblur50").state_dict().items()]
    assert ours == read_reference("resnet50")


def test_skresnet18_matches_timm_layout():
    ours = [(k, tuple(v.shape)) for k, v in create_model("skresnet18").state_dict().items()]
    assert ours == read_reference("skresnet18", source="timm")


def test_skresnet50_has_timms_bottleneck_layout():
    model = create_model("skresnet50")
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    resnet50 = {k for k in create_model("resnet50").state_dict() if not k.startswith("layer")}
    assert resnet50 <= set(state)  # stem and fc as resnet50
    # layer2.0: planes 128; the SK unit splits them into two 64-channel inputs of a 3x3 and a dilated 3x3 path
    assert state["layer2.0.conv1.conv.weight"] == (128, 256, 1, 1)
    assert state["layer2.0.conv2.paths.0.conv.weight"] == state["layer2.0.conv2.paths.1.conv.weight"] == (128, 64, 3, 3)
    paths = model.layer2[0].conv2.paths
    assert paths[1].conv.dilation == (2, 2) and paths[0].conv.stride == (2, 2)
    assert state["layer2.0.conv2.attn.fc_reduce.weight"] == (8, 128, 1, 1)  # make_divisible(128 / 16, 8)
    assert state["layer2.0.conv2.attn.fc_select.weight"] == (256, 8, 1, 1)
    assert state["layer2.0.conv3.bn.weight"] == (512,) and state["layer2.0.downsample.0.weight"] == (512, 256, 1, 1)
    with pytest.raises(ValueError, match="se"):
        create_model("skresnet50", se=True)


def test_assemble_resnet50_exports_to_onnx(tmp_path):
    torch.manual_seed(0)
    model = create_model("assemble_resnet50", num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics, so a misplaced BN would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    metadata = {"model": "assemble_resnet50", "input_size": [3, 64, 64]}
    result = export_model(model, tmp_path / "m.onnx", format="onnx", metadata=metadata, check_batch_sizes=(1,),
                          log=lambda s: None)  # export_model compares ONNX Runtime's logits with PyTorch's
    assert (tmp_path / "m.onnx").is_file() and result["max_abs_error"] < 1e-3


def test_big_branch_ends_without_relu_and_merges_at_the_little_resolution():
    torch.manual_seed(0)
    model = create_model("assemble_resnet50", num_classes=3, zero_init_last=False).eval()  # live residuals
    stage = model.layer1
    x = model.forward_stem(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        big, little = stage.big(x), stage.little_expand(stage.little(x))
        out = stage(x)
    assert (big < 0).any()  # the big branch's last block drops its final ReLU (official last_relu=False)
    assert big.shape[-1] * 2 == little.shape[-1] == x.shape[-1]
    assert out.shape[-1] == x.shape[-1] // 2 and (out >= 0).all()  # layer1's merge block carries stride 2


def test_big_little_shortcut_is_their_padded_3x3_average_pool():
    """The published checkpoints' `bl_projection_shortcut` (nets/resnet_model.py): fixed_padding(x, 3) adds one row
    and column of zeros on every side, then a 3x3 stride-2 VALID average pool, so the zeros count in the border
    windows (a corner averages 4 pixels over 9); "D"'s 2x2 pool is a different function of the same weights."""
    from deepres.models.resnet import make_shortcut

    x = torch.arange(1.0, 37.0).reshape(1, 1, 6, 6)
    shortcut = make_shortcut("BL", 1, 1, 2, 1)
    pool = shortcut[0]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    expected = torch.stack([torch.stack([padded[0, 0, i:i + 3, j:j + 3].sum() / 9 for j in (0, 2, 4)])
                            for i in (0, 2, 4)])
    assert torch.allclose(pool(x)[0, 0], expected)
    assert pool(x)[0, 0, 0, 0].item() == pytest.approx((1 + 2 + 7 + 8) / 9)
    assert isinstance(make_shortcut("BL", 4, 8, 1, 1)[0], torch.nn.Identity)
    assert not torch.allclose(make_shortcut("D", 1, 1, 2, 1)[0](x), pool(x))
    model = create_model("assemble_resnet50")
    pools = [m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d)]
    assert pools and all(p.kernel_size == 3 and p.padding == 1 and p.count_include_pad for p in pools)
