"""Published-weights registry: the records, and download / verify / cache / offline against a local HTTP server
(127.0.0.1, a free port; nothing here touches the internet)."""
import hashlib
import http.server
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from deepres import inference_model, init_model, list_pretrained
from deepres.core.errors import ChecksumError
from deepres.core.preprocess import Preprocess
from deepres.models import create_model, list_models
from deepres.models import pretrained as registry
from deepres.models.pretrained import (PretrainedWeights, WeightsUnavailableError, default_cache_dir,
                                       get_pretrained, load_pretrained_weights)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/served over HTTP; `.url(name)`, `.requests` (paths asked for)."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")  # never route 127.0.0.1 through a proxy from the environment
    monkeypatch.delenv("DEEPRES_OFFLINE", raising=False)
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.root, httpd.requests = root, handler.requests
    httpd.url = lambda name: f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _weights_file(root: Path, name: str = "resnet20_test-00000000.pth") -> tuple[Path, str, torch.nn.Module]:
    torch.manual_seed(3)
    model = create_model("resnet20").eval()
    path = root / name
    torch.save(model.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), model


def _register(monkeypatch, **fields) -> PretrainedWeights:
    defaults = dict(name="resnet20.test_local", license="test", top1=90.0, top5=99.0, accuracy_source="test",
                    categories="cifar-test", num_classes=10, preprocess=Preprocess(resize=32, crop_size=32))
    record = PretrainedWeights(**{**defaults, **fields})
    monkeypatch.setitem(registry._registry, record.name, record)
    return record


def test_download_verifies_caches_and_reuses(server, tmp_path, monkeypatch):
    source, digest, _ = _weights_file(server.root)
    record = _register(monkeypatch, url=server.url(source.name), sha256=digest)
    cache = tmp_path / "cache"
    path = load_pretrained_weights(record.name, cache_dir=cache)
    assert path == cache / source.name and path.read_bytes() == source.read_bytes()
    assert server.requests == [f"/{source.name}"]
    assert load_pretrained_weights(record.name, cache_dir=cache) == path  # cached: re-hashed, not fetched
    assert len(server.requests) == 1
    assert sorted(p.name for p in cache.iterdir()) == [source.name]  # no temp files left


def test_hash_prefix_from_the_file_name_is_checked(server, tmp_path, monkeypatch):
    source, digest, _ = _weights_file(server.root)
    named = source.rename(server.root / f"resnet20-{digest[:8]}.pth")
    record = _register(monkeypatch, url=server.url(named.name), sha256_prefix=digest[:8])
    assert load_pretrained_weights(record.name, cache_dir=tmp_path / "cache").read_bytes() == named.read_bytes()


def test_corrupted_download_is_an_error_and_leaves_no_file(server, tmp_path, monkeypatch):
    source, digest, _ = _weights_file(server.root)
    source.write_bytes(source.read_bytes()[:-10] + b"corrupted!")  # served bytes no longer match the record
    actual = hashlib.sha256(source.read_bytes()).hexdigest()
    record = _register(monkeypatch, url=server.url(source.name), sha256=digest)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as error:
        load_pretrained_weights(record.name, cache_dir=cache)
    message = str(error.value)
    assert record.url in message and digest in message and actual in message
    assert list(cache.iterdir()) == []


def test_bad_cached_file_is_reported_and_kept(server, tmp_path, monkeypatch):
    source, digest, _ = _weights_file(server.root)
    record = _register(monkeypatch, url=server.url(source.name), sha256=digest)
    cached = tmp_path / "cache" / source.name
    cached.parent.mkdir()
    cached.write_bytes(b"a file the user put here")
    with pytest.raises(ChecksumError, match="delete it"):
        load_pretrained_weights(record.name, cache_dir=cached.parent)
    assert cached.read_bytes() == b"a file the user put here" and server.requests == []


def test_offline_and_network_failures_name_url_and_cache_path(server, tmp_path, monkeypatch):
    source, digest, _ = _weights_file(server.root)
    record = _register(monkeypatch, url=server.url(source.name), sha256=digest)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPRES_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as error:
        load_pretrained_weights(record.name, cache_dir=cache)
    assert record.url in str(error.value) and str(cache / source.name) in str(error.value)
    assert server.requests == []
    monkeypatch.delenv("DEEPRES_OFFLINE")
    missing = _register(monkeypatch, name="resnet20.test_404", url=server.url("no_such.pth"), sha256=digest)
    with pytest.raises(WeightsUnavailableError, match="404") as error:
        load_pretrained_weights(missing.name, cache_dir=cache)
    assert str(cache / "no_such.pth") in str(error.value)
    closed_port = server.server_address[1]
    server.shutdown()
    server.server_close()
    down = _register(monkeypatch, name="resnet20.test_down", url=f"http://127.0.0.1:{closed_port}/x.pth",
                     sha256=digest)
    with pytest.raises(WeightsUnavailableError) as error:
        load_pretrained_weights(down.name, cache_dir=cache, timeout=5)
    assert down.url in str(error.value) and str(cache / "x.pth") in str(error.value)
    assert list(cache.iterdir()) == []


