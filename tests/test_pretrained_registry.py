"""Published-weights registry: the records, and download / verify / cache / offline against a local HTTP server
(127.0.0.1, a free port; nothing here touches the internet)."""
import hashlib
import http.server
import threading
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
    assert list_pretrained("resnet50.*") == ["resnet50.a1_in1k", "resnet50.tv2_in1k", "resnet50.tv_in1k"]
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
        assert record.num_classes == 1000 and record.categories == "imagenet-1k", name
        assert 0.85 <= record.crop_pct <= 1.0, name
    tv2 = get_pretrained("resnet50.tv2_in1k")
    assert (tv2.preprocess.resize, tv2.preprocess.crop_size, tv2.top1) == (232, 224, 80.858)
    assert get_pretrained("resnet50.a1_in1k").preprocess.interpolation == "bicubic"


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
