import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepres.models import create_model, load_pretrained


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def trained_resnet20():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    for m in model.modules():  # non-default BN statistics, so buffers are checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_round_trip_gives_same_logits(tmp_path, trained_resnet20, suffix):
    path = tmp_path / f"w{suffix}"
    state = trained_resnet20.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    fresh = create_model("resnet20", num_classes=10)
    load_pretrained(fresh, path)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(logits(fresh, x), logits(trained_resnet20, x))


@pytest.mark.parametrize("wrap", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, trained_resnet20, wrap):
    torch.save({wrap + k: v for k, v in trained_resnet20.state_dict().items()}, tmp_path / "w.pth")
    fresh = create_model("resnet20", num_classes=10)
    load_pretrained(fresh, tmp_path / "w.pth")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(logits(fresh, x), logits(trained_resnet20, x))


def mmcls_layout(state_dict, deep_stem=False):
    """Rename deepres keys the way an mmcls/mmpretrain ImageClassifier checkpoint stores them."""
    stem = {"conv1.0.": "stem.0.conv.", "conv1.1.": "stem.0.bn.", "conv1.3.": "stem.1.conv.",
            "conv1.4.": "stem.1.bn.", "conv1.6.": "stem.2.conv.", "bn1.": "stem.2.bn."}
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            out["head." + key] = value
            continue
        for old, new in stem.items():
            if deep_stem and key.startswith(old):
                key = new + key[len(old):]
                break
        out["backbone." + key] = value
    return {"meta": {"mmcls_version": "0.25.0"}, "state_dict": out}


@pytest.mark.parametrize("name, deep_stem", [("resnet18", False), ("resnet18d", True)])
def test_mmcls_checkpoint_layout(tmp_path, name, deep_stem):
    torch.manual_seed(0)
    source = create_model(name, num_classes=10)
    torch.save(mmcls_layout(source.state_dict(), deep_stem), tmp_path / "mmcls.pth")
    fresh = create_model(name, num_classes=10)
    load_pretrained(fresh, tmp_path / "mmcls.pth")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(logits(fresh, x), logits(source, x))


def mmpretrain_checkpoint(key_list: str) -> dict:
    """An mmpretrain checkpoint with the exact keys and shapes of tests/data/mmpretrain/<key_list>_state_dict.txt
    (written from mmpretrain's module code, not from deepres), random values."""
    path = Path(__file__).parent / "data" / "mmpretrain" / f"{key_list}_state_dict.txt"
    generator = torch.Generator().manual_seed(0)
    state = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            if shape == "scalar":  # BatchNorm's num_batches_tracked
                state[key] = torch.tensor(1000)
            else:  # positive values, so running_var is a valid variance
                state[key] = torch.rand(*map(int, shape.split("x")), generator=generator) + 0.5
    return {"meta": {"mmcls_version": "0.25.0"}, "state_dict": state}


# Where a few checkpoint tensors must land: the stem, stage 1's stride-1 shortcut, a strided shortcut, the head.
_MMPRETRAIN_PLACES = {
    "resnet50": {"backbone.conv1.weight": "conv1.weight", "backbone.bn1.running_var": "bn1.running_var",
                 "backbone.layer1.0.downsample.0.weight": "layer1.0.downsample.0.weight",
                 "backbone.layer1.0.downsample.1.running_mean": "layer1.0.downsample.1.running_mean",
                 "backbone.layer3.0.downsample.0.weight": "layer3.0.downsample.0.weight"},
    "resnetv1c50": {"backbone.stem.0.conv.weight": "conv1.0.weight", "backbone.stem.1.bn.bias": "conv1.4.bias",
                    "backbone.stem.2.conv.weight": "conv1.6.weight", "backbone.stem.2.bn.weight": "bn1.weight",
                    "backbone.layer1.0.downsample.0.weight": "layer1.0.downsample.0.weight",
                    "backbone.layer3.0.downsample.1.weight": "layer3.0.downsample.1.weight"},
    # ResNetV1d: no pool in layer1's stride-1 shortcut (conv .0, BN .1), a pool at .0 in layers 2-4
    "resnetv1d50": {"backbone.stem.0.bn.running_mean": "conv1.1.running_mean",
                    "backbone.layer1.0.downsample.0.weight": "layer1.0.downsample.1.weight",
                    "backbone.layer1.0.downsample.1.running_var": "layer1.0.downsample.2.running_var",
                    "backbone.layer2.0.downsample.1.weight": "layer2.0.downsample.1.weight",
                    "backbone.layer4.0.downsample.2.bias": "layer4.0.downsample.2.bias"},
    "resnet50_cifar": {"backbone.conv1.weight": "conv1.weight", "backbone.bn1.bias": "bn1.bias",
                       "backbone.layer1.0.downsample.0.weight": "layer1.0.downsample.0.weight"},
}


@pytest.mark.parametrize("arch, key_list", [("resnet50", "resnet50"), ("resnet50c", "resnetv1c50"),
                                            ("resnet50d", "resnetv1d50"), ("cifar_resnet50", "resnet50_cifar")])
