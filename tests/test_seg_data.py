"""Segmentation data: the label tables, the four readers on files written in each dataset's real layout, and the
joint image/mask transforms (image and mask stay aligned; masks are never interpolated)."""
import dataclasses

import numpy as np
import pytest
import torch
from data_helpers import blob_mask, idx_bytes, write_ade, write_gray_png, write_image, write_voc
from PIL import Image

from deepres.data import (BadImageError, DataConfig, SegEvalTransform, SegTrainTransform, build_datasets,
                          build_eval_dataset, format_shape, get_format)
from deepres.data.augment.seg_transforms import rescale
from deepres.data.readers.seg_labels import (ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, VOC_CLASSES,
                                             ade_reduce_zero, cityscapes_label_to_train, cityscapes_train_to_label,
                                             palette_for, read_mask_png, voc_colormap, write_mask_png)
from deepres.data.readers.segmentation import voc_train_aug_ids
from deepres.data.scenes import SCENE_CLASSES, make_fashion_mnist_scenes


# ------------------------------------------------------------------------------------------------ labels
def test_voc_colormap_and_palette_png_round_trip_keep_indices(tmp_path):
    colours = voc_colormap()
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert colours[15].tolist() == [192, 128, 128] and colours[255].tolist() == [224, 224, 192]
    mask = blob_mask(12, 10, [0, 3, 20, 255], seed=0)
    path = write_mask_png(tmp_path / "m.png", torch.from_numpy(mask))
    assert Image.open(path).mode == "P"
    assert np.array_equal(read_mask_png(path), mask)  # indices, not colours


def test_read_mask_png_refuses_colour_masks_naming_the_file(tmp_path):
    path = write_image(tmp_path / "rgb_mask.png", size=(6, 5))
    with pytest.raises(ValueError, match=r"rgb_mask.png: a mask must be a palette \(P\) or grayscale \(L\) image.*"
                                         r"mode RGB"):
        read_mask_png(path)


def test_cityscapes_tables_both_directions():
    label_ids = np.array([[7, 26, 0], [33, 24, 1]], np.uint8)
    assert cityscapes_label_to_train(label_ids).tolist() == [[0, 13, 255], [18, 11, 255]]
    as_tensor = cityscapes_label_to_train(torch.from_numpy(label_ids))
    assert as_tensor.dtype == torch.uint8 and as_tensor.tolist() == [[0, 13, 255], [18, 11, 255]]
    train_ids = np.arange(19, dtype=np.uint8)
    assert cityscapes_label_to_train(cityscapes_train_to_label(train_ids)).tolist() == list(range(19))
    assert cityscapes_train_to_label(np.array([255, 0, 13], np.uint8)).tolist() == [0, 7, 26]
    assert cityscapes_label_to_train(np.arange(34, 256, dtype=np.uint8)).tolist() == [255] * 222  # not label ids
    assert len(CITYSCAPES_CLASSES) == 19 and "license plate" not in CITYSCAPES_CLASSES
    assert CITYSCAPES_CLASSES[:3] == ("road", "sidewalk", "building") and CITYSCAPES_CLASSES[-1] == "bicycle"


def test_ade_reduce_zero_and_palettes():
    assert ade_reduce_zero(np.array([0, 1, 150, 255], np.uint8)).tolist() == [255, 0, 149, 255]
    assert ade_reduce_zero(torch.tensor([0, 2], dtype=torch.uint8)).tolist() == [255, 1]
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150 and ADE20K_CLASSES[:3] == ("wall", "building", "sky")
    for name, classes, first in (("ade20k", 150, (120, 120, 120)), ("cityscapes", 19, (128, 64, 128)),
                                 ("voc", 21, (0, 0, 0)), ("pairs", 11, (0, 0, 0))):
        palette = palette_for(name, classes)
        assert palette.shape == (256, 3) and palette.dtype == np.uint8 and tuple(palette[0]) == first
    assert np.array_equal(palette_for("cityscapes", 40), voc_colormap())  # more classes than the table


