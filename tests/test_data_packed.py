"""Packed datasets: `deepres data pack` output read back as data.name=packed gives the source's images, labels
and classes, through the same loaders; OUT is never overwritten; damaged packs and bad images are named."""
import io
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import write_image
from deepres.cli import main
from deepres.data import (BadImageError, DataConfig, PackOptions, build_datasets, build_loaders, image_folder,
                          load_image, pack_dataset, read_packed)
from deepres.data import transforms as T
from deepres.data.images import pil_to_tensor
from deepres.data.packing.pack import parse_byte_size

@pytest.fixture
def umask_027():
    """Run under umask 027: new files should be 0640 and new folders 0750, as any program's are."""
    old = os.umask(0o027)
    yield
    os.umask(old)


# (width, height) of the source images: larger than the pack size 24 (resized down) and smaller (kept)
SIZES = [(40, 30), (20, 16), (64, 48), (18, 30), (33, 25)]


def smooth(width, height, seed):
    """A photo-like image: smooth colour gradients plus a little noise (JPEG-friendly, like real photos)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [np.sin(x / (4 + 3 * c) + rng.uniform(0, 6)) + np.cos(y / (5 + 2 * c) + rng.uniform(0, 6))
                for c in range(3)]
    image = np.stack(channels, -1) * 55 + 128 + rng.normal(0, 3, (height, width, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_folder(root, classes=("cat", "dog", "emu"), sizes=SIZES, splits=("train", "val"), fmt="png"):
    """root/<split>/<class>/<n>.<fmt>, image sizes cycling through `sizes`."""
    n = 0
    for split in splits:
        for c in classes:
            for i in range(3 if split == "train" else 2):
                width, height = sizes[n % len(sizes)]
                write_image(root / split / c / f"{i}.{fmt}", smooth(width, height, n))
                n += 1
    return root


def source_image(path, size):
    """What packing should store for `path` before encoding: the decoded image, shorter side resized to size."""
    image = pil_to_tensor(load_image(path))
    return T.resize_shorter(image, size) if min(image.shape[-2:]) > size else image


def psnr(a, b):
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def folder_cfg(root, **kw):
    return DataConfig(name="folder", root=str(root), **kw)


def test_raw_pack_is_pixel_identical_to_the_resized_source(tmp_path):
    src = write_folder(tmp_path / "src")
    reports = pack_dataset(folder_cfg(src), tmp_path / "packed", progress=False, val_size=20,
                           options=PackOptions(size=24, encoding="raw", shard_bytes=4000))
    assert [(r.split, r.images) for r in reports] == [("train", 9), ("val", 6)]
    assert reports[0].shards >= 3  # several shards at 4000 bytes each
    for split, size in (("train", 24), ("val", 20)):
        source = image_folder(src / split)
        packed = read_packed(tmp_path / "packed" / split)
        assert len(packed) == len(source) and packed.classes == source.classes == ["cat", "dog", "emu"]
        assert packed.targets == source.targets and packed.in_chans == 3
        for i, (path, label) in enumerate(source.samples):
            image, packed_label = packed[i]
            expected = source_image(path, size)
            assert packed_label == label and image.dtype == torch.uint8
            assert torch.equal(image, expected), path
            assert min(image.shape[-2:]) == min(size, *source[i][0].shape[-2:])  # never enlarged
    pack = json.loads((tmp_path / "packed" / "pack.json").read_text())
    assert pack["splits"] == {"train": {"source_split": "train", "size": 24},
                              "val": {"source_split": "val", "size": 20}}
    assert (pack["encoding"], pack["source_format"]) == ("raw", "folder")


def test_jpeg_pack_decodes_to_its_own_bytes_and_stays_close_to_the_source(tmp_path):
    src = write_folder(tmp_path / "src", splits=("train",), sizes=[(120, 90), (90, 120)])
    pack_dataset(folder_cfg(src), tmp_path / "packed", splits=["train"], progress=False, val_size=100,
                 options=PackOptions(size=60, encoding="jpeg", quality=90))  # no val folder: train alone
    split = tmp_path / "packed" / "train"
    packed, source = read_packed(split), image_folder(src / "train")
    records = np.load(split / "samples.npy")
    shards = [(split / s["file"]).read_bytes() for s in json.loads((split / "index.json").read_text())["shards"]]
    assert (split / "sources.txt").read_text().splitlines() == [p for p, _ in source.samples]
    for i, (path, label) in enumerate(source.samples):
        image, packed_label = packed[i]
        shard, offset, length = int(records[i]["shard"]), int(records[i]["offset"]), int(records[i]["length"])
        stored = shards[shard][offset:offset + length]
        assert stored[:2] == b"\xff\xd8"  # a JPEG file
        assert torch.equal(image, pil_to_tensor(Image.open(io.BytesIO(stored)).convert("RGB")))
        expected = source_image(path, 60)
        assert image.shape == expected.shape and min(image.shape[-2:]) == 60
        assert psnr(image, expected) > 30.0, path  # quality 90 on a smooth image
        assert packed_label == label


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("rank,world_size,workers", [(0, 1, 0), (1, 2, 1)])
def test_packed_loaders_yield_the_same_batches_as_the_folder(tmp_path, rank, world_size, workers):
    # raw and no resize (every image is smaller than the pack size): the pack holds the source pixels exactly,
    # so shuffling, random crops, flips and sharding must give the very same batches
    src = write_folder(tmp_path / "src")
    pack_dataset(folder_cfg(src), tmp_path / "packed", progress=False, options=PackOptions(size=64, encoding="raw"))
    common = dict(image_size=12, random_resized_crop=True, hflip=True, batch_size=2, eval_batch_size=2,
                  workers=workers)
    folder = build_loaders(folder_cfg(src, **common), "cpu", seed=3, rank=rank, world_size=world_size)
    packed = build_loaders(DataConfig(name="packed", root=str(tmp_path / "packed"), **common), "cpu", seed=3,
                           rank=rank, world_size=world_size)
    assert folder[2] == packed[2]  # classes, sizes, channels
    for epoch in (0, 1):
        a, b = batches(folder[0], epoch), batches(packed[0], epoch)
        assert len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(batches(folder[1], 0), batches(packed[1], 0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_out_is_never_overwritten_and_force_replaces_only_a_pack(tmp_path):
    src = write_folder(tmp_path / "src")
    options = PackOptions(size=24, encoding="raw")
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(FileExistsError, match="mine"):
            pack_dataset(folder_cfg(src), user_dir, options=options, force=force, progress=False)
    assert [p.name for p in user_dir.iterdir()] == ["notes.txt"]

    out = tmp_path / "packed"
    pack_dataset(folder_cfg(src), out, splits=["val"], options=options, progress=False)
    with pytest.raises(FileExistsError, match="--force"):
        pack_dataset(folder_cfg(src), out, options=options, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["pack.json", "val"]
    pack_dataset(folder_cfg(src), out, options=options, force=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["pack.json", "train", "val"]

    # a pack that fails half-way (a bad image in train) leaves the old pack and no temporary folder
    (src / "train" / "cat" / "9.png").write_bytes(b"not a png")
    with pytest.raises(BadImageError, match="9.png"):
        pack_dataset(folder_cfg(src), out, splits=["val", "train"], options=options, force=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["pack.json", "train", "val"]
    assert len(read_packed(out / "train")) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "packed", "src"]


def test_bad_source_images_are_skipped_and_listed(tmp_path):
    src = write_folder(tmp_path / "src")
    (src / "train" / "dog" / "5.png").write_bytes(b"")
    reports = pack_dataset(folder_cfg(src), tmp_path / "packed", skip_bad=True, progress=False,
                           options=PackOptions(size=24, encoding="jpeg"))
    assert reports[0].images == 9 and reports[0].skipped == [(str(src / "train" / "dog" / "5.png"), "zero bytes")]
    listed = (tmp_path / "packed" / "train" / "skipped.txt").read_text()
    assert listed == f"{src / 'train' / 'dog' / '5.png'}\tzero bytes\n"
    assert not (tmp_path / "packed" / "val" / "skipped.txt").exists()


def test_pack_applies_exif_rotate_and_max_image_pixels_to_both_splits(tmp_path):
    src = tmp_path / "src"
    for split in ("train", "val"):
        for name, (width, height) in (("large", (60, 40)), ("small", (30, 20))):
            path = src / split / "cat" / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(smooth(width, height, 0))
            exif = image.getexif()
            exif[0x0112] = 6  # EXIF orientation: shown rotated 90 degrees clockwise
            image.save(path, exif=exif)
    cfg = folder_cfg(src, exif_rotate=True, max_image_pixels=1000)  # 60x40 is too large, 30x20 is not
    options = PackOptions(size=0, encoding="raw")
    reports = pack_dataset(cfg, tmp_path / "packed", skip_bad=True, progress=False, options=options, val_size=0)
    for report, split in zip(reports, ("train", "val")):
        assert report.images == 1 and [p for p, _ in report.skipped] == [str(src / split / "cat" / "large.jpg")]
        assert report.skipped[0][1].startswith("too many pixels")
        image, label = read_packed(tmp_path / "packed" / split)[0]
        assert label == 0 and image.shape == (3, 30, 20)  # rotated upright: 20 wide, 30 high
    with pytest.raises(BadImageError, match=r"large.jpg: too many pixels"):
        pack_dataset(cfg, tmp_path / "strict", progress=False, options=options)
    assert not (tmp_path / "strict").exists()


def test_a_damaged_pack_is_named_and_bad_records_follow_the_bad_image_policy(tmp_path):
    src = write_folder(tmp_path / "src", splits=("train",))
    out = tmp_path / "packed"
    pack_dataset(folder_cfg(src), out, splits=["train"], progress=False, options=PackOptions(size=24))
    split = out / "train"
    records = np.load(split / "samples.npy")
    shard = split / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    start = int(records[4]["offset"])
    data[start:start + int(records[4]["length"])] = b"\x00" * int(records[4]["length"])  # image 4: zeros
    shard.write_bytes(bytes(data))
    with pytest.raises(BadImageError, match=r"shard-00000.bin at byte \d+ \(packed from .*dog/1.png\)"):
        read_packed(split)[4]
    skipping = read_packed(split, on_bad_image="skip")
    assert torch.equal(skipping[4][0], skipping[5][0])  # the next good image stands in, as for folders
    assert skipping.bad_image_count == 1

    with pytest.raises(FileNotFoundError, match="not a packed split.*packed splits in .*: train"):
        build_datasets(DataConfig(name="packed", root=str(out)))  # no val split was packed
    shard.write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(ValueError, match=r"shard-00000.bin: \d+ bytes, index.json says \d+ bytes.*re-pack"):
        read_packed(split)


def test_pack_cli_with_a_list_dataset_and_workers(tmp_path, capsys):
    src = write_folder(tmp_path / "src", splits=("train",), fmt="jpg")
    (tmp_path / "src" / "train.txt").write_text("".join(f"{p.relative_to(src)} {i % 2}\n" for i, p in
                                                        enumerate(sorted(src.rglob("*.jpg")))))
    (tmp_path / "src" / "names.txt").write_text("even\nodd\n")
    args = ["data", "pack", str(src), str(tmp_path / "out"), "--dataset", "list", "--split", "train",
            "--set", "train_split=train.txt", "--set", "data.class_names=names.txt", "--size", "20",
            "--shard-size", "2kB", "--quiet"]
    assert main(args + ["--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train: 9 images in" in printed and "data.name=packed data.root=" in printed
    packed = read_packed(tmp_path / "out" / "train")
    assert packed.classes == ["even", "odd"] and packed.targets == [i % 2 for i in range(9)]

    assert main(args) == 2  # OUT exists: a user error
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0  # in this process: the same bytes as the worker process wrote
    again = read_packed(tmp_path / "out" / "train")
    assert all(torch.equal(packed[i][0], again[i][0]) for i in range(9))
    assert main(args[:-1] + ["--set", "no_such_key=1", "--force"]) == 2
    assert "unknown config key 'data.no_such_key'" in capsys.readouterr().err


def test_byte_sizes_parse_with_units():
    assert parse_byte_size("256MB") == 256 * 10**6
    assert parse_byte_size("64MiB") == 64 * 2**20
    assert parse_byte_size("1.5GB") == 1_500_000_000
    assert parse_byte_size("4096") == 4096
    for bad in ("0MB", "-1", "12 parsecs", ""):
        with pytest.raises(ValueError, match="shard size"):
            parse_byte_size(bad)


def test_pack_honours_the_umask(tmp_path, umask_027):
    src = write_folder(tmp_path / "src")
    out = tmp_path / "packed"
    pack_dataset(folder_cfg(src), out, options=PackOptions(size=24, encoding="raw"), progress=False)
    entries = [out, *out.rglob("*")]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in entries}
    assert modes == {str(p.relative_to(tmp_path)): "0o750" if p.is_dir() else "0o640" for p in entries}


def test_packed_jpeg_over_pillows_limit_reads_under_a_raised_max_image_pixels(tmp_path, monkeypatch):
    src = write_folder(tmp_path / "src", splits=("train",))
    pack_dataset(folder_cfg(src), tmp_path / "packed", splits=["train"], progress=False,
                 options=PackOptions(size=24, encoding="jpeg"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's hard error from 201 pixels; images are 24x32
    image, _ = read_packed(tmp_path / "packed" / "train", max_pixels=10_000)[0]
    assert image.shape[1] * image.shape[2] > 200
    with pytest.raises(BadImageError, match=r"too many pixels \(\d+x\d+ > 300\)"):
        read_packed(tmp_path / "packed" / "train", max_pixels=300)[0]


def test_pack_index_cannot_point_outside_its_folder_and_records_never_unpickle(tmp_path):
    src = write_folder(tmp_path / "src", splits=("train",))
    split = tmp_path / "packed" / "train"
    pack_dataset(folder_cfg(src), tmp_path / "packed", splits=["train"], progress=False,
                 options=PackOptions(size=24))
    index = json.loads((split / "index.json").read_text())
    good = index["shards"][0]["file"]
    outside = tmp_path / "outside.bin"
    outside.write_bytes((split / good).read_bytes())
    index["shards"][0]["file"] = "../../outside.bin"
    (split / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"index\.json: shard file '\.\./\.\./outside\.bin' is not a file name"):
        read_packed(split)
    index["shards"][0]["file"] = good
    (split / "index.json").write_text(json.dumps(index))
    np.save(split / "samples.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"samples\.npy: not a table of packed records"):
        read_packed(split)
