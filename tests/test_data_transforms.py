"""Tensor transforms: shapes, identities, statistics, determinism under an explicit generator."""
import numpy as np
import pytest
import torch
from PIL import Image

from deepres.core.preprocess import parse_eval_preset
from deepres.data import transforms as T


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch_u8(n=8, c=3, h=12, w=10, seed=0):
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8)


# -------------------------------------------------------------------------------------------------- flips
def test_flip_twice_is_identity_and_random_flip_is_per_sample():
    x = batch_u8(n=64)
    assert torch.equal(T.hflip(T.hflip(x)), x)
    out = T.random_hflip(x, gen(1))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped ^ kept).all()  # each image either mirrored or untouched
    assert 16 < flipped.sum() < 48  # about half of 64
    assert torch.equal(out, T.random_hflip(x, gen(1)))
    assert not torch.equal(out, T.random_hflip(x, gen(2)))


# ----------------------------------------------------------------------------------------- pad and crop
def test_pad_crop_zero_padding_is_identity():
    x = batch_u8()
    assert torch.equal(T.pad_random_crop(x, 0, gen()), x)


def test_pad_crop_shifts_each_image_by_its_own_offset():
    padding = 2
    x = batch_u8(n=32, h=8, w=8)
    out = T.pad_random_crop(x, padding, gen(3))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    offsets = []
    for image, result in zip(padded, out):
        matches = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if torch.equal(image[:, dy:dy + 8, dx:dx + 8], result)]
        assert matches, "output is not a crop of the zero-padded input"
        offsets.append(matches[0])
    assert len(set(offsets)) > 5  # offsets differ across the batch
    single = T.pad_random_crop(x[0], padding, gen(4))
    assert single.shape == x[0].shape and torch.equal(single, T.pad_random_crop(x[0], padding, gen(4)))


# ----------------------------------------------------------------------------------------- resize & crop
def test_resize_shorter_and_center_crop_shapes_and_content():
    x = torch.arange(3 * 100 * 50, dtype=torch.float32).reshape(3, 100, 50)
    assert T.resize_shorter(x, 25).shape == (3, 50, 25)
    assert T.resize_shorter(torch.zeros(2, 3, 40, 90, dtype=torch.uint8), 20).shape == (2, 3, 20, 45)
    crop = T.center_crop(x, 20)
    assert torch.equal(crop, x[:, 40:60, 15:35])
    padded = T.center_crop(torch.ones(1, 4, 4), 6)  # smaller than the crop: zero border
    assert padded.shape == (1, 6, 6) and padded.sum() == 16 and padded[0, 0, 0] == 0


def test_resize_is_antialiased_and_keeps_uint8():
    # 3x down: plain bilinear samples exact source pixels here (0 or 255); antialiasing averages them.
    checker = ((torch.arange(24)[:, None] + torch.arange(24)[None]) % 2 * 255).to(torch.uint8).expand(3, 24, 24)
    small = T.resize(checker, (8, 8))
    assert small.dtype == torch.uint8
    assert (small.int() - 128).abs().max() <= 3
    flat = torch.full((3, 7, 9), 77, dtype=torch.uint8)
    assert (T.resize(flat, (20, 13)) == 77).all()


def test_eval_presets():
    assert parse_eval_preset("none", 224) is None
    assert parse_eval_preset("224_256", 224) == (256, 224)
    assert parse_eval_preset("224_256a", 224) == (257, 256)
    assert parse_eval_preset("256_292", 224) == (292, 256)  # Assemble-ResNet Big-Little models
    assert parse_eval_preset("crop_pct:0.875", 224) == (256, 224)
    assert parse_eval_preset("crop_pct:0.95", 160) == (168, 160)
    for bad in ("crop_pct:1.5", "crop_pct:x", "256"):
        with pytest.raises(ValueError, match="eval_preset"):
            parse_eval_preset(bad, 224)
    out = T.resize_center_crop(torch.zeros(3, 300, 400, dtype=torch.uint8), 256, 224)
    assert out.shape == (3, 224, 224)


def test_random_resized_crop_size_determinism_and_ranges():
    x = batch_u8(n=1, h=60, w=80)[0]
    out = T.random_resized_crop(x, 32, gen(5))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, T.random_resized_crop(x, 32, gen(5)))
    assert not torch.equal(out, T.random_resized_crop(x, 32, gen(6)))
    g = gen(7)
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_params(60, 80, g)
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
        assert 0.08 * 4800 * 0.8 <= h * w <= 4800
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25  # rounding to whole pixels bends the ratio slightly
    assert T.random_resized_crop(batch_u8(n=4, h=20, w=20), (8, 6), gen()).shape == (4, 3, 8, 6)


