"""The ImageNet-C folder reader on a tiny tree of real 224x224 JPEGs: <root>/<corruption>/<severity>/<wnid>/*.JPEG."""
import logging

import pytest
import torch
from PIL import Image

from deepres.data.corruptions.imagenet_c import imagenet_c_contents, imagenet_c_dataset

WNIDS = ("n01440764", "n01443537")
# The model's classes: a superset of the tree's, in its own order.
CLASSES = ["n99999999", "n01443537", "n01440764"]


def _write_tree(root, corruptions=("gaussian_noise", "fog"), severities=(1, 2), wnids=WNIDS):
    for c in corruptions:
        for s in severities:
            for i, wnid in enumerate(wnids):
                folder = root / c / str(s) / wnid
                folder.mkdir(parents=True)
                Image.new("RGB", (224, 224), (10 * s, 100 + i, 7)).save(folder / f"ILSVRC2012_val_0000000{i}.JPEG")
    return root


def test_reads_one_corruption_and_severity(tmp_path):
    root = _write_tree(tmp_path / "imagenet-c")
    dataset = imagenet_c_dataset(root, "fog", 2, CLASSES)
    assert len(dataset) == 2 and dataset.classes == CLASSES
    assert dataset.targets == [2, 1]  # n01440764 -> 2, n01443537 -> 1 in CLASSES
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 224, 224) and label == 2
    assert "/fog/2/n01440764/" in dataset.samples[0][0]


def test_contents_in_hendrycks_order_and_strays_reported(tmp_path, caplog):
    root = _write_tree(tmp_path / "imagenet-c")
    (root / "my_blur" / "1").mkdir(parents=True)  # no ImageNet-C corruption: reported, not used
    (root / "fog" / "6").mkdir()  # no severity
    (root / ".cache").mkdir()  # hidden: ignored silently
    with caplog.at_level(logging.WARNING, logger="deepres.data.corruptions.imagenet_c"):
        contents = imagenet_c_contents(root)
    assert contents == {"gaussian_noise": [1, 2], "fog": [1, 2]}
    assert list(contents) == ["gaussian_noise", "fog"]
    assert "my_blur" in caplog.text and "fog/6" in caplog.text and ".cache" not in caplog.text


def test_archive_named_folders_are_read(tmp_path):
    # <root>/noise/gaussian_noise/...: each Zenodo archive unpacked into a folder of its name.
    root = tmp_path / "imagenet-c"
    _write_tree(root / "noise", corruptions=("gaussian_noise",), severities=(3,))
    assert imagenet_c_contents(root) == {"gaussian_noise": [3]}
    assert len(imagenet_c_dataset(root, "gaussian_noise", 3, CLASSES)) == 2


def test_errors_name_what_is_missing_or_unknown(tmp_path):
    root = _write_tree(tmp_path / "imagenet-c")
    with pytest.raises(FileNotFoundError, match=r"fog/3 not found \(severities present: 1, 2\)"):
        imagenet_c_dataset(root, "fog", 3, CLASSES)
    with pytest.raises(FileNotFoundError, match="frost"):
        imagenet_c_dataset(root, "frost", 1, CLASSES)
    with pytest.raises(ValueError, match=r"fog/1/n01440764 is not among the model's 2 classes"):
        imagenet_c_dataset(root, "fog", 1, ["n01443537", "n02000000"])
    with pytest.raises(ValueError, match="severity"):
        imagenet_c_dataset(root, "fog", 0, CLASSES)
    with pytest.raises(ValueError, match="unknown ImageNet-C corruption 'fogg'"):
        imagenet_c_dataset(root, "fogg", 1, CLASSES)
    with pytest.raises(FileNotFoundError, match="no ImageNet-C corruption folders"):
        imagenet_c_contents(tmp_path / "imagenet-c" / "fog")
    with pytest.raises(FileNotFoundError, match="not found"):
        imagenet_c_contents(tmp_path / "missing")