def test_init_model_downloads_into_deepres_cache(server, tmp_path, monkeypatch):
    source, digest, original = _weights_file(server.root)
    record = _register(monkeypatch, url=server.url(source.name), sha256=digest,
                       preprocess=Preprocess(resize=36, crop_size=32, interpolation="bicubic"))
    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path / "deepres-cache"))
    assert default_cache_dir() == tmp_path / "deepres-cache" / "checkpoints"
    model = init_model(record.name)
    assert (tmp_path / "deepres-cache" / "checkpoints" / source.name).is_file()
    assert (model.preprocess.resize, model.preprocess.crop_size, model.preprocess.interpolation) == (36, 32, "bicubic")
    assert model.source["name"] == record.name and model.class_names == [str(i) for i in range(10)]
    for name, value in original.state_dict().items():
        torch.testing.assert_close(model.model.state_dict()[name], value)
    # the same weights through the model registry, timm style; another num_classes gets a fresh classifier
    built = create_model(record.name, pretrained=True)
    torch.testing.assert_close(built.state_dict(), model.model.state_dict())
    fine_tune = create_model("resnet20", pretrained=True, num_classes=3)  # the arch's first registered weights
    assert fine_tune.fc.out_features == 3
    torch.testing.assert_close(fine_tune.conv1.weight, original.conv1.weight)
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert 0 <= inference_model(model, image)["pred_label"] < 10
    with pytest.raises(ValueError, match="published weights"):
        init_model(record.name, checkpoint=source)


def test_shipped_records_are_consistent():
    names = list_pretrained()
    assert {"resnet18.tv_in1k", "resnet50.tv_in1k", "resnet50.tv2_in1k", "resnet101.tv_in1k", "resnet152.tv_in1k",
            "wide_resnet50_2.tv_in1k", "resnext50_32x4d.tv_in1k", "resnet50.a1_in1k",
            "resnet50d.ra2_in1k"} <= set(names)
    assert list_pretrained("resnet50.*") == ["resnet50.a1_in1k", "resnet50.mmcls_in1k", "resnet50.mmcls_rsb_a1_in1k",
                                             "resnet50.mmcls_rsb_a2_in1k", "resnet50.mmcls_rsb_a3_in1k",
                                             "resnet50.tv2_in1k", "resnet50.tv_in1k"]
    for name in names:
        record = get_pretrained(name)
        assert record.arch in list_models(), name
        assert record.url.startswith("https://") and record.filename.endswith(".pth"), name
        # torch.hub convention: the file name ends in the first 8 hex digits of the sha256
        assert record.sha256 or record.filename.rsplit("-", 1)[1] == f"{record.sha256_prefix}.pth", name
        assert record.accuracy_source and record.license, name
        if record.categories == "voc-21":  # segmentation: mIoU and pixel accuracy, the whole resized image
            assert 50 < record.miou < record.pixel_acc < 100 and record.num_classes == 21, name
            assert record.top1 is None and record.preprocess.crop_size == 0, name
            continue
        assert 60 < record.top1 < record.top5 < 100 and record.miou is None, name
        if record.categories.startswith("cifar-"):  # mmcls's CIFAR models see the stored 32x32 image
            assert record.num_classes == int(record.categories.split("-")[1]), name
            assert (record.preprocess.resize, record.preprocess.crop_size) == (32, 32), name
            continue
        assert record.num_classes == 1000 and record.categories == "imagenet-1k", name
        assert 0.85 <= record.crop_pct <= 1.0, name
    tv2 = get_pretrained("resnet50.tv2_in1k")
    assert (tv2.preprocess.resize, tv2.preprocess.crop_size, tv2.top1) == (232, 224, 80.858)
    assert get_pretrained("resnet50.a1_in1k").preprocess.interpolation == "bicubic"


