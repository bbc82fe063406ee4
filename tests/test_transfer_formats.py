"""The six transfer-learning formats (food101, cub200, stanford_cars, flowers102, pets, aircraft), each written in its
official layout (text lists, MATLAB files via scipy.io.savemat, 16x16 JPEGs) and read through build_datasets /
build_eval_dataset: sizes, labels, class names, split membership, and the errors for missing files and lines naming
classes the class list lacks."""
import dataclasses
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from data_helpers import write_image
from deepres.cli import main as cli_main
from deepres.core.config import load_config
from deepres.data import DataConfig, build_datasets, build_eval_dataset, build_loaders, format_shape, get_format
from deepres.data.readers.transfer import FLOWERS102_CLASSES
from deepres.models.pretrained import get_pretrained
from deepres.tasks.build import model_shape


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _images(paths) -> None:
    for seed, path in enumerate(paths):
        write_image(path, size=(16, 16), seed=seed)


def _stems(dataset) -> list[str]:
    return [Path(path).stem for path, _ in dataset.samples]


def _struct(rows: list[dict]) -> np.ndarray:
    """A MATLAB 1xN struct array as scipy.io.savemat writes it (fields of object dtype)."""
    array = np.zeros((1, len(rows)), dtype=[(key, "O") for key in rows[0]])
    for i, row in enumerate(rows):
        for key, value in row.items():
            array[0, i][key] = value
    return array


def _cells(strings) -> np.ndarray:
    cells = np.empty((1, len(strings)), dtype=object)
    cells[0, :] = list(strings)
    return cells


# --------------------------------------------------------------------------------------------- writers
def write_food101(root: Path) -> None:
    classes = ["apple_pie", "baby_back_ribs", "bibimbap"]
    _write_lines(root / "meta" / "classes.txt", classes)
    _write_lines(root / "meta" / "labels.txt", ["Apple pie", "Baby back ribs", "Bibimbap"])
    train = ["apple_pie/1005649", "apple_pie/1011328", "baby_back_ribs/1005293", "bibimbap/1014775"]
    test = ["apple_pie/1011069", "bibimbap/1017081"]
    _write_lines(root / "meta" / "train.txt", train)
    _write_lines(root / "meta" / "test.txt", test)
    _images(root / "images" / f"{line}.jpg" for line in train + test)


def write_cub200(root: Path) -> None:
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    _write_lines(root / "classes.txt", [f"{i} {name}" for i, name in enumerate(names, 1)])
    images = [(1, 1, 0), (2, 1, 1), (3, 2, 1), (4, 3, 0), (5, 3, 1)]  # (id, label, is_training_image)
    paths = {i: f"{names[label - 1]}/{names[label - 1][4:]}_{i:04d}.jpg" for i, label, _ in images}
    _write_lines(root / "images.txt", [f"{i} {paths[i]}" for i, _, _ in images])
    _write_lines(root / "image_class_labels.txt", [f"{i} {label}" for i, label, _ in images])
    _write_lines(root / "train_test_split.txt", [f"{i} {flag}" for i, _, flag in images])
    _images(root / "images" / path for path in paths.values())


CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def _car(fname: str, label: int) -> dict:
    return dict(bbox_x1=np.uint8(1), bbox_y1=np.uint8(2), bbox_x2=np.uint8(14), bbox_y2=np.uint8(15),
                **{"class": np.uint8(label)}, fname=fname)


def write_stanford_cars(root: Path, test_in_devkit: bool = False) -> None:
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": _cells(CAR_NAMES)})
    train = [_car("00001.jpg", 3), _car("00002.jpg", 1), _car("00003.jpg", 2), _car("00004.jpg", 3)]
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _struct(train)})
    test = [_car("00001.jpg", 2), _car("00002.jpg", 3)]
    test_dir = root / "devkit" if test_in_devkit else root
    savemat(test_dir / "cars_test_annos_withlabels.mat", {"annotations": _struct(test)})
    _images(root / "cars_train" / row["fname"] for row in train)
    _images(root / "cars_test" / row["fname"] for row in test)


