"""Image decoding (load_image), the bad-image policies, and `deepres data verify`."""
import argparse
import csv
import logging
import warnings

import numpy as np
import pytest
from PIL import Image

from data_helpers import random_pixels, write_image
from deepres.data import BadImageError, ImageFileDataset, TooManyBadImagesError, load_image
from deepres.cli import main as deepres_main
from deepres.commands import data as data_cli


# -------------------------------------------------------------------------------------------- load_image
def test_rgb_jpeg_decodes_to_its_size(tmp_path):
    path = write_image(tmp_path / "a.JPEG", size=(20, 16))
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (20, 16)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    img = load_image(path)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path):
    path = write_image(tmp_path / "gray.png", random_pixels(8, 9, channels=1))
    img = np.asarray(load_image(path))
    assert img.shape == (8, 9, 3)
    np.testing.assert_array_equal(img[..., 0], np.asarray(Image.open(path)))
    np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(load_image(path))[0, :, 0], [0, 100, 255])


def test_palette_with_transparency_becomes_rgb_without_warning(tmp_path):
    palette_img = Image.fromarray(random_pixels(6, 7)).convert("P")
    path = tmp_path / "pal.png"
    palette_img.save(path, transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = load_image(path)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(palette_img.convert("RGB")))


def test_png_named_jpeg_decodes_losslessly(tmp_path):
    pixels = random_pixels(5, 6)
    path = write_image(tmp_path / "n01440764_1.JPEG", pixels, fmt="PNG")
    np.testing.assert_array_equal(np.asarray(load_image(path)), pixels)


