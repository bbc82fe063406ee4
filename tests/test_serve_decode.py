"""Decoding an upload the way `deepres serve` does (deepres.inference.preprocess.decode_for_model): large images are
brought to the size the model's preprocessing resizes them to as they are decoded (a JPEG by its decoder's DCT
scaling, then Pillow's antialiased resize), so the model sees what it sees from the full decode within resampling
tolerance, small ones are decoded as stored, and 16- and 32-bit images convert without a float64 copy."""
import io
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from deepres.core.preprocess import Preprocess
from deepres.data.images import decode_image_bytes, pil_to_tensor, to_rgb
from deepres.inference.preprocess import decode_for_model, resize_and_crop, resized_size

CLASSIFIER = Preprocess(resize=256, crop_size=224)
BICUBIC = Preprocess(resize=256, crop_size=224, interpolation="bicubic")
SEGMENTER = Preprocess(resize=64, crop_size=0, resize_side="shorter")
LONGER = Preprocess(resize=100, crop_size=0, resize_side="longer")
AS_STORED = Preprocess(resize=64, crop_size=0, resize_side="none")


def scene(height: int = 1500, width: int = 2000) -> np.ndarray:
    """A photo-like RGB image: smooth colour fields, a darker block with sharp edges, fine noise."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
    pixels[height // 3:height * 3 // 5, width // 3:width * 2 // 3] //= 3
    return (pixels + rng.integers(-20, 20, pixels.shape)).clip(0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def full_decode(data: bytes) -> torch.Tensor:
    return pil_to_tensor(decode_image_bytes(data))


@pytest.mark.parametrize("pp", [CLASSIFIER, BICUBIC, SEGMENTER, LONGER], ids=["crop", "bicubic", "shorter", "longer"])
def test_large_png_decodes_at_the_resized_size_within_one_grey_level(pp):
    data = encoded(scene(), "PNG")
    image = decode_for_model(data, "scene.png", pp)
    assert tuple(image.shape[-2:]) == resized_size(1500, 2000, pp)
    got, want = resize_and_crop(image, pp).int(), resize_and_crop(full_decode(data), pp).int()
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 2 and (got - want).abs().float().mean() < 0.2


def test_large_jpeg_is_scaled_by_its_decoder_within_resampling_tolerance():
    data = encoded(scene(3000, 4000), "JPEG", quality=92)
    image = decode_for_model(data, "scene.jpg", CLASSIFIER)
    assert tuple(image.shape[-2:]) == resized_size(3000, 4000, CLASSIFIER) == (256, 341)
    got, want = resize_and_crop(image, CLASSIFIER).int(), resize_and_crop(full_decode(data), CLASSIFIER).int()
    assert (got - want).abs().max() <= 8 and (got - want).abs().float().mean() < 0.5


@pytest.mark.parametrize("pp", [CLASSIFIER, AS_STORED], ids=["smaller-than-resize", "as-stored"])
def test_images_not_shrunk_by_preprocessing_decode_as_stored(pp):
    data = encoded(scene(120, 180), "PNG") if pp is CLASSIFIER else encoded(scene(300, 400), "PNG")
    assert torch.equal(decode_for_model(data, "small.png", pp), full_decode(data))


def test_decoding_holds_the_stored_pixels_while_it_decodes():
    data = encoded(scene(), "PNG")
    held = []

    class Hold:
        def __init__(self, nbytes):
            held.append(nbytes)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    decode_for_model(data, "scene.png", CLASSIFIER, hold=Hold)
    assert held and held[0] >= 1500 * 2000 * 3  # at least the decoded RGB pixels, from the header


@pytest.mark.parametrize("mode,dtype,values", [
    ("I;16", "<u2", np.arange(0, 65536, dtype=np.uint16)),
    ("I", "<i4", np.array([-70000, -300, -129, -128, -1, 0, 1, 128, 129, 385, 386, 65535, 65536, 10**7, 2**31 - 1],
                             dtype=np.int32)),
    ("F", "<f4", np.array([-5.0, 0.0, 0.49, 0.5, 1.5, 2.5, 127.4, 254.5, 255.2, 1e6], dtype=np.float32)),
])
def test_deep_images_convert_as_before(mode, dtype, values):
    img = Image.frombytes(mode, (values.size, 1), values.astype(dtype).tobytes())
    got = np.asarray(to_rgb(img))[0, :, 0].astype(int)
    scaled = values.astype(np.float64) / (257.0 if mode != "F" else 1.0)
    assert got.tolist() == np.clip(np.rint(scaled), 0, 255).astype(int).tolist()


def test_sixteen_bit_images_convert_without_a_float64_copy():
    img = Image.frombytes("I;16", (2000, 2000), np.full((2000, 2000), 40000, "<u2").tobytes())
    tracemalloc.start()
    try:
        rgb = to_rgb(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (156, 156, 156)
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB of numpy arrays for a 4 Mpx 16-bit image"