def write_flowers102(root: Path) -> None:
    labels = np.array([[77, 77, 1, 102, 1, 102, 50, 50]], dtype=np.uint8)  # image i has labels[i - 1]
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "imagelabels.mat", {"labels": labels})
    setid = {"trnid": np.array([[3, 1]], dtype=np.uint16), "valid": np.array([[4, 2]], dtype=np.uint16),
             "tstid": np.array([[8, 5, 6, 7]], dtype=np.uint16)}
    savemat(root / "setid.mat", setid)
    _images(root / "jpg" / f"image_{i:05d}.jpg" for i in range(1, 9))


PET_LINES = {
    "trainval": ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids", "Abyssinian_100 1 1 1",
                 "american_bulldog_10 2 2 1", "Abyssinian_101 1 1 1", "Bengal_1 3 1 2"],
    "test": ["#Image CLASS-ID SPECIES BREED ID", "Abyssinian_1 1 1 1", "Bengal_10 3 1 2"],
}


def write_pets(root: Path) -> None:
    for split, lines in PET_LINES.items():
        _write_lines(root / "annotations" / f"{split}.txt", lines)
    _images(root / "images" / f"{line.split()[0]}.jpg" for lines in PET_LINES.values() for line in lines
            if not line.startswith("#"))


AIRCRAFT_SPLITS = {"train": ["1025794 707-320", "1340192 Cessna 172"], "val": ["0056978 A300B4", "1019011 Cessna 172"],
                   "test": ["1514522 707-320", "0062765 Cessna 172", "1553001 A300B4"]}


def write_aircraft(root: Path) -> None:
    splits = dict(AIRCRAFT_SPLITS, trainval=AIRCRAFT_SPLITS["train"] + AIRCRAFT_SPLITS["val"])
    _write_lines(root / "data" / "variants.txt", ["707-320", "A300B4", "Cessna 172"])
    for split, lines in splits.items():
        _write_lines(root / "data" / f"images_variant_{split}.txt", lines)
    _images(root / "data" / "images" / f"{line.split()[0]}.jpg" for lines in AIRCRAFT_SPLITS.values() for line in lines)


WRITERS = {"food101": write_food101, "cub200": write_cub200, "stanford_cars": write_stanford_cars,
           "flowers102": write_flowers102, "pets": write_pets, "aircraft": write_aircraft}


def _read(tmp_path, name, **keys):
    WRITERS[name](tmp_path / name)
    return build_datasets(DataConfig(name=name, root=str(tmp_path / name), **keys))


# ------------------------------------------------------------------------------------------------ reading
def test_food101_reads_meta_lists_with_classes_txt(tmp_path):
    train, test = _read(tmp_path, "food101")  # val_split "val" reads meta/test.txt
    assert train.classes == test.classes == ["apple_pie", "baby_back_ribs", "bibimbap"]
    assert [(Path(p).relative_to(tmp_path / "food101").as_posix(), y) for p, y in train.samples] == [
        ("images/apple_pie/1005649.jpg", 0), ("images/apple_pie/1011328.jpg", 0),
        ("images/baby_back_ribs/1005293.jpg", 1), ("images/bibimbap/1014775.jpg", 2)]
    assert _stems(test) == ["1011069", "1017081"] and test.targets == [0, 2]
    image, label = train[3]
    assert image.shape == (3, 16, 16) and label == 2


def test_cub200_splits_by_train_test_split_txt(tmp_path):
    train, test = _read(tmp_path, "cub200", val_split="test")
    assert train.classes == test.classes == ["001.Black_footed_Albatross", "002.Laysan_Albatross",
                                             "003.Sooty_Albatross"]
    assert _stems(train) == ["Black_footed_Albatross_0002", "Laysan_Albatross_0003", "Sooty_Albatross_0005"]
    assert train.targets == [0, 1, 2]
    assert _stems(test) == ["Black_footed_Albatross_0001", "Sooty_Albatross_0004"] and test.targets == [0, 2]
    assert train[1][0].shape == (3, 16, 16)