def test_exif_rotation_only_when_asked(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(random_pixels(16, 20)).save(path, exif=exif)
    assert load_image(path).size == (20, 16)
    assert load_image(path, exif_rotate=True).size == (16, 20)


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b""), "zero bytes"),
    (lambda p: p.write_bytes(b"this is a text file, not a picture"), "not an image"),
    (lambda p: p.write_bytes(write_image(p, size=(64, 48)).read_bytes()[:300]), "truncated"),
])
def test_bad_files_raise_naming_file_and_reason(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(BadImageError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_missing_file_and_pixel_bomb(tmp_path):
    with pytest.raises(BadImageError, match="no such file"):
        load_image(tmp_path / "absent.jpg")
    path = write_image(tmp_path / "big.png", size=(20, 16))
    with pytest.raises(BadImageError, match=r"too many pixels \(20x16 = 320 > 319\)"):
        load_image(path, max_pixels=319)
    assert load_image(path, max_pixels=320).size == (20, 16)



def test_max_pixels_is_the_limit_that_applies_above_pillows_own(tmp_path, monkeypatch):
    """Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS by itself; deepres's limit must win both ways."""
    path = write_image(tmp_path / "big.png", size=(20, 16))  # 320 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's hard error from 201 pixels
    assert load_image(path, max_pixels=1000).size == (20, 16)
    with pytest.raises(BadImageError, match=r"too many pixels \(20x16 = 320 > 300\)"):
        load_image(path, max_pixels=300)
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's setting is left as it was

def test_bad_image_error_rebuilds_from_its_message():
    # DataLoader re-raises worker exceptions as type(e)(message).
    error = BadImageError("worker said: x.jpg: zero bytes")
    assert str(error) == "worker said: x.jpg: zero bytes"


# ---------------------------------------------------------------------------------------- bad-image policy
@pytest.fixture
def mixed_folder(tmp_path):
    """Six files in one class, in sorted order: good, CMYK, truncated, gray, zero bytes, PNG-named .JPEG."""
    root = tmp_path / "cls"
    write_image(root / "0_good.jpg", seed=1)
    Image.new("CMYK", (20, 16), (10, 20, 30, 0)).save(root / "1_cmyk.jpg")
    (root / "2_trunc.jpg").write_bytes(write_image(tmp_path / "t.jpg", size=(64, 48)).read_bytes()[:300])
    write_image(root / "3_gray.jpg", random_pixels(16, 20, channels=1))
    (root / "4_empty.jpg").write_bytes(b"")
    write_image(root / "5_png.JPEG", fmt="PNG", seed=5)
    files = sorted(root.iterdir())
    return [(str(p), i) for i, p in enumerate(files)]  # label = position, to see substitutions


def test_error_policy_raises_on_the_bad_file(mixed_folder):
    dataset = ImageFileDataset(mixed_folder, [str(i) for i in range(6)])
    for index in (0, 1, 3, 5):
        image, label = dataset[index]
        assert image.shape == (3, 16, 20) and label == index
    with pytest.raises(BadImageError, match="2_trunc.jpg: truncated"):
        dataset[2]


def test_skip_policy_substitutes_next_good_sample_and_counts(mixed_folder, caplog):
    dataset = ImageFileDataset(mixed_folder, [str(i) for i in range(6)], on_bad_image="skip", bad_image_cap=5)
    with caplog.at_level(logging.WARNING, logger="deepres.data"):
        image, label = dataset[2]
    assert label == 3  # the next sample (3_gray.jpg) stands in
    assert (image == dataset[3][0]).all()
    assert dataset.bad_image_count == 1
    assert "2_trunc.jpg" in caplog.text
    assert dataset[2][1] == 3 and dataset.bad_image_count == 1  # same choice again, counted once
    assert dataset[4][1] == 5 and dataset.bad_image_count == 2


def test_skip_policy_raises_once_cap_is_exceeded(mixed_folder):
    dataset = ImageFileDataset(mixed_folder, [str(i) for i in range(6)], on_bad_image="skip", bad_image_cap=1)
    dataset[2]
    with pytest.raises(TooManyBadImagesError, match=r"more than data.bad_image_cap=1.*4_empty.jpg"):
        dataset[4]


def test_unknown_policy_is_rejected(mixed_folder):
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageFileDataset(mixed_folder, ["a"], on_bad_image="ignore")


# ----------------------------------------------------------------------------------------- data verify
def _run_data(argv):
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    return data_cli.run(parser.parse_args(argv))


def test_verify_writes_manifest_of_bad_files_and_fails(mixed_folder, tmp_path, capsys):
    root = tmp_path / "cls"
    manifest = tmp_path / "bad.csv"
    assert _run_data(["verify", str(root), "--manifest", str(manifest), "--quiet"]) == 1
    rows = list(csv.reader(manifest.open()))
    assert rows[0] == ["path", "reason"]
    assert [r[0] for r in rows[1:]] == [str(root / "2_trunc.jpg"), str(root / "4_empty.jpg")]
    assert "truncated" in rows[1][1] and rows[2][1] == "zero bytes"
    assert "6 images, 4 good, 2 bad" in capsys.readouterr().out


def test_verify_keeps_existing_manifest_unless_forced(mixed_folder, tmp_path, capsys):
    root, manifest = tmp_path / "cls", tmp_path / "bad.csv"
    manifest.write_text("precious\n")
    assert deepres_main(["data", "verify", str(root), "--manifest", str(manifest), "--quiet"]) == 2  # user error
    assert manifest.read_text() == "precious\n"
    assert "already exists" in capsys.readouterr().err
    assert _run_data(["verify", str(root), "--manifest", str(manifest), "--force", "--quiet", "--workers", "2"]) == 1
    assert len(manifest.read_text().splitlines()) == 3


def test_verify_clean_folder_exits_zero(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "a" / "y.jpg")
    manifest = tmp_path / "m.csv"
    assert _run_data(["verify", str(tmp_path / "a"), "--manifest", str(manifest), "--quiet"]) == 0
    assert manifest.read_text().splitlines() == ["path,reason"]


def test_deepres_command_runs_data_verify(tmp_path, capsys):
    cli = pytest.importorskip("deepres.cli")
    pytest.importorskip("deepres.commands.models", reason="the `deepres` dispatcher also imports deepres.commands.models")
    write_image(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "b.jpg").write_bytes(b"")
    assert cli.main(["data", "verify", str(tmp_path / "imgs"), "--quiet"]) == 1
    assert "b.jpg: zero bytes" in capsys.readouterr().out
    assert cli.main(["data", "verify", str(tmp_path / "nowhere")]) == 2  # user error: one clear line
    assert "image directory not found" in capsys.readouterr().err
