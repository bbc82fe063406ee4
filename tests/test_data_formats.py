"""Dataset readers on fixtures in each format's real on-disk layout (plus the real Fashion-MNIST files)."""
import dataclasses
import gzip
import pickle
import shutil

import numpy as np
import pytest
import torch

from data_helpers import (FASHION_MNIST_DIR, idx_bytes, python2_pickle, write_cifar10, write_cifar100, write_image,
                          write_mnist)
from deepres.data import (FASHION_MNIST_CLASSES, DataConfig, build_datasets, build_eval_dataset, image_folder,
                          image_list, imagenet_val, list_image_files, load_image, make_synthetic, read_cifar10,
                          read_cifar100, read_class_names, read_fashion_mnist, read_idx, read_mnist)
from deepres.data.imagenet_classes import imagenet_synsets
from deepres.data.readers.formats import CIFAR10_CLASSES as CIFAR10_NAMES


# ------------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_pickles_round_trip(tmp_path):
    data, labels = write_cifar10(tmp_path, images_per_batch=4)
    train = read_cifar10(tmp_path, "train")
    assert len(train) == 20 and train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes[0] == "airplane" and train.num_classes == 10 and train.in_chans == 3
    np.testing.assert_array_equal(train.labels.numpy(), labels)
    # Rows are channel-major: pixel (c, y, x) of image n is data[n, c*1024 + y*32 + x].
    n, c, y, x = 13, 1, 5, 7
    assert train.images[n, c, y, x] == data[n, c * 1024 + y * 32 + x]
    test = read_cifar10(tmp_path / "cifar-10-batches-py", "test")  # the batches folder itself works too
    assert len(test) == 4
    assert len(read_cifar10(tmp_path, "val")) == 4  # CIFAR has no val split: val = test


def test_cifar100_fine_and_coarse_labels(tmp_path):
    batch = write_cifar100(tmp_path, num_images=6)
    fine = read_cifar100(tmp_path, "train")
    coarse = read_cifar100(tmp_path, "train", coarse=True)
    assert fine.num_classes == 100 and coarse.num_classes == 20 and coarse.classes[3] == "coarse3"
    assert fine.labels.tolist() == batch[b"fine_labels"]
    assert coarse.labels.tolist() == batch[b"coarse_labels"]
    np.testing.assert_array_equal(fine.images.reshape(6, -1).numpy(), batch[b"data"])


def test_cifar_missing_key_and_file_are_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        read_cifar10(tmp_path)
    write_cifar100(tmp_path / "c100")
    with pytest.raises(ValueError, match="split 'holdout'"):
        read_cifar100(tmp_path / "c100", "holdout")



