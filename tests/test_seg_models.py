"""Segmentation models (models/segmentation.py): outputs, torchvision's key layout and parameter counts, the dilated
backbone against torchvision's rule, the ademxapp ResNet-38 head, and loading torchvision-layout state dicts."""
import logging

import pytest
import torch

from data_helpers import read_reference
from deepres.cli import main as cli_main
from deepres.models import create_model, default_input_size, list_models, load_pretrained
from deepres.models.complexity import model_complexity
from deepres.models.pretrained import get_pretrained, list_pretrained
from deepres.models.registry import builder_module
from deepres.tasks.build import _state_dict_shape

SEG_MODELS = [n for n in list_models() if builder_module(n) == "deepres.models.segmentation"]
TORCHVISION = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")


def test_every_registered_segmentation_model_is_tested():
    assert set(SEG_MODELS) == {*TORCHVISION, "deeplabv3_resnet50d", "fcn_resnet38_a1", "fcn_resnet18",
                               "fcn_resnet20", "fcn_resnet56"}


@pytest.mark.parametrize("name", SEG_MODELS)
def test_outputs_at_input_size_and_every_parameter_learns(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    x = torch.randn(2, 3, 32, 40)  # not square, not a multiple of 32: the upsampling must hit the input size
    out = model.train()(x)
    if model.aux_classifier is None:
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 32, 40)
        loss = out.square().mean()
    else:
        assert set(out) == {"out", "aux"} and all(v.shape == (2, 3, 32, 40) for v in out.values())
        loss = out["out"].square().mean() + out["aux"].square().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    with torch.no_grad():
        logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3, 32, 40) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50"])
def test_state_dict_is_torchvision_layout(name):
    with torch.device("meta"):
        model = create_model(name)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == read_reference(name)


@pytest.mark.parametrize("name, expected", [  # torchvision's published num_params (21 classes, with aux)
    ("fcn_resnet50", 35_322_218), ("fcn_resnet101", 54_314_346), ("deeplabv3_resnet50", 42_004_074),
    ("deeplabv3_resnet101", 60_996_202),
])
def test_parameter_counts_match_torchvision(name, expected):
    assert model_complexity(name, flops=False)["params"] == expected


def test_gmacs_at_520_skip_the_aux_head_in_eval_mode():
    # torchvision's _ops (152.717 / 178.722 GFLOPS, which are MACs) include the aux FCNHead(1024) at 65x65:
    # 1024*256*9*65^2 + 256*21*65^2 = 9.99 GMACs, which evaluation here does not run.
    aux = (1024 * 256 * 9 + 256 * 21) * 65 * 65 / 1e9
    assert model_complexity("fcn_resnet50")["gmacs"] == pytest.approx(152.717 - aux, abs=0.01)
    assert model_complexity("deeplabv3_resnet50")["gmacs"] == pytest.approx(178.722 - aux, abs=0.01)


def torchvision_dilated_convs(layers):
    """{key: (stride, dilation, padding)} of every conv of torchvision's resnet with
    replace_stride_with_dilation=[False, True, True], written from its _make_layer / Bottleneck."""
    convs = {"conv1": (2, 1, 3)}
    dilation = 1
    for index, (n, dilate) in enumerate(zip(layers, (False, False, True, True))):
        stride = 1 if index == 0 else 2
        previous = dilation
        if dilate:
            dilation, stride = dilation * stride, 1
        for block in range(n):
            p = f"layer{index + 1}.{block}"
            d, s = (previous, stride) if block == 0 else (dilation, 1)
            convs.update({f"{p}.conv1": (1, 1, 0), f"{p}.conv2": (s, d, d), f"{p}.conv3": (1, 1, 0)})
            if block == 0:
                convs[f"{p}.downsample.0"] = (s, 1, 0)
    return convs


@pytest.mark.parametrize("name, layers", [("fcn_resnet50", (3, 4, 6, 3)), ("deeplabv3_resnet101", (3, 4, 23, 3))])
def test_dilated_backbone_follows_torchvision(name, layers):
    with torch.device("meta"):
        backbone = create_model(name).backbone
    ours = {n: (m.stride[0], m.dilation[0], m.padding[0]) for n, m in backbone.named_modules()
            if isinstance(m, torch.nn.Conv2d)}
    assert ours == torchvision_dilated_convs(layers)
    assert create_model("fcn_resnet20").output_stride == 4 and backbone.output_stride == 8


def test_resnet38_fcn_is_ademxapps_two_conv_head():
    with torch.device("meta"):
        model = create_model("fcn_resnet38_a1")
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert head == {"classifier.0.weight": (512, 4096, 3, 3), "classifier.0.bias": (512,),
                    "classifier.2.weight": (21, 512, 3, 3), "classifier.2.bias": (21,)}
    assert all(model.classifier[i].dilation == (12, 12) and model.classifier[i].padding == (12, 12) for i in (0, 2))
    assert model.aux_classifier is None and model.output_stride == 8 and model.classifier_key == "classifier.2"
    assert (model.backbone.b6.dropout, model.backbone.b7.dropout) == (0.3, 0.5)
    assert default_input_size("fcn_resnet38_a1") == (3, 500, 500)


