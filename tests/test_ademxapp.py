"""ademxapp MXNet checkpoints -> deepres: the name mapping (models/ademxapp.py) and `deepres convert ademxapp`, on
`.params` files written in MXNet's format (test_mxnet_params' writer) with the names of a real fcn_resnet38_a1."""
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from deepres.cli import main as cli_main
from deepres.core.config import load_config
from deepres.core.preprocess import parse_eval_preset
from deepres.data.loaders import eval_preprocess
from deepres.inference.preprocess import resize_and_crop
from deepres.models import create_model, load_pretrained
from deepres.models.ademxapp import convert_ademxapp, mxnet_name, mxnet_names
from deepres.tasks.build import build_model
from test_mxnet_params import mxnet_list_bytes


@pytest.mark.parametrize("key, name", [
    ("conv1a.weight", "arg:conv1a_weight"),
    ("b2.bn_branch2a.weight", "arg:bn2a_branch2a_gamma"),
    ("b2.bn_branch2a.bias", "arg:bn2a_branch2a_beta"),
    ("b2.conv_branch1.weight", "arg:res2a_branch1_weight"),
    ("b4_5.bn_branch2b1.running_mean", "aux:bn4b5_branch2b1_moving_mean"),
    ("b4_5.conv_branch2b1.weight", "arg:res4b5_branch2b1_weight"),
    ("b6.bn_branch2b2.running_var", "aux:bn6a_branch2b2_moving_var"),
    ("b7.conv_branch2b2.weight", "arg:res7a_branch2b2_weight"),
    ("bn7.running_var", "aux:bn7_moving_var"),
    ("fc.weight", "arg:linear1000_weight"),
    ("backbone.b3_2.conv_branch2a.weight", "arg:res3b2_branch2a_weight"),
    ("classifier.0.bias", "arg:conv6a_bias"),
    ("classifier.2.weight", "arg:linear1000_weight"),
    ("b5.bn_branch2a.num_batches_tracked", None),
])
def test_names_follow_ademxapps_symbols(key, name):
    assert mxnet_name(key, 1000) == name


@pytest.mark.parametrize("model_name", ["resnet38_a", "resnet38_a1", "fcn_resnet38_a1"])
def test_every_key_has_one_name(model_name):
    with torch.device("meta"):
        model = create_model(model_name, num_classes=5)
    names = mxnet_names(model)
    assert len(set(names.values())) == len(names)
    assert set(model.state_dict()) - set(names) == {k for k in model.state_dict() if k.endswith("num_batches_tracked")}
    with pytest.raises(KeyError, match="no ademxapp name"):
        mxnet_name("layer1.0.conv1.weight", 5)


@pytest.fixture(scope="module")
def original():
    """fcn_resnet38_a1 at its real size (124M parameters) with non-default BN statistics and biases."""
    torch.manual_seed(0)
    model = create_model("fcn_resnet38_a1", num_classes=6).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model


def as_mxnet(model) -> dict[str, np.ndarray]:
    state = model.state_dict()
    return {name: state[key].numpy() for key, name in mxnet_names(model).items()}