class _Payload:
    """Unpickling this calls open(marker, "w"): any code in a data file would run the same way. (open pickles as
    io.open on Python 3.11, _io.open on 3.12.)"""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_cifar_pickle_with_code_is_refused_naming_file_and_global(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    marker = tmp_path / "payload-ran"
    batch.write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1: .*global (_?io|builtins)\.open") as info:
        read_cifar10(tmp_path)
    assert "\n" not in str(info.value) and str(batch) in str(info.value)
    assert not marker.exists()


def test_cifar_official_python2_batches_with_numpy_arrays_load(tmp_path):
    data, _ = write_cifar10(tmp_path, images_per_batch=3)
    directory = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        with open(directory / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        (directory / name).write_bytes(python2_pickle(batch))  # as Python 2 wrote them: numpy.core, BINSTRING
    train = read_cifar10(tmp_path)
    np.testing.assert_array_equal(train.images.reshape(15, -1).numpy(), data)
    assert train.classes == CIFAR10_NAMES

# --------------------------------------------------------------------------------------------- IDX files
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_round_trip(tmp_path, gz):
    arrays = write_mnist(tmp_path, num_train=12, num_test=5, gz=gz)
    train, test = read_mnist(tmp_path, "train"), read_mnist(tmp_path, "test")
    assert train.images.shape == (12, 1, 28, 28) and test.images.shape == (5, 1, 28, 28)
    assert train.in_chans == 1 and train.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(train.images[:, 0].numpy(), arrays["train"][0])
    np.testing.assert_array_equal(test.labels.numpy(), arrays["t10k"][1])


def test_idx_wrong_magic_and_truncation_are_named(tmp_path):
    write_mnist(tmp_path, gz=False)
    labels_path = tmp_path / "train-labels-idx1-ubyte"
    images_path = tmp_path / "train-images-idx3-ubyte"
    # A labels file where images are expected: magic 0x801 instead of 0x803.
    images_path.write_bytes(labels_path.read_bytes())
    with pytest.raises(ValueError, match=r"images-idx3-ubyte: IDX magic number is 0x00000801, expected 0x00000803"):
        read_mnist(tmp_path, "train")
    images_path.write_bytes(idx_bytes(np.zeros((12, 28, 28), np.uint8))[:-10])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: header says .* \(truncated"):
        read_mnist(tmp_path, "train")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01")[:-3])
    with pytest.raises(ValueError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_loads_60000_and_10000():
    train = read_fashion_mnist(FASHION_MNIST_DIR, "train")
    test = read_fashion_mnist(FASHION_MNIST_DIR, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.classes == FASHION_MNIST_CLASSES
    # Fashion-MNIST is balanced: 6000 / 1000 of each class.
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_default_root_is_the_debian_folder_for_fashion_mnist_only():
    train, _ = build_datasets(DataConfig(limit_train=100, limit_val=10))
    assert len(train) == 100
    with pytest.raises(ValueError, match="set data.root"):
        build_datasets(DataConfig(name="mnist"))


# --------------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_learnable():
    a = make_synthetic(200, num_classes=4, image_size=8, seed=1)
    b = make_synthetic(200, num_classes=4, image_size=8, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    val = make_synthetic(100, num_classes=4, image_size=8, seed=2)
    # Nearest class mean (from train) classifies val almost perfectly: the label signal is real.
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(4)])
    distances = ((val.images.float()[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (distances.argmin(1) == val.labels).float().mean() > 0.95


# ----------------------------------------------------------------------------------------- image folders
def test_imagenet_style_folder_sorted_classes_and_case_insensitive_extensions(tmp_path):
    root = tmp_path / "ILSVRC2012_train"
    write_image(root / "n01443537" / "n01443537_2.JPEG")
    write_image(root / "n01440764" / "n01440764_10.JPEG")
    write_image(root / "n01440764" / "n01440764_9.jpeg", fmt="JPEG")
    write_image(root / "n01440764" / "sub" / "deeper.Png", fmt="PNG")
    (root / "n01440764" / "notes.txt").write_text("not an image")
    write_image(root / "n01440764" / "._n01440764_1.JPEG")  # macOS shadow file: ignored
    dataset = image_folder(root, class_depth=1)
    assert dataset.classes == ["n01440764", "n01443537"]
    names = [p.split("ILSVRC2012_train/")[1] for p, _ in dataset.samples]
    assert names == ["n01440764/n01440764_10.JPEG", "n01440764/n01440764_9.jpeg", "n01440764/sub/deeper.Png",
                     "n01443537/n01443537_2.JPEG"]
    assert dataset.targets == [0, 0, 0, 1]
    image, label = dataset[3]
    assert image.shape == (3, 16, 20) and label == 1
    assert (image.permute(1, 2, 0).numpy() == np.asarray(load_image(dataset.samples[3][0]))).all()


def test_mini_places_nested_class_folders(tmp_path):
    root = tmp_path / "images" / "train"
    for name in ("b/bedroom", "a/airport_terminal", "a/abbey"):
        for i in range(2):
            write_image(root / name / f"{i:08d}.jpg", seed=i)
    for depth in (2, 0):  # explicit depth, and leaf detection
        dataset = image_folder(root, class_depth=depth)
        assert dataset.classes == ["a/abbey", "a/airport_terminal", "b/bedroom"]
        assert dataset.targets == [0, 0, 1, 1, 2, 2]
    (root / "c" / "canyon").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="c/canyon holds no image files"):
        image_folder(root, class_depth=2)


def test_folder_errors_name_the_problem(tmp_path):
    write_image(tmp_path / "flat" / "x.jpg")
    with pytest.raises(ValueError, match="holds images directly"):
        image_folder(tmp_path / "flat")
    write_image(tmp_path / "nest" / "cat" / "x.jpg")
    write_image(tmp_path / "nest" / "cat" / "kitten" / "y.jpg")
    with pytest.raises(ValueError, match="ambiguous class folders.*kitten"):
        image_folder(tmp_path / "nest")
    write_image(tmp_path / "stray" / "a" / "b" / "x.jpg")
    write_image(tmp_path / "stray" / "a" / "y.jpg")
    with pytest.raises(ValueError, match="y.jpg lies above the class folders"):
        image_folder(tmp_path / "stray", class_depth=2)
    with pytest.raises(FileNotFoundError, match="missing"):
        image_folder(tmp_path / "missing")



def test_symlink_loops_are_walked_once_and_links_elsewhere_still_followed(tmp_path):
    root = tmp_path / "images"
    for name in ("cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"):
        write_image(root / name)
    write_image(tmp_path / "elsewhere" / "emu" / "0.png")
    (root / "dog" / "loop").symlink_to(root)  # back to the top: a walk that follows links never ends
    (root / "cat" / "self").symlink_to(root / "cat")
    (root / "emu").symlink_to(tmp_path / "elsewhere" / "emu")  # a linked folder elsewhere is still read
    names = [p.relative_to(root).as_posix() for p in list_image_files(root)]
    assert names == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "emu/0.png"]
    for depth in (0, 1):
        dataset = image_folder(root, class_depth=depth)
        assert dataset.classes == ["cat", "dog", "emu"] and dataset.targets == [0, 0, 1, 1, 2], depth
    nested = tmp_path / "nested"
    write_image(nested / "a" / "x" / "0.png")
    (nested / "a" / "back").symlink_to(nested)  # class_depth 2 would see a/back/a as a class
    assert image_folder(nested, class_depth=2).classes == ["a/x"]

# ------------------------------------------------------------------------------------------ ImageNet val
SYNSETS_BY_ID = ["n02119789", "n01440764", "n01443537"]  # ILSVRC2012 ids 1, 2, 3 (devkit order, not sorted)
VAL_IDS = [1, 3, 2, 1]  # ground truth of ILSVRC2012_val_00000001..4
VAL_LABELS = [2, 1, 0, 2]  # the same synsets as indices into the sorted train classes


@pytest.fixture
def imagenet(tmp_path):
    for synset in SYNSETS_BY_ID:
        write_image(tmp_path / "train" / synset / f"{synset}_1.JPEG")
    for number in range(1, 5):
        write_image(tmp_path / "val" / f"ILSVRC2012_val_{number:08d}.JPEG", seed=number)
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in VAL_IDS))
    (tmp_path / "synsets.txt").write_text("n02119789 kit fox\nn01440764 tench\nn01443537 goldfish\n")
    rows = [f"ILSVRC2012_val_{n:08d},{SYNSETS_BY_ID[i - 1]} 1 2 30 40 {SYNSETS_BY_ID[i - 1]} 5 6 7 8"
            for n, i in zip((4, 2, 1, 3), [VAL_IDS[k - 1] for k in (4, 2, 1, 3)])]  # any row order
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_imagenet_val_from_ground_truth_txt_and_synset_map(imagenet):
    cfg = DataConfig(name="imagenet", root=str(imagenet), val_ground_truth="ILSVRC2012_validation_ground_truth.txt",
                     synset_map="synsets.txt")
    train, val = build_datasets(cfg)
    assert train.classes == sorted(SYNSETS_BY_ID) == val.classes
    assert val.targets == VAL_LABELS
    assert [p.rsplit("/", 1)[1] for p, _ in val.samples][0] == "ILSVRC2012_val_00000001.JPEG"


def test_imagenet_val_from_kaggle_loc_csv(imagenet):
    cfg = DataConfig(name="imagenet", root=str(imagenet), val_ground_truth="LOC_val_solution.csv")
    _, val = build_datasets(cfg)
    assert val.targets == VAL_LABELS


def test_imagenet_val_as_class_folders(imagenet):
    for path, label in zip(sorted((imagenet / "val").iterdir()), VAL_LABELS):
        target = imagenet / "val_folders" / sorted(SYNSETS_BY_ID)[label] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    classes = sorted(SYNSETS_BY_ID)
    val = imagenet_val(imagenet / "val_folders", classes)
    assert sorted(zip([p.rsplit("/", 1)[1] for p, _ in val.samples], val.targets)) == \
        [(f"ILSVRC2012_val_{n:08d}.JPEG", lab) for n, lab in zip(range(1, 5), VAL_LABELS)]


def test_imagenet_val_errors(imagenet):
    classes = sorted(SYNSETS_BY_ID)
    with pytest.raises(ValueError, match="val_ground_truth"):
        imagenet_val(imagenet / "val", classes)
    with pytest.raises(ValueError, match="synset_map"):
        imagenet_val(imagenet / "val", classes, ground_truth=imagenet / "ILSVRC2012_validation_ground_truth.txt")
    (imagenet / "gt_bad.txt").write_text("1\n2\n9\n1\n")
    with pytest.raises(ValueError, match=r"gt_bad.txt:3: expected an ILSVRC2012 id in 1..3"):
        imagenet_val(imagenet / "val", classes, ground_truth=imagenet / "gt_bad.txt",
                     synset_map=imagenet / "synsets.txt")
    with pytest.raises(ValueError, match="n02119789.*not a training class"):
        imagenet_val(imagenet / "val", classes[:2], ground_truth=imagenet / "LOC_val_solution.csv")


# -------------------------------------------------------------------------------------------- list files
def test_mini_places_list_files_with_categories(tmp_path):
    images = tmp_path / "images"
    write_image(images / "train" / "a" / "abbey" / "00000001.jpg", seed=1)
    write_image(images / "train" / "b" / "bedroom" / "00000001.jpg", seed=2)
    write_image(images / "val" / "00000001.jpg", seed=3)
    (tmp_path / "train.txt").write_text("train/a/abbey/00000001.jpg 0\n\ntrain/b/bedroom/00000001.jpg 1\n")
    (tmp_path / "val.txt").write_text("val/00000001.jpg 1\n")
    (tmp_path / "categories.txt").write_text("/a/abbey 0\n/b/bedroom 1\n")
    cfg = DataConfig(name="list", root=str(tmp_path), train_split="train.txt", val_split="val.txt",
                     image_root="images", class_names="categories.txt")
    train, val = build_datasets(cfg)
    assert train.classes == ["a/abbey", "b/bedroom"] and train.targets == [0, 1] and val.targets == [1]
    image, label = val[0]
    assert label == 1 and image.shape == (3, 16, 20)


def test_list_file_bad_lines_name_file_and_line(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg 0\nb.jpg x\n")
    with pytest.raises(ValueError, match=r"l.txt:2: label must be a non-negative integer, got 'x'"):
        image_list(tmp_path / "l.txt")
    (tmp_path / "m.txt").write_text("a.jpg 0\n\nb.jpg\n")
    with pytest.raises(ValueError, match=r"m.txt:3: expected path label"):
        image_list(tmp_path / "m.txt")
    (tmp_path / "n.txt").write_text("a.jpg 0\nb.jpg 5\n")
    with pytest.raises(ValueError, match=r"n.txt:2: label 5 out of range for 2 classes"):
        image_list(tmp_path / "n.txt", classes=["x", "y"])
    (tmp_path / "cats.txt").write_text("/a 0\n/b 2\n")
    with pytest.raises(ValueError, match="without gaps"):
        read_class_names(tmp_path / "cats.txt")


def test_food101_style_list_labels_from_folders(tmp_path):
    write_image(tmp_path / "images" / "apple_pie" / "1005649.jpg")
    write_image(tmp_path / "images" / "baklava" / "1006121.jpg")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "train.txt").write_text("baklava/1006121\napple_pie/1005649\n")
    dataset = image_list(tmp_path / "meta" / "train.txt", tmp_path / "images", suffix=".jpg")
    assert dataset.classes == ["apple_pie", "baklava"] and dataset.targets == [1, 0]
    assert dataset[0][0].shape == (3, 16, 20)


# ------------------------------------------------------------------------------- evaluation split alone
def test_eval_dataset_reads_imagenet_val_without_the_train_folder(imagenet):
    shutil.rmtree(imagenet / "train")
    cfg = DataConfig(name="imagenet", root=str(imagenet), val_ground_truth="ILSVRC2012_validation_ground_truth.txt",
                     synset_map="synsets.txt")
    with pytest.raises(FileNotFoundError, match="train"):
        build_datasets(cfg)  # training needs the train folder
    val = build_eval_dataset(cfg, classes=sorted(SYNSETS_BY_ID))  # the checkpoint's classes
    assert val.targets == VAL_LABELS and val.classes == sorted(SYNSETS_BY_ID)
    full = build_eval_dataset(cfg)  # no classes: the 1000 ImageNet-1k synsets shipped with deepres
    synsets = imagenet_synsets()
    assert full.classes == synsets
    assert full.targets == [synsets.index(SYNSETS_BY_ID[i - 1]) for i in VAL_IDS]


def test_eval_dataset_maps_a_val_folder_onto_the_models_classes(tmp_path):
    for cls, count in (("cat", 2), ("owl", 3)):
        for i in range(count):
            write_image(tmp_path / "val" / cls / f"{i}.png", seed=i)
    cfg = DataConfig(name="folder", root=str(tmp_path))
    val = build_eval_dataset(cfg, classes=["cat", "dog", "owl"])  # a subset of the classes, no train folder
    assert val.classes == ["cat", "dog", "owl"] and val.targets == [0, 0, 2, 2, 2]
    assert build_eval_dataset(dataclasses.replace(cfg, limit_val=3), classes=["cat", "dog", "owl"]).targets \
        == [0, 0, 2]
    with pytest.raises(ValueError, match=r"\['owl'\].*classes the model lacks"):
        build_eval_dataset(cfg, classes=["cat", "dog"])
    for i in range(2):  # with a train folder that lacks "owl", training refuses the pair
        write_image(tmp_path / "train" / "cat" / f"{i}.png", seed=i)
    with pytest.raises(ValueError, match="both splits need the same classes"):
        build_datasets(cfg)


def test_eval_dataset_reads_only_the_test_file_of_in_memory_formats(tmp_path):
    write_cifar10(tmp_path, images_per_batch=4)
    for batch in tmp_path.glob("cifar-10-batches-py/data_batch_*"):
        batch.unlink()
    cfg = DataConfig(name="cifar10", root=str(tmp_path), val_split="test")
    val = build_eval_dataset(cfg, classes=CIFAR10_NAMES)
    assert len(val) == 4 and val.classes == CIFAR10_NAMES
    with pytest.raises(ValueError, match="10 classes but the model was trained with 3"):
        build_eval_dataset(cfg, classes=CIFAR10_NAMES[:3])


def _rewrite_batch(path, **changes):
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch.update({key.encode(): value for key, value in changes.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.mark.parametrize("changes, message", [
    ({"data": [[300] * 3072] * 4}, r"data_batch_1: data values span 300..300, expected 0..255"),
    ({"data": [[-1] * 3072] * 4}, r"data_batch_1: data values span -1..-1, expected 0..255"),
    ({"data": [[0.5] * 3072] * 4}, r"data_batch_1: data holds float64 values"),
    ({"labels": [0, 1, 2, 10]}, r"data_batch_1: labels values span 0..10, expected 0..9"),
    ({"labels": [0, 1, [2], 3]}, r"data_batch_1: labels is not an array of numbers"),
])
def test_a_cifar_batch_with_values_out_of_range_names_the_file_and_key(tmp_path, changes, message):
    write_cifar10(tmp_path)
    _rewrite_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1", **changes)
    with pytest.raises(ValueError, match=message):
        read_cifar10(tmp_path, "train")


def test_a_list_file_cannot_name_images_outside_its_root_and_names_bad_text(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    for line in ("/etc/passwd 0", "../outside.jpg 0", "sub/../../x.jpg 1"):
        (tmp_path / "list.txt").write_text(f"a.jpg 0\n{line}\n")
        with pytest.raises(ValueError, match=r"list.txt:2: image path .* is not a relative path inside"):
            image_list(tmp_path / "list.txt")
    (tmp_path / "list.txt").write_bytes(b"a.jpg 0\n\xff\xfe.jpg 1\n")
    with pytest.raises(ValueError, match=r"list.txt: not a UTF-8 text file"):
        image_list(tmp_path / "list.txt")
    (tmp_path / "classes.txt").write_text("/a/abbey 0\n/b/barn \u00b3\n")  # a digit to isdigit(), not to int()
    with pytest.raises(ValueError, match=r"classes.txt:2: expected 'name index'"):
        read_class_names(tmp_path / "classes.txt")