def test_mmpretrain_checkpoint_keys_load_strict(tmp_path, arch, key_list):
    checkpoint = mmpretrain_checkpoint(key_list)
    state = checkpoint["state_dict"]
    torch.save(checkpoint, tmp_path / "mmpretrain.pth")
    model = create_model(arch, num_classes=state["head.fc.bias"].shape[0])
    assert len(state) == len(model.state_dict())
    report = load_pretrained(model, tmp_path / "mmpretrain.pth")  # strict: any unplaced key is an error
    assert report == {"dropped": [], "missing": [], "unexpected": []}
    loaded = model.state_dict()
    places = {**_MMPRETRAIN_PLACES[key_list], "head.fc.weight": "fc.weight", "head.fc.bias": "fc.bias",
              "backbone.layer4.2.conv3.weight": "layer4.2.conv3.weight",
              "backbone.layer2.3.bn2.bias": "layer2.3.bn2.bias"}
    for source, target in places.items():
        assert torch.equal(loaded[target], state[source]), f"{source} -> {target}"
    # every checkpoint tensor landed somewhere: the model's values are the checkpoint's, as a multiset of sums
    assert sorted(float(v.double().sum()) for v in loaded.values()) == \
        sorted(float(v.double().sum()) for v in state.values())


def test_mmpretrain_key_lists_are_what_their_script_writes(tmp_path):
    # the stored lists are the script's output, so a reviewer can check the rules in one place
    source = Path(__file__).parent / "data" / "mmpretrain"
    script = tmp_path / "make_key_lists.py"
    script.write_text((source / "make_key_lists.py").read_text())
    subprocess.run([sys.executable, str(script)], check=True)
    for written in sorted(tmp_path.glob("*_state_dict.txt")):
        assert written.read_text() == (source / written.name).read_text(), written.name
    assert len(list(tmp_path.glob("*_state_dict.txt"))) == len(list(source.glob("*_state_dict.txt"))) == 4


def test_mmpretrain_v1d_checkpoint_does_not_fit_resnet_c(tmp_path):
    # V1c and V1d differ only in the avg-pool shortcut: the keys of layers 2-4 say which one a checkpoint is
    torch.save(mmpretrain_checkpoint("resnetv1d50"), tmp_path / "v1d.pth")
    with pytest.raises(ValueError, match=r"v1d.pth does not fit[\s\S]*layer2\.0\.downsample\.2\.weight"):
        load_pretrained(create_model("resnet50c"), tmp_path / "v1d.pth")


def test_other_num_classes_drops_classifier(tmp_path, trained_resnet20, caplog):
    torch.save(trained_resnet20.state_dict(), tmp_path / "w.pth")
    fresh = create_model("resnet20", num_classes=4)
    fc_before = fresh.fc.weight.clone()
    with caplog.at_level(logging.WARNING):
        report = load_pretrained(fresh, tmp_path / "w.pth")
    assert report["dropped"] == ["fc.weight", "fc.bias"]
    assert "checkpoint has 10 classes, model has 4" in caplog.text
    assert torch.equal(fresh.fc.weight, fc_before)
    assert torch.equal(fresh.conv1.weight, trained_resnet20.conv1.weight)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh.eval().forward_features(x), trained_resnet20.eval().forward_features(x))


def test_rgb_weights_into_grayscale_stem_sum_channels(trained_resnet20):
    gray = create_model("resnet20", num_classes=10, in_chans=1)
    load_pretrained(gray, trained_resnet20.state_dict())
    x = torch.randn(2, 1, 16, 16)
    # Summing the RGB filters is exact for a gray image fed as three equal channels.
    assert torch.allclose(logits(gray, x), logits(trained_resnet20, x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_wrong_keys_are_listed(tmp_path, trained_resnet20):
    state = trained_resnet20.state_dict()
    state["layer9.extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError) as e:
        load_pretrained(create_model("resnet20", num_classes=10), tmp_path / "w.pth")
    message = str(e.value)
    assert "w.pth" in message
    assert "1 missing keys" in message and "layer1.0.conv1.weight" in message
    assert "1 unexpected keys" in message and "layer9.extra.weight" in message


def test_wrong_shapes_are_listed(trained_resnet20):
    state = trained_resnet20.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(ValueError, match=r"layer1.0.conv1.weight: checkpoint \(16, 16, 1, 1\) vs model \(16, 16, 3, 3\)"):
        load_pretrained(create_model("resnet20", num_classes=10), state)


def test_pickle_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(3), 4], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list.pth: not a state dict \(found a list\)"):
        load_pretrained(create_model("resnet20"), tmp_path / "list.pth")


def test_pickled_module_is_refused_without_unsafe_fallback(tmp_path):
    torch.save(create_model("resnet20"), tmp_path / "module.pth")  # whole module: needs code to unpickle
    with pytest.raises(ValueError, match="weights_only=True"):
        load_pretrained(create_model("resnet20"), tmp_path / "module.pth")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(create_model("resnet20"), tmp_path / "nope.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="bad.safetensors: not a valid safetensors file"):
        load_pretrained(create_model("resnet20"), tmp_path / "bad.safetensors")
    good = tmp_path / "trunc.pth"
    torch.save(create_model("resnet20").state_dict(), good)
    good.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="trunc.pth"):
        load_pretrained(create_model("resnet20"), good)


def test_zero_byte_checkpoint_gives_one_line_naming_the_file(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth") as info:
        load_pretrained(create_model("resnet20"), empty)
    assert "\n" not in str(info.value)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.safetensors: zero bytes"):
        load_pretrained(create_model("resnet20"), tmp_path / "empty.safetensors")