@pytest.mark.parametrize("test_in_devkit", [False, True])
def test_stanford_cars_reads_the_devkit_mat_files(tmp_path, test_in_devkit):
    write_stanford_cars(tmp_path, test_in_devkit)
    train, test = build_datasets(DataConfig(name="stanford_cars", root=str(tmp_path)))
    assert train.classes == test.classes == CAR_NAMES
    assert [Path(p).relative_to(tmp_path).as_posix() for p, _ in train.samples] == [
        f"cars_train/0000{i}.jpg" for i in range(1, 5)]
    assert train.targets == [2, 0, 1, 2]
    assert [Path(p).parent.name for p, _ in test.samples] == ["cars_test"] * 2 and test.targets == [1, 2]
    assert test[0][0].shape == (3, 16, 16)


def test_stanford_cars_reads_a_single_annotation_squeezed_to_a_scalar_struct(tmp_path):
    write_stanford_cars(tmp_path)
    savemat(tmp_path / "cars_test_annos_withlabels.mat", {"annotations": _struct([_car("00002.jpg", 1)])})
    assert build_eval_dataset(DataConfig(name="stanford_cars", root=str(tmp_path))).samples == [
        (str(tmp_path / "cars_test" / "00002.jpg"), 0)]


@pytest.mark.parametrize("split, ids", [("train", [1, 3]), ("val", [2, 4]), ("test", [5, 6, 7, 8]),
                                        ("trainval", [1, 2, 3, 4])])
def test_flowers102_splits_from_setid_mat(tmp_path, split, ids):
    write_flowers102(tmp_path)
    cfg = DataConfig(name="flowers102", root=str(tmp_path), val_split=split)
    dataset = build_eval_dataset(cfg)
    assert _stems(dataset) == [f"image_{i:05d}" for i in ids]
    labels = [77, 77, 1, 102, 1, 102, 50, 50]
    assert dataset.targets == [labels[i - 1] - 1 for i in ids]
    assert dataset.classes == list(FLOWERS102_CLASSES) and len(dataset.classes) == 102
    assert dataset.classes[0] == "pink primrose" and dataset.classes[101] == "blackberry lily"


def test_pets_class_names_come_from_image_names_in_class_id_order(tmp_path):
    train, test = _read(tmp_path, "pets")  # train_split "train" reads trainval.txt, val_split "val" test.txt
    assert train.classes == test.classes == ["Abyssinian", "american_bulldog", "Bengal"]
    assert _stems(train) == ["Abyssinian_100", "american_bulldog_10", "Abyssinian_101", "Bengal_1"]
    assert train.targets == [0, 1, 0, 2]
    assert _stems(test) == ["Abyssinian_1", "Bengal_10"] and test.targets == [0, 2]


def test_aircraft_variants_may_hold_spaces(tmp_path):
    train, val = _read(tmp_path, "aircraft")
    assert train.classes == val.classes == ["707-320", "A300B4", "Cessna 172"]
    assert _stems(train) == ["1025794", "1340192"] and train.targets == [0, 2]
    assert _stems(val) == ["0056978", "1019011"] and val.targets == [1, 2]
    trainval, test = build_datasets(DataConfig(name="aircraft", root=str(tmp_path / "aircraft"),
                                               train_split="trainval", val_split="test"))
    assert len(trainval) == 4 and test.targets == [0, 2, 1]


@pytest.mark.parametrize("name", list(WRITERS))
def test_the_eval_split_needs_no_model_and_takes_a_models_class_order(tmp_path, name):
    WRITERS[name](tmp_path / name)
    cfg = DataConfig(name=name, root=str(tmp_path / name), val_split="test")
    _, test = build_datasets(cfg)
    alone = build_eval_dataset(cfg)  # the format's eval_classes: no train split read
    assert alone.classes == test.classes and alone.samples == test.samples
    reordered = list(reversed(test.classes)) + ["extra class"]
    relabelled = build_eval_dataset(dataclasses.replace(cfg, limit_val=2), classes=reordered)
    assert relabelled.classes == reordered
    assert [reordered[y] for y in relabelled.targets] == [test.classes[y] for y in test.targets[:2]]
    with pytest.raises(ValueError, match=rf"data.name={name} test: \d+ classes are not among the model's 1"):
        build_eval_dataset(cfg, classes=["not a class"])