def test_mmcls_records_follow_mmpretrain_model_index():
    # mmpretrain's ResNet page: ResNet-18..152, ResNetV1c/V1d-50/101/152 (deepres's ResNet-C/D) and the rsb recipes
    expected = {f"resnet{d}{v}.mmcls_in1k" for d in (50, 101, 152) for v in ("", "c", "d")} | \
        {"resnet18.mmcls_in1k", "resnet34.mmcls_in1k"} | {f"resnet50.mmcls_rsb_{r}_in1k" for r in ("a1", "a2", "a3")}
    cifar = {f"cifar_resnet{d}.mmcls_cifar10" for d in (18, 34, 50, 101, 152)} | {"cifar_resnet50.mmcls_cifar100"}
    assert set(list_pretrained("*.mmcls*")) == expected | cifar
    r50 = get_pretrained("resnet50.mmcls_in1k")  # configs/resnet/metafile.yml, resnet50_8xb32_in1k
    assert r50.url == ("https://download.openmmlab.com/mmclassification/v0/resnet/"
                       "resnet50_8xb32_in1k_20210831-ea4938fc.pth")
    assert (r50.sha256_prefix, r50.top1, r50.top5) == ("ea4938fc", 76.55, 93.06)
    assert (get_pretrained("resnet50d.mmcls_in1k").top1, get_pretrained("resnet152c.mmcls_in1k").top5) == (77.54, 94.41)
    # configs/_base_/datasets/imagenet_bs32.py: ResizeEdge 256 (short), CenterCrop 224, bilinear; mean/std in 0-255
    mean_255, std_255 = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    for name in expected - {f"resnet50.mmcls_rsb_{r}_in1k" for r in ("a1", "a2", "a3")}:
        preprocess = get_pretrained(name).preprocess
        assert (preprocess.resize, preprocess.crop_size, preprocess.interpolation) == (256, 224, "bilinear"), name
        assert np.allclose(np.array(preprocess.mean) * 255, mean_255) and np.allclose(np.array(preprocess.std) * 255,
                                                                                      std_255), name
    rsb = get_pretrained("resnet50.mmcls_rsb_a1_in1k").preprocess  # imagenet_bs256_rsb_a12.py: 236 -> 224, bicubic
    assert (rsb.resize, rsb.crop_size, rsb.interpolation) == (236, 224, "bicubic")
    c100 = get_pretrained("cifar_resnet50.mmcls_cifar100")  # resnet50_8xb16_cifar100, cifar100_bs16.py
    assert (c100.sha256_prefix, c100.top1, c100.top5, c100.num_classes) == ("67b58a1b", 79.90, 95.19, 100)
    assert np.allclose(np.array(c100.preprocess.mean) * 255, (129.304, 124.070, 112.434))
    assert get_pretrained("cifar_resnet18.mmcls_cifar10").top1 == 94.82
    # torchvision's / timm's weights stay the default of their architectures
    assert registry.default_pretrained("resnet50").name == "resnet50.tv_in1k"
    assert registry.default_pretrained("resnet50d").name == "resnet50d.ra2_in1k"


def test_mmcls_record_loads_an_mmpretrain_checkpoint_by_name(server, tmp_path, monkeypatch):
    # a file with the exact keys of mmpretrain's ResNetV1d-50 (tests/data/mmpretrain/), served under the real
    # record's name: download, hash check, key mapping and a strict load into resnet50d
    rows = [line.split() for line in (Path(__file__).parent / "data" / "mmpretrain" / "resnetv1d50_state_dict.txt")
            .read_text().splitlines() if line and not line.startswith("#")]
    torch.manual_seed(0)
    state = {key: torch.tensor(5) if shape == "scalar" else torch.rand(*map(int, shape.split("x"))) + 0.5
             for key, shape in rows}
    file = server.root / "resnetv1d50_b32x8_imagenet_20210531-db14775a.pth"
    torch.save({"meta": {"mmcls_version": "0.13.0", "CLASSES": ("tench", "goldfish")}, "state_dict": state}, file)
    record = replace(get_pretrained("resnet50d.mmcls_in1k"), url=server.url(file.name),
                     sha256=hashlib.sha256(file.read_bytes()).hexdigest())
    monkeypatch.setitem(registry._registry, record.name, record)
    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path / "cache"))
    model = init_model("resnet50d.mmcls_in1k")
    loaded = model.model.state_dict()
    assert torch.equal(loaded["layer1.0.downsample.1.weight"], state["backbone.layer1.0.downsample.0.weight"])
    assert torch.equal(loaded["conv1.0.weight"], state["backbone.stem.0.conv.weight"])
    assert torch.equal(loaded["fc.bias"], state["head.fc.bias"])
    assert (model.preprocess.resize, model.preprocess.crop_size) == (256, 224)
    assert model.source["top1"] == 77.54


def test_record_validation_and_unknown_names():
    with pytest.raises(ValueError, match="arch.tag"):
        PretrainedWeights(name="resnet50", url="u", license="l", top1=1, top5=2, accuracy_source="s",
                          sha256_prefix="ab")
    with pytest.raises(ValueError, match="sha256"):
        PretrainedWeights(name="resnet50.x", url="u", license="l", top1=1, top5=2, accuracy_source="s")
    with pytest.raises(ValueError, match="hex"):
        PretrainedWeights(name="resnet50.x", url="u", license="l", top1=1, top5=2, accuracy_source="s",
                          sha256_prefix="XYZ")
    with pytest.raises(ValueError, match="top1 and top5"):
        PretrainedWeights(name="resnet50.x", url="u", license="l", top1=1, accuracy_source="s", sha256_prefix="ab")
    with pytest.raises(KeyError, match="resnet50.tv_in1k"):
        get_pretrained("resnet50.nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_pretrained(get_pretrained("resnet50.tv_in1k"))