def test_convert_cli_round_trip_gives_the_same_outputs(tmp_path, original, capsys):
    arrays = as_mxnet(original)
    params = tmp_path / "voc_rna-a1_cls6.params"
    params.write_bytes(mxnet_list_bytes(list(arrays.values()), list(arrays), version="legacy"))  # 2016-era file
    out = tmp_path / "model.safetensors"
    assert cli_main(["convert", "ademxapp", str(params), "--model", "fcn_resnet38_a1", "--out", str(out)]) == 0
    assert "6 classes" in capsys.readouterr().out
    converted = create_model("fcn_resnet38_a1", num_classes=6)
    assert load_pretrained(converted, out) == {"dropped": [], "missing": [], "unexpected": []}
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        assert torch.equal(converted.eval()(x), original(x))
    # An existing output is refused unless --force.
    assert cli_main(["convert", "ademxapp", str(params), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["convert", "ademxapp", str(params), "--out", str(out), "--force"]) == 0


def test_mismatches_name_the_file_and_the_array(original):
    arrays = as_mxnet(original)
    with pytest.raises(ValueError, match=r"f.params: 1 array\(s\) of fcn_resnet38_a1 missing, first 'aux:bn4b2_branch"
                                         r"2a_moving_var' \(for backbone.b4_2.bn_branch2a.running_var\)"):
        convert_ademxapp({k: v for k, v in arrays.items() if k != "aux:bn4b2_branch2a_moving_var"},
                         "fcn_resnet38_a1", "f.params")
    with pytest.raises(ValueError, match="f.params: 1 array.* no place for, first 'arg:conv6b_weight'"):
        convert_ademxapp({**arrays, "arg:conv6b_weight": np.zeros(3, np.float32)}, "fcn_resnet38_a1", "f.params")
    with pytest.raises(ValueError, match=r"f.params: 'arg:res5a_branch1_weight' has shape \(1024, 512, 3, 3\), "
                                         r"fcn_resnet38_a1 wants \(1024, 512, 1, 1\) for backbone.b5.conv_branch1"):
        convert_ademxapp({**arrays, "arg:res5a_branch1_weight": np.zeros((1024, 512, 3, 3), np.float32)},
                         "fcn_resnet38_a1", "f.params")
    with pytest.raises(ValueError, match="one classifier"):
        convert_ademxapp({k: v for k, v in arrays.items() if "linear" not in k}, "fcn_resnet38_a1", "f.params")
    with pytest.raises(ValueError, match="convert to resnet38_a"):
        convert_ademxapp(arrays, "resnet50", "f.params")


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    params = tmp_path / "cls.params"  # a classifier checkpoint's head only: the backbone is missing
    params.write_bytes(mxnet_list_bytes([np.zeros((4, 4096), np.float32)], ["arg:linear4_weight"]))
    assert cli_main(["convert", "ademxapp", str(params), "--model", "resnet38_a1", "--out",
                     str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(params) in err and "'arg:conv1a_weight' (for conv1a.weight)" in err
    assert not (tmp_path / "o.safetensors").exists()
    assert cli_main(["convert", "ademxapp", str(tmp_path / "none.params"), "--out", str(tmp_path / "o")]) == 2
    assert "none.params" in capsys.readouterr().err


@pytest.mark.parametrize("version, classifier, shape", [
    ("v3", np.array(4.0, np.float32), r"\(\)"),  # a scalar: MXNet 2's numpy shapes allow one
    ("v2", None, r"\(0,\)"),  # a "none" array, no data
    ("v2", np.zeros(4, np.float32), r"\(4,\)"),
])
def test_a_classifier_that_is_no_matrix_is_named_not_an_index_error(tmp_path, capsys, version, classifier, shape):
    params = tmp_path / "cls.params"
    params.write_bytes(mxnet_list_bytes([classifier], ["arg:linear4_weight"], version=version))
    assert cli_main(["convert", "ademxapp", str(params), "--model", "resnet38_a1", "--out",
                     str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{params}: 'arg:linear4_weight' has shape " in err
    assert re.search(shape + r", not \(classes, features\) or \(classes, channels, kh, kw\)", err)


# Names, order and shapes of real ademxapp checkpoints, derived from ademxapp's own symbol code (util/symbol/
# resnet_v2.py rna_model_a, rna_model_a1, fcrna_model_a1) by tests/data/ademxapp/derive_param_names.py.
ADEMXAPP_PARAMS = json.loads((Path(__file__).parent / "data" / "ademxapp" / "param_names.json").read_text())


@pytest.mark.parametrize("builder", sorted(ADEMXAPP_PARAMS["models"]))
def test_every_name_of_ademxapps_own_symbols_converts_and_loads_strict(builder):
    spec = ADEMXAPP_PARAMS["models"][builder]
    params = [(name, tuple(shape)) for name, shape in spec["params"]]
    # Each array holds its own index, so a name mapped to the wrong key shows even where shapes agree.
    arrays = {name: np.full(shape, i, np.float32) for i, (name, shape) in enumerate(params)}
    state = convert_ademxapp(arrays, spec["deepres_model"], builder)
    with torch.device("meta"):
        model = create_model(spec["deepres_model"], num_classes=spec["num_classes"])
    assert set(mxnet_names(model).values()) == set(arrays)  # every name the real files hold is mapped, no other
    assert not model.load_state_dict(state, strict=True, assign=True).missing_keys
    index = {name: i for i, (name, _) in enumerate(params)}
    for key, name in mxnet_names(model).items():
        assert state[key].shape == arrays[name].shape and state[key].flatten()[0] == index[name], key
    # save_checkpoint wrote a Python 2 dict: a real file may hold the names in any order.
    shuffled = convert_ademxapp(dict(reversed(arrays.items())), spec["deepres_model"], builder)
    assert all(torch.equal(shuffled[k], state[k]) for k in state)


@pytest.mark.parametrize("recipe, model_name, lr, epochs, top1_err, top5_err", [
    ("imagenet/resnet38_a", "resnet38_a", 0.1, 90, "19.20", "4.73"),
    ("imagenet/resnet38_a1_from_a", "resnet38_a1", 0.01, 9, "19.54", "4.75"),
])
def test_ilsvrc_recipes_follow_ademxapps_readme(recipe, model_name, lr, epochs, top1_err, top5_err):
    """ademxapp README: batch 256, crop 224, linear lr, tested at shorter side 320, centre 320, no flip; Model A with
    --pool-top-infer-style caffe; the published errors in expect."""
    cfg = load_config(recipe)
    assert (cfg.model.name, cfg.optim.lr, cfg.train.epochs) == (model_name, lr, epochs)
    assert (cfg.data.batch_size, cfg.data.image_size, cfg.schedule.name) == (256, 224, "linear")
    assert cfg.expect.metric == "top1" and cfg.expect.accuracy == pytest.approx(100 - float(top1_err))
    assert f"{top1_err}% top-1 / {top5_err}% top-5 error" in cfg.expect.note
    assert parse_eval_preset(cfg.data.eval_preset, cfg.data.image_size) == (320, 320)
    cfg = replace(cfg, model=replace(cfg.model, num_classes=1000, in_chans=3))
    with torch.device("meta"):
        model = build_model(cfg, torch.device("meta"))
        sizes = [f.shape[-1] for f in model.forward_stages(torch.empty(1, 3, 225, 225))]
    # Model A's unpadded ceil-mode pools give the report's sizes on an odd side (padded pools: 113, 57, 29, 15, 8).
    assert sizes == ([112, 56, 28, 14, 7, 7] if model_name == "resnet38_a" else [113, 57, 29, 15, 8, 8])


def test_ilsvrc_eval_preset_resizes_the_shorter_side_to_320_and_keeps_its_centre():
    """ademxapp's test (iclass/ilsvrc.py _val_impl: ts.Scale(320) then ts.CenterCrop(320)): the whole shorter side
    stays in view, unlike a 320 resize of a centre crop."""
    pp = eval_preprocess(load_config("imagenet/resnet38_a").data, 3)
    rows = torch.linspace(0, 255, 480).round().to(torch.uint8)
    image = rows.view(1, 480, 1).expand(3, 480, 640).contiguous()  # brightness = row
    out = resize_and_crop(image, pp).float()
    assert out.shape == (3, 320, 320)
    assert out[:, 0].mean() < 2 and out[:, -1].mean() > 253