def test_records_fix_the_published_class_counts():
    counts = {"food101": 101, "cub200": 200, "stanford_cars": 196, "flowers102": 102, "pets": 37, "aircraft": 100}
    for name, count in counts.items():
        fmt = get_format(name)
        assert (fmt.task, fmt.in_chans, fmt.packable, fmt.in_memory) == ("classification", 3, False, False)
        assert format_shape(DataConfig(name=name))[:2] == (count, 3)
    assert format_shape(DataConfig(name="flowers102"))[2] == list(FLOWERS102_CLASSES)


def test_a_format_batches_through_the_normal_loaders(tmp_path):
    write_cub200(tmp_path)
    cfg = DataConfig(name="cub200", root=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2, workers=0)
    train, val, info = build_loaders(cfg, "cpu")
    images, labels = next(iter(train))[:2]
    assert images.shape == (2, 3, 8, 8) and images.dtype.is_floating_point and labels.shape == (2,)
    assert (info.num_classes, info.train_size, info.eval_size) == (3, 3, 2)
    assert sum(len(batch[1]) for batch in val) == 2


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name, missing, layout", [
    ("food101", "meta/classes.txt", "Food-101 layout"),
    ("food101", "meta/train.txt", "Food-101 layout"),
    ("cub200", "train_test_split.txt", "CUB-200-2011 layout"),
    ("stanford_cars", "devkit/cars_meta.mat", "Stanford Cars layout"),
    ("stanford_cars", "cars_train", "Stanford Cars layout"),
    ("flowers102", "setid.mat", "Oxford 102 Flowers layout"),
    ("pets", "annotations/test.txt", "Oxford-IIIT Pet layout"),
    ("aircraft", "data/variants.txt", "FGVC-Aircraft layout"),
])
def test_a_missing_file_names_the_path_and_the_layout(tmp_path, name, missing, layout):
    WRITERS[name](tmp_path)
    target = tmp_path / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{target} not found; the {layout} is "):
        build_datasets(DataConfig(name=name, root=str(tmp_path)))


def test_stanford_cars_without_labelled_test_annotations_says_where_it_looked(tmp_path):
    write_stanford_cars(tmp_path)
    (tmp_path / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither .*cars_test_annos_withlabels.mat nor .*devkit/cars_test_"
                                                r"annos_withlabels.mat found \(devkit/cars_test_annos.mat has no"):
        build_eval_dataset(DataConfig(name="stanford_cars", root=str(tmp_path)))


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


def _replace_mat(path: Path, key: str, value) -> None:
    savemat(path, {key: value})


@pytest.mark.parametrize("name, corrupt, message", [
    ("food101", lambda r: _append(r / "meta/test.txt", "beignets/2042"),
     r"meta/test.txt:3: 'beignets/2042' does not start with a class of .*meta/classes.txt"),
    ("cub200", lambda r: (_append(r / "images.txt", "6 x/y.jpg"), _append(r / "train_test_split.txt", "6 0"),
                          _append(r / "image_class_labels.txt", "6 4")),
     r"image_class_labels.txt:6: label '4' is not a class number 1..3"),
    ("cub200", lambda r: _append(r / "images.txt", "6 x/y.jpg"),
     r"image_class_labels.txt: no entry for image id 6 \(.*images.txt:6\)"),
    ("stanford_cars", lambda r: _replace_mat(r / "cars_test_annos_withlabels.mat", "annotations",
                                             _struct([_car("00001.jpg", 2), _car("00002.jpg", 4)])),
     r"cars_test_annos_withlabels.mat: annotation 2 \(00002.jpg\) has class 4, not a class number 1..3"),
    ("stanford_cars", lambda r: _replace_mat(r / "cars_test_annos_withlabels.mat", "annotations",
                                             _struct([{"fname": "00001.jpg"}])),
     r"annotations need the fields class and fname, found fname"),
    ("flowers102", lambda r: _replace_mat(r / "imagelabels.mat", "labels", np.array([[1, 2, 3, 4, 5, 6, 7, 103]])),
     r"imagelabels.mat: labels\[8\] is 103, not a class number 1..102"),
    ("flowers102", lambda r: _replace_mat(r / "imagelabels.mat", "labels", np.array([[1, 2, 3, 4, 5, 6, 7]])),
     r"setid.mat: image 8 of tstid has no label in .*imagelabels.mat \(7 images\)"),
    ("pets", lambda r: _append(r / "annotations/test.txt", "Birman_3 4 1 3"),
     r"test.txt:4: Birman_3 has class id 4, which in .*trainval.txt is not listed"),
    ("pets", lambda r: _append(r / "annotations/test.txt", "Birman_3 3 1 3"),
     r"test.txt:4: Birman_3 has class id 3, which in .*trainval.txt is 'Bengal'"),
    ("aircraft", lambda r: _append(r / "data/images_variant_test.txt", "0123456 Boeing 717"),
     r"images_variant_test.txt:4: variant 'Boeing 717' is not in .*data/variants.txt"),
])
def test_a_line_naming_an_unknown_class_is_an_error_naming_file_and_line(tmp_path, name, corrupt, message):
    WRITERS[name](tmp_path)
    corrupt(tmp_path)
    with pytest.raises(ValueError, match=message):
        build_datasets(DataConfig(name=name, root=str(tmp_path), val_split="test"))


