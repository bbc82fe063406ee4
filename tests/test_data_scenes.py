"""`deepres data make fashion-mnist-scenes`: scenes of real Fashion-MNIST-format items and their masks."""
import numpy as np
import pytest
from data_helpers import idx_bytes
from PIL import Image

from deepres.cli import main
from deepres.data.scenes import SCENE_CLASSES, make_fashion_mnist_scenes


def write_items(root, train_labels, test_labels):
    """IDX files whose items are squares of one grey level (non-zero) on black, with the given labels."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        images = np.zeros((len(labels), 28, 28), np.uint8)
        images[:, 6:22, 6:22] = 200
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.array(labels, np.uint8)))


def load(path):
    return np.asarray(Image.open(path))


def test_scenes_are_written_in_pairs_from_their_own_split_and_repeat_exactly(tmp_path):
    write_items(tmp_path / "src", train_labels=[0, 1, 2, 3, 4] * 4, test_labels=[5, 6, 7, 8, 9])
    out = make_fashion_mnist_scenes(tmp_path / "src", tmp_path / "scenes", train=12, test=6, progress=False)
    assert (out / "classes.txt").read_text().splitlines() == SCENE_CLASSES and len(SCENE_CLASSES) == 11
    for split, count, allowed in (("train", 12, {0, 1, 2, 3, 4, 5}), ("test", 6, {0, 6, 7, 8, 9, 10})):
        stems = sorted(p.name for p in (out / split / "images").iterdir())
        assert stems == sorted(p.name for p in (out / split / "masks").iterdir()) == [f"{i:06d}.png" for i in
                                                                                      range(count)]
        for stem in stems:
            image, mask = load(out / split / "images" / stem), load(out / split / "masks" / stem)
            assert image.shape == mask.shape == (64, 64) and image.dtype == mask.dtype == np.uint8
            assert set(np.unique(mask)) <= allowed  # train items only in train scenes, test items in test
            assert np.array_equal(image > 0, mask > 0)  # the mask is exactly the items' non-zero pixels
            assert (mask > 0).sum() >= 16 * 16 * 0.75 ** 2 * 0.5  # at least one item, mostly visible
    again = make_fashion_mnist_scenes(tmp_path / "src", tmp_path / "again", train=12, test=6, progress=False)
    for path in sorted(out.rglob("*.png")):  # fixed seeds: the same files again
        assert path.read_bytes() == (again / path.relative_to(out)).read_bytes()


def test_items_of_several_classes_share_a_scene_on_a_small_canvas(tmp_path):
    # items of two classes on a canvas the size of one item (larger items are clipped at the border)
    write_items(tmp_path / "src", train_labels=[3, 7], test_labels=[1])
    out = make_fashion_mnist_scenes(tmp_path / "src", tmp_path / "scenes", train=40, test=1, size=28,
                                    progress=False)
    seen_both = False
    for i in range(40):
        mask = load(out / "train" / "masks" / f"{i:06d}.png")
        seen_both |= {4, 8} <= set(np.unique(mask))
    assert seen_both  # the earlier item keeps the pixels the later one leaves uncovered


def test_make_cli_refuses_a_folder_in_the_way(tmp_path, capsys):
    write_items(tmp_path / "src", train_labels=[0, 1], test_labels=[2])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    args = ["data", "make", "fashion-mnist-scenes", str(tmp_path / "taken"), "--source", str(tmp_path / "src"),
            "--train", "2", "--test", "1", "--quiet"]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    args[3] = str(tmp_path / "scenes")
    assert main(args) == 0 and "wrote 2 train and 1 test scenes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "make", "no-such-dataset", str(tmp_path / "x")])