def test_interface_and_overrides():
    model = create_model("fcn_resnet20", num_classes=4, in_chans=1, backbone="resnet32", head="aspp", aux=True)
    assert (model.num_classes, model.in_chans, model.first_conv, model.classifier_key) == (
        4, 1, "backbone.conv1.weight", "classifier.4")
    assert model.backbone.conv1.in_channels == 1 and len(model.backbone.layer1) == 5
    assert model.aux_classifier[0].in_channels == 32  # resnet32's second-to-last stage
    assert model.eval()(torch.randn(1, 1, 24, 24)).shape == (1, 4, 24, 24)
    assert create_model("deeplabv3_resnet50d").first_conv == "backbone.conv1.0.weight"
    with pytest.raises(ValueError, match="head must be one of"):
        create_model("fcn_resnet20", head="unet")
    with pytest.raises(ValueError, match="does not accept option 'bogus'"):
        create_model("fcn_resnet20", bogus=1)


def test_state_dict_shape_reads_classes_from_the_conv_classifier():
    state = create_model("fcn_resnet20", num_classes=5, in_chans=1).state_dict()
    assert _state_dict_shape("fcn_resnet20", state, None, None) == (5, 1)
    wrapped = {f"module.{k}": v for k, v in state.items()}  # DDP prefix stripped, backbone. kept
    assert _state_dict_shape("fcn_resnet20", wrapped, None, None) == (5, 1)


def reference_state_dict(name):
    """Random tensors in the key/shape layout of torchvision's checkpoint, built without deepres."""
    torch.manual_seed(0)
    return {k: torch.randint(0, 5, ()) if not shape else torch.randn(shape) for k, shape in read_reference(name)}


def test_torchvision_layout_loads_strictly(caplog):
    state = reference_state_dict("fcn_resnet50")
    model = create_model("fcn_resnet50")
    report = load_pretrained(model, {f"module.{k}": v for k, v in state.items()})
    assert report == {"dropped": [], "missing": [], "unexpected": []}
    torch.testing.assert_close(model.state_dict(), state)
    # Fine-tuning to other classes refits the class convs of both heads and loads everything else.
    with caplog.at_level(logging.WARNING):
        other = create_model("fcn_resnet50", num_classes=3)
        report = load_pretrained(other, state)
    assert report["dropped"] == ["classifier.4.weight", "classifier.4.bias", "aux_classifier.4.weight",
                                 "aux_classifier.4.bias"]
    torch.testing.assert_close(other.classifier[0].weight, state["classifier.0.weight"])
    no_aux = create_model("fcn_resnet50", aux=False)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_pretrained(no_aux, state)


def test_published_segmentation_records():
    names = list_pretrained("*.tv_coco_voc")
    assert names == [f"{n}.tv_coco_voc" for n in sorted(TORCHVISION)]
    for name in names:
        record = get_pretrained(name)
        assert (record.num_classes, record.categories, record.top1) == (21, "voc-21", None)
        assert (record.preprocess.resize, record.preprocess.crop_size) == (520, 0)
        assert record.filename.rsplit("-", 1)[1] == f"{record.sha256_prefix}.pth"
    assert get_pretrained("fcn_resnet50.tv_coco_voc").metrics == {"miou": 60.5, "pixel_acc": 91.4}
    assert get_pretrained("deeplabv3_resnet101.tv_coco_voc").url == (
        "https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth")
    model = create_model("deeplabv3_resnet50.tv_coco_voc")  # the record's shape, random weights: no download
    assert model.num_classes == 21 and model.aux_classifier is not None


def test_models_cli_lists_segmentation_models(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path))
    assert cli_main(["models", "--filter", "fcn_resnet*"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {"fcn_resnet18", "fcn_resnet20", "fcn_resnet38_a1", "fcn_resnet50", "fcn_resnet56",
                         "fcn_resnet101"}
    assert rows["fcn_resnet50"][1:] == ["35.32", "142.73", "3x520x520"]
    assert rows["fcn_resnet38_a1"][3] == "3x500x500"


def test_head_rates_scale_the_heads_dilations_to_a_small_map():
    """head_rates: ASPP's three rates and the two-conv head's one dilation, for 16x16 maps instead of 65x65."""
    kwargs = dict(widths=[16, 32, 64], strides=[2, 2, 2], output_stride=4, in_chans=1)
    aspp = create_model("fcn_resnet20", head="aspp", head_rates=[3, 6, 9], **kwargs)
    assert [branch[0].dilation for branch in aspp.classifier[0].convs[1:4]] == [(3, 3), (6, 6), (9, 9)]
    two = create_model("fcn_resnet20", head="two_conv", head_rates=[3], **kwargs)
    assert two.classifier[0].dilation == two.classifier[2].dilation == (3, 3) and two.classifier[0].padding == (3, 3)
    assert two(torch.randn(2, 1, 64, 64)).shape == (2, 11, 64, 64)
    assert create_model("fcn_resnet20", head="aspp", **kwargs).classifier[0].convs[1][0].dilation == (12, 12)
    for head, rates, match in (("fcn", [3], "the fcn head has no dilation"), ("two_conv", [3, 6], "one dilation"),
                               ("aspp", [0], "dilations >= 1"), ("aspp", 3, "a list of dilations")):
        with pytest.raises(ValueError, match=match):
            create_model("fcn_resnet20", head=head, head_rates=rates, **kwargs)