@pytest.mark.parametrize("name, split, accepted", [
    ("food101", "trainval", "train, val, test"), ("pets", "valid", "train, trainval, val, test"),
    ("flowers102", "tstid", "train, val, test, trainval"),
])
def test_an_unknown_split_word_lists_the_accepted_ones(tmp_path, name, split, accepted):
    WRITERS[name](tmp_path)
    with pytest.raises(ValueError, match=rf"{name} has no split '{split}': data.train_split / data.val_split take "
                                         rf"{accepted}$"):
        build_datasets(DataConfig(name=name, root=str(tmp_path), train_split=split))


# ------------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("name, classes", [("food101", 101), ("cub200", 200), ("stanford_cars", 196),
                                           ("flowers102", 102), ("pets", 37), ("aircraft", 100)])
def test_fine_tuning_recipes_start_from_published_resnet50_weights_with_a_new_head(name, classes):
    cfg = load_config(f"{name}/resnet50_ft")
    assert cfg.data.name == name and cfg.data.val_split == "test"
    record = get_pretrained(cfg.model.pretrained)
    assert record.arch == cfg.model.name == "resnet50" and record.num_classes == 1000
    assert model_shape(cfg) == (classes, 3)  # the format fixes the head; the 1000-way fc is left out when loading
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_iters > 0 and cfg.train.epochs == 100
    assert cfg.expect.accuracy > 0 and "Published" in cfg.expect.note


# ------------------------------------------------------------------------------- damaged and hostile files
def _flowers_labels(root: Path, labels: np.ndarray) -> None:
    savemat(root / "imagelabels.mat", {"labels": labels})


@pytest.mark.parametrize("value, shown", [(np.inf, "inf, not a whole number"), (-np.inf, "-inf, not a whole number"),
                                          (np.nan, "nan, not a whole number"), (2.5, "2.5, not a whole number"),
                                          (1e300, "1e[+]300, too large")])
def test_a_label_that_is_no_whole_number_names_file_and_field(tmp_path, value, shown):
    write_flowers102(tmp_path)
    _flowers_labels(tmp_path, np.array([[77, 77, value, 102, 1, 102, 50, 50]], dtype=np.float64))
    with pytest.raises(ValueError, match=rf"imagelabels.mat: labels\[3\] is {shown}"):
        build_datasets(DataConfig(name="flowers102", root=str(tmp_path)))


def test_a_cars_class_of_inf_names_file_and_field(tmp_path):
    write_stanford_cars(tmp_path)
    savemat(tmp_path / "cars_test_annos_withlabels.mat",
            {"annotations": _struct([_car("00001.jpg", 2), {**_car("00002.jpg", 1), "class": np.inf}])})
    with pytest.raises(ValueError, match=r"cars_test_annos_withlabels.mat: annotations.class\[2\] is inf"):
        build_eval_dataset(DataConfig(name="stanford_cars", root=str(tmp_path)))