def test_random_resized_crop_falls_back_to_centre():
    # A 10x100 (w x h) image cannot hold a full-area crop with aspect >= 3/4: clamp the ratio, centre it.
    assert T.random_resized_crop_params(100, 10, gen(), scale=(1.0, 1.0)) == (43, 0, 13, 10)
    assert T.random_resized_crop_params(40, 40, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (0, 0, 40, 40)


# ---------------------------------------------------------------------------------------- normalisation
def test_normalize_gives_zero_mean_unit_std_on_known_input():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    low = torch.tensor([(m - s) * 255 for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    high = torch.tensor([(m + s) * 255 for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    x = torch.cat([low.expand(1, 3, 4, 8), high.expand(1, 3, 4, 8)], dim=2)  # half low, half high rows
    out = T.normalize(x, mean, std)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)
    assert out.dtype == torch.float32


def test_mean_subtraction_and_channel_counts():
    x = torch.full((2, 3, 2, 2), 100, dtype=torch.uint8)
    out = T.subtract_mean(x, (0.2, 0.4, 0.0))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([100 - 51.0, 100 - 102.0, 100.0]))
    gray = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(T.normalize(gray, (0.5,), (0.5,)), torch.ones(1))
    assert torch.allclose(T.normalize(gray, (0.4, 0.5, 0.6), (0.5,)), torch.ones(1))  # 3-value mean averaged
    with pytest.raises(ValueError, match="data.mean has 2 values but the images have 3 channels"):
        T.normalize(x, (0.1, 0.2), (1.0,))


def test_adapt_channels():
    gray = batch_u8(c=1)
    rgb = T.adapt_channels(gray, 3)
    assert rgb.shape[1] == 3 and torch.equal(rgb[:, 2], gray[:, 0])
    image = batch_u8(n=1, h=5, w=6)[0]
    pil_gray = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L"))
    assert np.array_equal(T.adapt_channels(image, 1)[0].numpy(), pil_gray)  # Pillow's "L", fixed point


def test_luma_is_pillows_l_on_uint8_and_itu_601_on_float():
    # every (R, G) pair with a few B values: the fixed-point sum rounds where float32 would round half to even
    r, g = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    for b in (0, 1, 128, 255):
        rgb = torch.stack([r, g, torch.full_like(r, b)]).to(torch.uint8)
        pil = np.asarray(Image.fromarray(rgb.permute(1, 2, 0).numpy()).convert("L"))
        assert np.array_equal(T.luma(rgb)[0].numpy(), pil)
    x = torch.rand(2, 3, 4, 5)
    expected = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    assert torch.allclose(T.luma(x), expected, atol=1e-6) and T.luma(x).dtype == x.dtype
    gray = batch_u8(c=1)
    assert T.luma(gray) is gray


# ------------------------------------------------------------------------------------------ photometric
def test_color_jitter_brightness_scales_each_image_within_range():
    x = torch.full((16, 3, 4, 4), 100.0)
    out = T.color_jitter(x, gen(1), brightness=0.4)
    factors = out[:, 0, 0, 0] / 100
    assert ((factors >= 0.6) & (factors <= 1.4)).all() and factors.std() > 0.05
    assert torch.allclose(out, factors.view(16, 1, 1, 1) * x)  # one factor per image
    assert torch.equal(T.color_jitter(x, gen(1)), x)  # strength 0: identity


def test_color_jitter_keeps_gray_gray_and_is_deterministic():
    gray = torch.rand(4, 1, 6, 6, generator=gen()) * 255
    x = gray.expand(4, 3, 6, 6).clone()
    out = T.color_jitter(x, gen(2), 0.3, 0.3, 0.3)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-3) and torch.allclose(out[:, 1], out[:, 2], atol=1e-3)
    assert torch.equal(out, T.color_jitter(x, gen(2), 0.3, 0.3, 0.3))
    assert out.min() >= 0 and out.max() <= 255


def test_pca_lighting_adds_the_alexnet_colour_offset():
    x = torch.rand(5, 3, 4, 4, generator=gen()) * 255
    out = T.pca_lighting(x, gen(9), 0.1)
    offset = (out - x)[:, :, 0, 0]
    assert torch.allclose(out - x, offset[:, :, None, None].expand_as(x), atol=1e-4)  # uniform per image
    alpha = torch.randn(5, 3, generator=gen(9)).numpy() * 0.1
    eigval, eigvec = np.array(T.IMAGENET_EIGVAL), np.array(T.IMAGENET_EIGVEC)
    expected = np.stack([eigvec @ (a * eigval) for a in alpha]) * 255
    np.testing.assert_allclose(offset.numpy(), expected, rtol=1e-4, atol=1e-3)
    assert torch.equal(T.pca_lighting(x, gen(9), 0.0), x)
    with pytest.raises(ValueError, match="RGB"):
        T.pca_lighting(torch.zeros(1, 1, 2, 2), gen(), 0.1)


def test_transforms_leave_global_rng_alone():
    state = torch.get_rng_state()
    x = batch_u8()
    T.random_hflip(x, gen())
    T.pad_random_crop(x, 2, gen())
    T.random_resized_crop(x, 6, gen())
    T.color_jitter(x.float(), gen(), 0.2, 0.2, 0.2)
    T.pca_lighting(x.float(), gen(), 0.1)
    assert torch.equal(state, torch.get_rng_state())
