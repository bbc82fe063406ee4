"""`deepres data get`: the package-copy finder, checksums, downloads (from a local HTTP server, no network)."""
import argparse
import functools
import gzip
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from data_helpers import FASHION_MNIST_DIR, idx_bytes
from deepres.cli import main as deepres_main
from deepres.data import ChecksumError, DownloadError, find_local, get_dataset, read_mnist
from deepres.commands import data as data_cli
from deepres.data import fetch
from deepres.data.fetch import Source, check_file, download, md5sum

needs_debian = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/served on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _fake_mnist(folder) -> dict[str, str]:
    """Four tiny gzipped IDX files in MNIST's names; returns name -> md5."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 6, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 2, dtype=np.uint8)}
    md5s = {}
    for name, array in arrays.items():
        data = gzip.compress(idx_bytes(array))
        (folder / f"{name}.gz").write_bytes(data)
        md5s[f"{name}.gz"] = hashlib.md5(data).hexdigest()
    return md5s


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


# ----------------------------------------------------------------------------------------- package copy
@needs_debian
def test_finder_verifies_the_debian_files():
    assert find_local("fashion_mnist") == FASHION_MNIST_DIR
    assert get_dataset("fashion-mnist", progress=False) == FASHION_MNIST_DIR  # used in place, nothing copied
    source = fetch.DATASETS["fashion-mnist"]
    for name in source.files:
        # Debian re-gzipped the files, so its manifest (not the published md5) is what matches.
        assert check_file(FASHION_MNIST_DIR / name, source) in ("published md5", "package manifest md5")


@needs_debian
def test_get_copies_the_debian_files_and_keeps_them_on_rerun(tmp_path, capsys):
    dest = get_dataset("fashion-mnist", tmp_path / "fm", progress=False)
    for name in fetch.DATASETS["fashion-mnist"].files:
        assert md5sum(dest / name) == md5sum(FASHION_MNIST_DIR / name)
    stamp = (dest / "t10k-labels-idx1-ubyte.gz").stat().st_mtime_ns
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    assert data_cli.run(parser.parse_args(["get", "fashion-mnist", "--dest", str(dest), "--quiet"])) == 0
    assert (dest / "t10k-labels-idx1-ubyte.gz").stat().st_mtime_ns == stamp
    assert "train 60000 x 1x28x28, test 10000 x 1x28x28" in capsys.readouterr().out


def test_tampered_package_copy_is_refused(tmp_path, monkeypatch):
    md5s = _fake_mnist(tmp_path)
    manifest = tmp_path / "pkg.md5sums"
    manifest.write_text("".join(f"{m}  usr/share/datasets/x/{n}\n" for n, m in md5s.items()))
    source = Source(mirrors=(), files={n: "0" * 32 for n in md5s}, local_dirs=(str(tmp_path),),
                    package_manifest=str(manifest))
    monkeypatch.setitem(fetch.DATASETS, "mnist", source)
    assert find_local("mnist") == tmp_path  # matches the package manifest
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"changed")
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz: md5 .* matches neither"):
        find_local("mnist")


# -------------------------------------------------------------------------------------------- downloads
def test_download_verifies_md5_and_renames(server, tmp_path):
    folder, base = server
    (folder / "blob.gz").write_bytes(b"payload" * 1000)
    good = hashlib.md5(b"payload" * 1000).hexdigest()
    out = tmp_path / "out"
    assert download(base + "blob.gz", out / "blob.gz", good, progress=False).read_bytes() == b"payload" * 1000
    assert _leftovers(out) == []


def test_checksum_failure_deletes_the_partial_download_and_names_the_url(server, tmp_path):
    folder, base = server
    (folder / "blob.gz").write_bytes(b"corrupted in transit")
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match=f"checksum mismatch for {base}blob.gz"):
        download(base + "blob.gz", out / "blob.gz", "0" * 32, progress=False)
    assert list(out.iterdir()) == []


def test_get_downloads_from_the_next_mirror_and_protects_existing_files(server, tmp_path, monkeypatch):
    folder, base = server
    md5s = _fake_mnist(folder)
    # No package copy; the first mirror has nothing (404), the second serves the files.
    monkeypatch.setitem(fetch.DATASETS, "mnist", Source(mirrors=(base + "missing/", base), files=md5s))
    dest = get_dataset("mnist", tmp_path / "mnist", progress=False)
    assert len(read_mnist(dest, "train")) == 6 and len(read_mnist(dest, "test")) == 2
    assert _leftovers(dest) == []
    (dest / "train-labels-idx1-ubyte.gz").write_bytes(b"user's own file")
    with pytest.raises(ChecksumError, match="exists but fails its checksum; pass --force"):
        get_dataset("mnist", dest, progress=False)
    assert (dest / "train-labels-idx1-ubyte.gz").read_bytes() == b"user's own file"
    get_dataset("mnist", dest, force=True, progress=False)
    assert md5sum(dest / "train-labels-idx1-ubyte.gz") == md5s["train-labels-idx1-ubyte.gz"]


def test_all_mirrors_failing_is_reported_with_each_url(server, tmp_path, monkeypatch, capsys):
    folder, base = server
    md5s = _fake_mnist(folder)
    bad = {name: "f" * 32 for name in md5s}
    monkeypatch.setitem(fetch.DATASETS, "mnist", Source(mirrors=(base + "missing/", base), files=bad))
    with pytest.raises(DownloadError) as info:
        get_dataset("mnist", tmp_path / "m", progress=False)
    message = str(info.value)
    assert f"{base}missing/train-images-idx3-ubyte.gz: HTTP Error 404" in message
    assert f"checksum mismatch for {base}train-images-idx3-ubyte.gz" in message
    assert _leftovers(tmp_path / "m") == [] and not (tmp_path / "m" / "train-images-idx3-ubyte.gz").exists()
    # a failed download is a failed run (exit 1), not a user error (2)
    assert deepres_main(["data", "get", "mnist", "--dest", str(tmp_path / "m"), "--quiet"]) == 1
    assert "deepres data: error: could not get train-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_unknown_dataset_name():
    with pytest.raises(KeyError, match="knows fashion-mnist, mnist"):
        get_dataset("cifar10")