def _hdf5_mat_v73() -> bytes:
    """What MATLAB's save -v7.3 writes first: a 512-byte MATLAB preamble (text, version 0x0200, 'IM'), then an
    HDF5 superblock. h5py is not installed here, so the HDF5 part is its 8-byte signature alone."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  6 10:00:00 2025 HDF5 schema 1.00 ."
    preamble = text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"
    return preamble.ljust(512, b"\0") + b"\x89HDF\r\n\x1a\n" + b"\0" * 88


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])


@pytest.mark.parametrize("name, file, damage, message", [
    ("flowers102", "imagelabels.mat", _truncated, "imagelabels.mat: "),
    ("flowers102", "setid.mat", lambda p: p.write_bytes(_hdf5_mat_v73()), r"setid.mat: a MATLAB v7.3 \(HDF5\) file"),
    ("stanford_cars", "cars_test_annos_withlabels.mat", _truncated, "cars_test_annos_withlabels.mat: "),
    ("stanford_cars", "devkit/cars_meta.mat", lambda p: p.write_bytes(_hdf5_mat_v73()),
     r"cars_meta.mat: a MATLAB v7.3"),
    ("stanford_cars", "devkit/cars_meta.mat", lambda p: p.write_bytes(b"MATLAB 5.0 MAT-file"), "cars_meta.mat: "),
])
def test_a_damaged_mat_file_is_one_value_error_naming_it(tmp_path, name, file, damage, message):
    WRITERS[name](tmp_path)
    damage(tmp_path / file)
    with pytest.raises(ValueError, match=message):
        build_eval_dataset(DataConfig(name=name, root=str(tmp_path)))


def test_every_three_byte_corruption_of_a_compressed_mat_file_is_a_value_error(tmp_path):
    """scipy's reader raised zlib.error, TypeError, OSError, IndexError, ... on these (seeded: the same 300 files
    every run)."""
    write_stanford_cars(tmp_path)
    path = tmp_path / "cars_test_annos_withlabels.mat"
    savemat(path, {"annotations": _struct([_car("00001.jpg", 2), _car("00002.jpg", 3)])}, do_compression=True)
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        data = bytearray(good)
        for position in rng.choice(np.arange(128, len(good)), size=3, replace=False):  # the variables, not the header
            data[position] = (data[position] + int(rng.integers(1, 256))) % 256
        path.write_bytes(bytes(data))
        try:
            build_eval_dataset(DataConfig(name="stanford_cars", root=str(tmp_path)))
            outcomes.add("read")
        except ValueError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_a_corrupted_type_byte_does_not_crash_the_process(tmp_path):
    """One byte changed in an uncompressed v5 file (the type of a small data element) made scipy's compiled reader
    end the process with a segmentation fault; run in a child so a crash fails this test, not the session."""
    path = tmp_path / "labels.mat"
    savemat(path, {"annotations": _struct([_car("00001.jpg", 2), _car("00002.jpg", 3)])})
    data = bytearray(path.read_bytes())
    small = data.index(struct.pack("<HH", 2, 1), 128)  # the first small uint8 element: bbox_x1 of annotation 1
    data[small + 1] = 0xAD  # its type becomes 0xAD02
    path.write_bytes(bytes(data))
    script = ("import sys\nfrom deepres.data.readers.matfiles import load_mat\n"
              "try:\n    load_mat(sys.argv[1], squeeze_me=True)\nexcept ValueError as e:\n    print(e)\n")
    child = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-500:]
    assert child.stdout.startswith(f"{path}: corrupt MATLAB v5 data")


@pytest.mark.parametrize("fname", ["/etc/shadow", "../../outside.jpg", "sub/../../outside.jpg"])
def test_a_cars_fname_outside_the_image_folder_is_refused(tmp_path, fname):
    write_stanford_cars(tmp_path)
    savemat(tmp_path / "cars_test_annos_withlabels.mat",
            {"annotations": _struct([_car("00001.jpg", 2), _car(fname, 3)])})
    with pytest.raises(ValueError, match=r"cars_test_annos_withlabels.mat: annotations.fname\[2\]: image path .* is "
                                         r"not a relative path inside .*cars_test"):
        build_eval_dataset(DataConfig(name="stanford_cars", root=str(tmp_path)))


@pytest.mark.parametrize("name, corrupt, message", [
    ("food101", lambda r: _append(r / "meta/test.txt", "apple_pie/../../../../etc/passwd"), r"meta/test.txt:3: "),
    ("cub200", lambda r: (_append(r / "images.txt", "6 /etc/passwd"), _append(r / "train_test_split.txt", "6 0"),
                          _append(r / "image_class_labels.txt", "6 1")), r"images.txt:6: "),
    ("pets", lambda r: (_append(r / "annotations/trainval.txt", "../../Sphynx_1 4 1 4"),
                        _append(r / "annotations/test.txt", "../../Sphynx_2 4 1 4")), r"trainval.txt:7: "),
    ("aircraft", lambda r: _append(r / "data/images_variant_test.txt", "../../../secret A300B4"),
     r"images_variant_test.txt:4: "),
])
def test_an_image_path_from_a_list_file_stays_inside_the_root(tmp_path, name, corrupt, message):
    WRITERS[name](tmp_path)
    corrupt(tmp_path)
    with pytest.raises(ValueError, match=message + r"image path .* is not a relative path inside"):
        build_datasets(DataConfig(name=name, root=str(tmp_path), val_split="test"))


def test_a_list_file_that_is_not_text_names_the_file(tmp_path):
    write_aircraft(tmp_path)
    (tmp_path / "data" / "variants.txt").write_bytes(b"707-320\n\xff\xfe\x00A300B4\n")
    with pytest.raises(ValueError, match=r"variants.txt: not a UTF-8 text file"):
        build_datasets(DataConfig(name="aircraft", root=str(tmp_path)))


def test_the_cli_reports_a_damaged_mat_file_in_one_line_with_exit_2(tmp_path, capsys):
    write_stanford_cars(tmp_path / "cars")
    bad = tmp_path / "cars" / "cars_test_annos_withlabels.mat"
    _truncated(bad)
    assert cli_main(["data", "make-corrupted", str(tmp_path / "cars"), str(tmp_path / "out"), "--dataset",
                     "stanford_cars", "--corruptions", "fog", "--severities", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err


def test_a_class_id_of_unicode_digits_int_cannot_read_names_file_and_line(tmp_path):
    write_pets(tmp_path)
    _append(tmp_path / "annotations" / "test.txt", "Bengal_11 \u00b3 1 2")  # '³'.isdigit() is True, int('³') fails
    with pytest.raises(ValueError, match=r"test.txt:4: expected 'Breed_name_<n> <class id>"):
        build_datasets(DataConfig(name="pets", root=str(tmp_path), val_split="test"))


@pytest.mark.parametrize("compressed", [False, True])
def test_the_pre_check_accepts_every_kind_of_variable_savemat_writes(tmp_path, compressed):
    """load_mat walks a file before scipy reads it: it must pass what MATLAB files hold (numbers of every width,
    complex, logical, text, empty arrays, cells, nested structs, sparse matrices) and read them as scipy does."""
    import scipy.sparse
    from scipy.io import loadmat

    from deepres.data.readers.matfiles import load_mat
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = scipy.sparse.csc_matrix(np.eye(3, dtype=bool)), "text"
    variables = {f"n_{dtype}": np.arange(6, dtype=dtype).reshape(2, 3)
                 for dtype in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
                               "float64")}
    variables.update(z=np.array([1 + 2j, 3j]), b=np.array([[True, False]]), s="AM General Hummer SUV 2000",
                     e=np.zeros((0, 3)), c=cells, sp=scipy.sparse.csc_matrix(np.diag([1.0, 2.0])),
                     GTcls={"Segmentation": np.ones((11, 14), np.uint8), "Boundaries": cells,
                            "Inner": {"deeper": np.array([7])}}, annotations=_struct([_car("00001.jpg", 2)]))
    path = tmp_path / "all.mat"
    savemat(path, variables, do_compression=compressed)
    ours, theirs = load_mat(path), loadmat(path)
    assert set(ours) == set(theirs)
    for name in variables:
        assert repr(ours[name]) == repr(theirs[name]), name