# ----------------------------------------------------------------------------------------------- readers
def test_segmentation_records():
    assert format_shape(DataConfig(name="voc")) == (21, 3, list(VOC_CLASSES))
    assert format_shape(DataConfig(name="cityscapes")) == (19, 3, list(CITYSCAPES_CLASSES))
    assert format_shape(DataConfig(name="ade20k")) == (150, 3, list(ADE20K_CLASSES))
    assert format_shape(DataConfig(name="pairs")) is None  # its classes.txt decides
    for name in ("pairs", "voc", "cityscapes", "ade20k"):
        fmt = get_format(name)
        assert fmt.task == "segmentation" and not fmt.packable and not fmt.in_memory and fmt.needs_root


def test_voc_reads_palette_indices_with_255_borders(tmp_path):
    masks = write_voc(tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]})
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        train, val = build_datasets(DataConfig(name="voc", root=str(root)))
        assert (len(train), len(val), train.num_classes, train.in_chans) == (2, 1, 21, 3)
        assert train.classes == list(VOC_CLASSES)
        image, mask = train[1]
        assert image.shape == (3, 11, 14) and image.dtype == torch.uint8
        assert mask.dtype == torch.uint8 and np.array_equal(mask.numpy(), masks["2007_000039"])
        assert set(mask.unique().tolist()) <= {0, 5, 15, 255}
    assert [p.rsplit("/", 1)[-1] for p in train.image_paths] == ["2007_000032.jpg", "2007_000039.jpg"]
    with pytest.raises(FileNotFoundError, match="no VOC2012 folder"):
        build_datasets(DataConfig(name="voc", root=str(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages")))


def write_sbd(root, train: list[str], val: list[str], size=(14, 11)) -> dict[str, np.ndarray]:
    """benchmark_RELEASE/dataset/{train,val}.txt and cls/<id>.mat holding GTcls.Segmentation (as SBD ships)."""
    savemat = pytest.importorskip("scipy.io").savemat
    dataset = root / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in val))
    masks = {}
    for n, i in enumerate(train + val):
        masks[i] = np.full((size[1], size[0]), 1 + n, np.uint8)  # one class per file: easy to tell apart
        masks[i][:, :3] = 0
        savemat(str(dataset / "cls" / f"{i}.mat"), {"GTcls": {"Segmentation": masks[i], "Boundaries": np.zeros(1),
                                                          "CategoriesPresent": np.array([1 + n], np.uint8)}})
    return masks


def test_train_aug_ids_union_minus_voc_val(tmp_path):
    voc_ids = {"train": ["a_voc_train", "b_both"], "val": ["c_voc_val", "d_voc_val"]}
    for split, ids in voc_ids.items():
        (tmp_path / "voc" / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (tmp_path / "voc" / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "sbd" / "dataset").mkdir(parents=True)
    (tmp_path / "sbd" / "dataset" / "train.txt").write_text("b_both\ne_sbd_train\nc_voc_val\n")
    (tmp_path / "sbd" / "dataset" / "val.txt").write_text("f_sbd_val\n")
    ids, with_png = voc_train_aug_ids(tmp_path / "voc", tmp_path / "sbd")
    assert ids == ["a_voc_train", "b_both", "e_sbd_train", "f_sbd_val"]  # c: in VOC val, so never trained on
    assert with_png == {"a_voc_train", "b_both"}


def test_voc_train_aug_reads_sbd_mat_where_voc_has_no_png(tmp_path):
    sbd_masks = write_sbd(tmp_path, train=["b_both", "e_sbd_train", "c_voc_val"], val=["f_sbd_val"])
    voc_masks = write_voc(tmp_path, {"train": ["a_voc_train", "b_both"], "val": ["c_voc_val"]})
    for i in ("e_sbd_train", "f_sbd_val"):  # VOC2012's JPEGImages holds every image, SBD's ids included
        write_image(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{i}.jpg", size=(14, 11))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cfg = DataConfig(name="voc", root=str(tmp_path / "VOCdevkit"), train_split="train_aug",
                     sbd_root=str(tmp_path / "benchmark_RELEASE"))
    train, val = build_datasets(cfg)
    assert [p.rsplit("/", 1)[-1] for p in train.mask_paths] == ["a_voc_train.png", "b_both.png", "e_sbd_train.mat",
                                                                "f_sbd_val.mat"]
    assert np.array_equal(train[1][1].numpy(), voc_masks["b_both"])  # VOC's PNG wins over SBD's .mat
    for index, i in ((2, "e_sbd_train"), (3, "f_sbd_val")):
        assert np.array_equal(train[index][1].numpy(), sbd_masks[i])
    assert len(val) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    relative = dataclasses.replace(cfg, root=str(tmp_path), sbd_root="benchmark_RELEASE")
    assert len(build_datasets(relative)[0]) == 4
    with pytest.raises(ValueError, match="train_aug needs data.sbd_root"):
        build_datasets(dataclasses.replace(cfg, sbd_root=""))


def _train_aug(tmp_path, sbd_ids=("e_sbd",), **options):
    """A VOC train_aug set whose last images' masks come from SBD .mat files only (ids `sbd_ids`)."""
    sbd_masks = write_sbd(tmp_path, train=list(sbd_ids), val=[])
    write_voc(tmp_path, {"train": ["a_voc"], "val": ["c_voc_val"]})
    for i in sbd_ids:
        write_image(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{i}.jpg", size=(14, 11))
    cfg = DataConfig(name="voc", root=str(tmp_path / "VOCdevkit"), train_split="train_aug",
                     sbd_root=str(tmp_path / "benchmark_RELEASE"), **options)
    return build_datasets(cfg)[0], sbd_masks


@pytest.mark.parametrize("value, dtype", [(256, np.int16), (-1, np.int16), (1.5, np.float64), (np.nan, np.float64)])
def test_an_sbd_mask_value_no_uint8_holds_is_refused_not_wrapped(tmp_path, value, dtype):
    """astype(uint8) made 256 background (0) and -1 ignore (255); such a file is refused naming file and field."""
    savemat = pytest.importorskip("scipy.io").savemat
    train, _ = _train_aug(tmp_path)
    mask = np.zeros((11, 14), dtype)
    mask[4, 5] = value
    path = tmp_path / "benchmark_RELEASE" / "dataset" / "cls" / "e_sbd.mat"
    savemat(str(path), {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros(1)}})
    with pytest.raises(ValueError, match=rf"e_sbd.mat: GTcls.Segmentation holds {value}, not a mask value 0..255"):
        train[1]


def _sbd_v73(path):
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  6 10:00:00 2025 HDF5 schema 1.00 ."
    path.write_bytes((text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM").ljust(512, b"\0") + b"\x89HDF\r\n\x1a\n")


def _sbd_corrupted(path):
    savemat = pytest.importorskip("scipy.io").savemat
    savemat(str(path), {"GTcls": {"Segmentation": np.ones((11, 14), np.uint8)}}, do_compression=True)
    data = bytearray(path.read_bytes())
    for position in (140, 150, 160):  # three bytes of the compressed stream
        data[position] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable MATLAB file"),  # scipy: IndexError
    (_sbd_v73, r"a MATLAB v7.3 \(HDF5\) file"),
    (_sbd_corrupted, "corrupt compressed variable|not a readable MATLAB file"),
])
def test_a_damaged_sbd_mat_file_is_a_bad_image_naming_it(tmp_path, damage, reason):
    train, _ = _train_aug(tmp_path, sbd_ids=("e_sbd", "f_sbd"))
    path = tmp_path / "benchmark_RELEASE" / "dataset" / "cls" / "e_sbd.mat"
    damage(path)
    with pytest.raises(BadImageError, match=rf"e_sbd.mat: ({reason})") as error:
        train[1]
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)
    skipping, sbd_masks = _train_aug(tmp_path / "again", sbd_ids=("e_sbd", "f_sbd"), on_bad_image="skip")
    damage(tmp_path / "again" / "benchmark_RELEASE" / "dataset" / "cls" / "e_sbd.mat")
    assert np.array_equal(skipping[1][1].numpy(), sbd_masks["f_sbd"])  # the next good pair stands in


@pytest.mark.parametrize("where, bad_id", [("voc", "../../../../etc/passwd"), ("voc", "/etc/passwd"),
                                           ("sbd", "../outside"), ("sbd", "..")])
def test_an_id_in_a_split_list_is_a_file_name_not_a_path(tmp_path, where, bad_id):
    write_sbd(tmp_path, train=["e_sbd"], val=[])
    write_voc(tmp_path, {"train": ["a_voc"], "val": ["c_voc_val"]})
    write_image(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "e_sbd.jpg", size=(14, 11))
    lists = {"voc": tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt",
             "sbd": tmp_path / "benchmark_RELEASE" / "dataset" / "train.txt"}
    lists[where].write_text(lists[where].read_text() + f"{bad_id}\n")
    cfg = DataConfig(name="voc", root=str(tmp_path / "VOCdevkit"), train_split="train_aug",
                     sbd_root=str(tmp_path / "benchmark_RELEASE"))
    with pytest.raises(ValueError, match=rf"{lists[where].name}:2: image id '{bad_id}' is not a file name"):
        build_datasets(cfg)
    if where == "voc":  # the plain VOC splits read the same lists
        with pytest.raises(ValueError, match=r"train.txt:2: image id"):
            build_datasets(dataclasses.replace(cfg, train_split="train", sbd_root=""))


def test_a_cityscapes_value_that_is_no_label_id_is_refused(tmp_path):
    """labelIds PNGs hold the label ids 0..33; 40 was silently read as ignore (255)."""
    stem = "aachen_000000_000019"
    write_image(tmp_path / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png", size=(3, 1))
    write_gray_png(tmp_path / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png",
                   np.array([[7, 40, 26]], np.uint8))
    val = build_eval_dataset(DataConfig(name="cityscapes", root=str(tmp_path)))
    with pytest.raises(ValueError, match=r"_gtFine_labelIds.png: mask value 40 is not one this dataset's masks "
                                         r"hold \(0..33\)"):
        val[0]


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    label_ids = np.array([[7, 7, 26, 26], [0, 33, 24, 9], [11, 23, 1, 7]], np.uint8)
    for split, annotation in (("train", "gtFine"), ("val", "gtFine"), ("train_extra", "gtCoarse")):
        for city in ("aachen", "bochum"):
            stem = f"{city}_000000_000019"
            write_image(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", size=(4, 3))
            write_gray_png(tmp_path / annotation / split / city / f"{stem}_{annotation}_labelIds.png", label_ids)
    train, val = build_datasets(DataConfig(name="cityscapes", root=str(tmp_path)))
    assert len(train) == len(val) == 2 and train.num_classes == 19 and train.classes == list(CITYSCAPES_CLASSES)
    image, mask = train[0]
    assert image.shape == (3, 3, 4) and "aachen" in train.image_paths[0]
    assert mask.tolist() == [[0, 0, 13, 13], [255, 18, 11, 255], [2, 10, 255, 0]]
    extra = build_datasets(DataConfig(name="cityscapes", root=str(tmp_path), train_split="train_extra"))[0]
    assert "gtCoarse" in extra.mask_paths[0] and extra[1][1].tolist() == mask.tolist()


def test_ade20k_reduces_zero_exactly_once_and_reads_object_info(tmp_path):
    annotation = np.array([[0, 1, 150], [2, 0, 149]], np.uint8)
    write_ade(tmp_path, "training", annotation)
    write_ade(tmp_path, "validation", annotation, count=1)
    for splits in (dict(train_split="training", val_split="validation"), {}):  # train/val mean the same folders
        train, val = build_datasets(DataConfig(name="ade20k", root=str(tmp_path), **splits))
        assert (len(train), len(val), train.num_classes) == (2, 1, 150)
        expected = [[255, 0, 149], [1, 255, 148]]
        assert train[0][1].tolist() == expected and train[0][1].tolist() == expected  # read twice: still once
        assert val[0][1].tolist() == expected
    assert train.classes == list(ADE20K_CLASSES)  # no objectInfo150.txt: the built-in names
    # as the SceneParsing repository ships it: tabs, ", " between synonyms, stray spaces after some fields
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.01\t100\t10\tclass{i}, other{i}" for i in range(1, 151)]
    rows[8], rows[22] = "8\t0.0231\t1906\t199\tbed ", "22 \t0.0074\t709\t75\twater"
    rows[13] = "13\t0.0160\t5075\t526\tperson, individual, someone, somebody, mortal, soul"
    (tmp_path / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    val = build_eval_dataset(DataConfig(name="ade20k", root=str(tmp_path)))
    assert len(val.classes) == 150 and val.classes[0] == "class1"
    assert (val.classes[7], val.classes[12], val.classes[21]) == ("bed", "person", "water")
    rows[13] = "13\t0.0160\t5075\t526\tperson;individual;someone;somebody;mortal;soul"  # the ';' copies
    (tmp_path / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    assert build_eval_dataset(DataConfig(name="ade20k", root=str(tmp_path))).classes[12] == "person"
    rows[13] = "\u00b9\u00b3\t0.0160\t5075\t526\tperson"  # superscript digits: isdigit() but not int()
    (tmp_path / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"objectInfo150.txt:14: expected Idx, Ratio, Train, Val, Name"):
        build_eval_dataset(DataConfig(name="ade20k", root=str(tmp_path)))
    bad = np.array([[151, 0]], np.uint8)
    write_gray_png(tmp_path / "annotations" / "validation" / "ADE_val_00000001.png", bad)
    write_image(tmp_path / "images" / "validation" / "ADE_val_00000001.jpg", size=(2, 1))
    with pytest.raises(ValueError, match=r"ADE_val_00000001.png: mask value 151 \(class index 150\) is neither a "
                                         r"class index \(0..149\) nor 255"):
        val[0]


def write_item_source(root):
    """Fashion-MNIST IDX files of grey squares (as tests/test_data_scenes.py)."""
    root.mkdir(parents=True)
    for prefix, labels in (("train", [0, 1, 2, 3, 4] * 2), ("t10k", [5, 6, 7, 8, 9])):
        images = np.zeros((len(labels), 28, 28), np.uint8)
        images[:, 6:22, 6:22] = 200
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.array(labels, np.uint8)))


def test_pairs_reads_the_fashion_mnist_scenes_folder(tmp_path):
    write_item_source(tmp_path / "items")
    out = make_fashion_mnist_scenes(tmp_path / "items", tmp_path / "scenes", train=4, test=3, size=32,
                                    progress=False)
    cfg = DataConfig(name="pairs", root=str(out), val_split="test")
    train, val = build_datasets(cfg)
    assert (len(train), len(val), train.classes, train.in_chans) == (4, 3, SCENE_CLASSES, 3)
    for image, mask in (train[0], val[2]):
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.uint8
        assert torch.equal(image[0] > 0, mask > 0) and int(mask.max()) < len(SCENE_CLASSES)
    assert build_eval_dataset(cfg).classes == SCENE_CLASSES  # classes.txt: no train split needed
    assert len(train.subset(2)) == 2 and train.subset(2).image_paths == train.image_paths[:2]


def write_pairs(root, stems, size=(6, 5), masks=None):
    (root / "classes.txt").write_text("background\nthing\n")
    for n, stem in enumerate(stems):
        write_image(root / "train" / "images" / f"{stem}.png", size=size, seed=n)
        mask = np.zeros(size[::-1], np.uint8) if masks is None else masks[n]
        write_gray_png(root / "train" / "masks" / f"{stem}.png", mask)


def test_pairs_errors_name_the_files(tmp_path):
    write_pairs(tmp_path, ["a", "b", "c"])
    (tmp_path / "train" / "masks" / "b.png").rename(tmp_path / "train" / "masks" / "z.png")
    cfg = DataConfig(name="pairs", root=str(tmp_path), val_split="train")
    with pytest.raises(ValueError, match=r"train/images and .*train/masks do not pair up: 1 images without a mask "
                                         r"\(e.g. \['b'\]\), 1 masks without an image \(e.g. \['z'\]\)"):
        build_datasets(cfg)
    (tmp_path / "train" / "masks" / "z.png").rename(tmp_path / "train" / "masks" / "b.png")
    bad = np.zeros((5, 6), np.uint8)
    bad[2, 3] = 2  # only classes 0, 1 (and 255)
    write_gray_png(tmp_path / "train" / "masks" / "b.png", bad)
    write_image(tmp_path / "train" / "masks" / "c.png", size=(6, 5))  # an RGB mask
    train, _ = build_datasets(cfg)
    assert train[0][1].sum() == 0
    with pytest.raises(ValueError, match=r"masks/b.png: mask value 2 is neither a class index \(0..1\) nor 255"):
        train[1]
    with pytest.raises(ValueError, match=r"masks/c.png: a mask must be a palette \(P\) or grayscale \(L\)"):
        train[2]
    with pytest.raises(FileNotFoundError, match="class-name file .*nope.txt not found"):
        build_datasets(dataclasses.replace(cfg, class_names="nope.txt"))


def test_pairs_mask_of_another_size_is_an_error(tmp_path):
    write_pairs(tmp_path, ["a"], masks=[np.zeros((4, 4), np.uint8)])
    train, _ = build_datasets(DataConfig(name="pairs", root=str(tmp_path), val_split="train"))
    with pytest.raises(ValueError, match=r"masks/a.png: mask is 4x4 but its image .*images/a.png is 6x5"):
        train[0]


# -------------------------------------------------------------------------------------------- transforms
def painted(height, width, seed):
    """(image, mask): channel 0 = mask * 10 (7 where the mask is 255), channels 1-2 = 100 (never 0)."""
    mask = blob_mask(height, width, [0, 1, 2, 3, 4, 5, 255], seed=seed, block=3)
    image = torch.full((3, height, width), 100, dtype=torch.uint8)
    image[0] = torch.from_numpy(np.where(mask == 255, 7, mask.astype(np.int64) * 10).astype(np.uint8))
    return image, torch.from_numpy(mask)


@pytest.mark.parametrize("scale_range", [(1.0, 1.0), (0.5, 2.0), (0.3, 0.6), (1.5, 3.0)])
def test_train_transform_keeps_image_and_mask_aligned(scale_range):
    transform = SegTrainTransform(crop_size=24, scale_range=scale_range, interpolation="nearest")
    padded_seen = 0
    for seed in range(25):
        image, mask = painted(20 + seed % 7, 33 - seed % 5, seed)
        out_image, out_mask = transform(image, mask, torch.Generator().manual_seed(seed))
        assert out_image.shape == (3, 24, 24) and out_mask.shape == (24, 24)
        assert out_image.dtype == out_mask.dtype == torch.uint8
        pad = out_image[1] == 0
        assert (out_image[:, pad] == 0).all() and (out_mask[pad] == 255).all()  # padding: image 0, mask 255
        inside = ~pad
        labelled = inside & (out_mask != 255)
        assert torch.equal(out_image[0][labelled], out_mask[labelled] * 10)
        assert (out_image[0][inside & (out_mask == 255)] == 7).all()
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}
        rows, cols = int(inside.any(1).sum()), int(inside.any(0).sum())
        top, left = int(inside.any(1).float().argmax()), int(inside.any(0).float().argmax())
        assert inside[top:top + rows, left:left + cols].all() and inside.sum() == rows * cols  # one rectangle
        padded_seen += int(pad.any())
    if scale_range[1] <= 1:
        assert padded_seen > 0  # images smaller than the crop were padded


def test_train_transform_pads_a_small_image_on_every_side_at_a_seeded_offset():
    # a 10x13 image in a 24x24 crop: 14 rows and 11 columns of padding, split at a random offset (mmseg puts it all
    # at the bottom and right, which taught a model to predict a class along those edges)
    image, mask = painted(10, 13, 4)
    transform = SegTrainTransform(crop_size=24, hflip=False)
    tops, lefts = [], []
    for seed in range(200):
        out_image, out_mask = transform(image, mask, torch.Generator().manual_seed(seed))
        assert out_image.shape == (3, 24, 24) and out_mask.shape == (24, 24)
        inside = out_image[1] != 0
        top, left = int(inside.any(1).float().argmax()), int(inside.any(0).float().argmax())
        assert torch.equal(out_image[:, top:top + 10, left:left + 13], image)  # the image, unscaled, in one piece
        assert torch.equal(out_mask[top:top + 10, left:left + 13], mask)
        assert int(inside.sum()) == 10 * 13 and (out_image[:, ~inside] == 0).all()
        assert (out_mask[~inside] == 255).all()  # the padding is ignored, on whichever side it falls
        tops.append(top)
        lefts.append(left)
    assert min(tops) == 0 and max(tops) == 14 and min(lefts) == 0 and max(lefts) == 11  # band on each side at times
    assert 20 < sum(0 < t < 14 for t in tops) and 20 < sum(0 < t < 11 for t in lefts)  # and on both sides at once
    first = transform(image, mask, torch.Generator().manual_seed(7))
    again = transform(image, mask, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_bilinear_train_transform_agrees_with_the_mask_inside_regions():
    transform = SegTrainTransform(crop_size=32, scale_range=(0.5, 2.0))
    for seed in range(10):
        mask = torch.from_numpy(blob_mask(64, 72, [0, 2, 4, 6, 8], seed=seed, block=16))
        image = (mask * 20).expand(3, -1, -1).clone()
        out_image, out_mask = transform(image, mask, torch.Generator().manual_seed(seed))
        windows = out_mask.float()[None, None]
        local_max = torch.nn.functional.max_pool2d(windows, 5, 1, 2)[0, 0]
        local_min = -torch.nn.functional.max_pool2d(-windows, 5, 1, 2)[0, 0]
        uniform = (local_max == local_min) & (out_mask != 255)
        uniform[:2], uniform[-2:], uniform[:, :2], uniform[:, -2:] = False, False, False, False
        assert uniform.sum() > 100
        diff = (out_image[0].int() - out_mask.int() * 20)[uniform].abs()
        assert diff.max() <= 2


def test_train_transform_repeats_for_a_seed_and_follows_the_config():
    image, mask = painted(40, 30, 0)
    cfg = DataConfig(name="pairs", image_size=16, scale_range=(0.5, 1.5), base_size=20, base_side="shorter",
                     cat_max_ratio=0.75, hflip=False)
    transform = SegTrainTransform.from_config(cfg)
    assert (transform.crop_size, transform.scale_range, transform.base_size, transform.base_side,
            transform.cat_max_ratio, transform.hflip) == (16, (0.5, 1.5), 20, "shorter", 0.75, False)
    first = transform(image, mask, torch.Generator().manual_seed(3))
    again = transform(image, mask, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    others = [transform(image, mask, torch.Generator().manual_seed(s))[1] for s in range(4, 10)]
    assert any(not torch.equal(first[1], other) for other in others)
    with pytest.raises(ValueError, match=r"scale_range must be 0 < low <= high"):
        SegTrainTransform(crop_size=8, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"cat_max_ratio must be in \(0, 1\]"):
        SegTrainTransform(crop_size=8, cat_max_ratio=0)


def test_hflip_mirrors_image_and_mask_together():
    image, mask = painted(16, 16, 1)
    flips = 0
    for seed in range(20):
        out_image, out_mask = SegTrainTransform(crop_size=16)(image, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(out_mask, mask) or torch.equal(out_mask, mask.flip(-1))
        flipped = torch.equal(out_mask, mask.flip(-1)) and not torch.equal(mask, mask.flip(-1))
        assert torch.equal(out_image, image.flip(-1) if flipped else image)
        flips += flipped
    assert 0 < flips < 20


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[:20, :20] = 1  # a small class in a corner; most 16x16 crops see only class 0
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)

    def mixed_crops(ratio):
        transform = SegTrainTransform(crop_size=16, cat_max_ratio=ratio, hflip=False)
        count = 0
        for seed in range(60):
            crop = transform(image, mask, torch.Generator().manual_seed(seed))[1]
            counts = torch.bincount(crop.flatten().long(), minlength=2)[:2]
            count += int((counts > 0).all() and counts.max() / counts.sum() < 0.75)
        return count

    assert mixed_crops(0.75) > 2 * mixed_crops(1.0) + 5


def test_rescale_and_eval_transform_never_interpolate_mask_values():
    image, mask = painted(21, 17, 2)
    for factor in (0.37, 0.5, 1.0, 1.3, 2.0, 3.7):
        out_image, out_mask = rescale(image, mask, factor)
        assert out_mask.shape == (round(21 * factor), round(17 * factor)) == out_image.shape[-2:]
        assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist())
    out_image, out_mask = SegEvalTransform.from_config(DataConfig(name="pairs", test_size=42))(image, mask)
    assert out_image.shape == (3, 42, 34) and out_mask is mask  # scored at the stored size
    out_image, _ = SegEvalTransform(test_size=34, base_side="shorter")(image, mask)
    assert out_image.shape == (3, 42, 34)
    assert SegEvalTransform()(image, mask)[0] is image


def test_bad_image_or_mask_follows_on_bad_image(tmp_path):
    write_pairs(tmp_path, ["a", "b", "c"], masks=[np.full((5, 6), k, np.uint8) for k in (0, 1, 0)])
    (tmp_path / "train" / "masks" / "b.png").write_bytes(b"")  # a mask that does not decode
    cfg = DataConfig(name="pairs", root=str(tmp_path), val_split="train")
    train, _ = build_datasets(cfg)
    with pytest.raises(BadImageError, match=r"masks/b.png: zero bytes"):
        train[1]
    skipping, _ = build_datasets(dataclasses.replace(cfg, on_bad_image="skip"))
    image, mask = skipping[1]  # the next good pair stands in, image and mask together
    assert torch.equal(image, skipping[2][0]) and torch.equal(mask, skipping[2][1])
