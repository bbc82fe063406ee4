import logging

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
