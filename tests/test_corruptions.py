"""ImageNet-C corruptions and ImageNet-P sequences: every corruption at every severity at 28 and 32 px (and at
224 px at severities 1 and 5), strength growing with severity, per-image seeding independent of the batch,
hand-checked formulas for the simple ones, sequence shapes and progressions, and the error messages."""
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepres.data.corruptions.corruptions import (ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, SCALES, corrupt,
                                                  corruption_scale)
from deepres.data.corruptions.perturbations import (ALL_PERTURBATIONS, NOISE_PERTURBATIONS, PERTURBATIONS,
                                                    perturbation_frames, perturbation_sequence)

# Corruptions with no random draw: the seed cannot change them.
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}


def photo(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, channels, size, size): smooth colour ramps, a few hard stripes and mild noise, so every
    corruption (blurs, noise, colour, geometry) has something to change."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack((xs, ys, 1 - xs * ys)) + 0.3 * ((xs * 7).floor() % 2) - 0.15
    noise = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    images = (base * 180 + 40 + 25 * noise).clamp(0, 255).to(torch.uint8)
    return images[:, :1].contiguous() if channels == 1 else images


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute pixel difference, in uint8 levels."""
    return (a.float() - b.float()).abs().mean().item()


def laplacian_energy(images: torch.Tensor) -> float:
    """Mean |Laplacian| of the first channel away from the border: how far an image bends from a plane."""
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    m = images.shape[-1] // 8
    return F.conv2d(images[:, :1].float(), lap)[..., m:-m, m:-m].abs().mean().item()


def test_names_in_hendrycks_order():
    assert CORRUPTIONS[:3] == ("gaussian_noise", "shot_noise", "impulse_noise")
    assert CORRUPTIONS[-1] == "jpeg_compression" and len(CORRUPTIONS) == 15
    assert EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert ALL_CORRUPTIONS == CORRUPTIONS + EXTRA_CORRUPTIONS and SCALES == ("imagenet", "cifar")
    assert len(PERTURBATIONS) == 10 and NOISE_PERTURBATIONS == {"gaussian_noise", "shot_noise", "speckle_noise"}


def test_corruption_scale_rule():
    assert corruption_scale(28, 28) == corruption_scale(32, 32) == corruption_scale(63, 500) == "cifar"
    assert corruption_scale(64, 64) == corruption_scale(224, 224) == "imagenet"


# Saturate's published rows desaturate at severities 1-2 and oversaturate at 3-5, and elastic's CIFAR row 1 is a
# pure affine jitter larger than row 5's: neither grows in mean absolute difference from 1 to 5 (checked below
# on measures where they do).
NOT_MONOTONE_IN_MAD = {"saturate", "elastic_transform"}


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_every_severity_shape_dtype_and_strength(name, size, channels):
    x = photo(2, channels, size)
    outs = {severity: corrupt(x, name, severity) for severity in range(1, 6)}
    for y in outs.values():
        assert y.shape == x.shape and y.dtype == torch.uint8 and y.device == x.device
    assert mad(outs[5], x) > 0.5  # severity 5 visibly changes the image
    if name not in NOT_MONOTONE_IN_MAD:
        # strength measure: mean absolute pixel difference from the clean image, in uint8 levels
        assert mad(outs[5], x) > mad(outs[1], x)


@pytest.mark.parametrize("size", [28, 32])
def test_saturate_and_elastic_grow_on_their_own_measures(size):
    x = photo(2, 3, size)
    sat = {s: mad(corrupt(x, "saturate", s), x) for s in range(1, 6)}
    assert sat[2] > sat[1] and sat[5] > sat[4] > sat[3]  # each branch grows with severity
    ramp = torch.linspace(0, 255, size)
    plane = (ramp[None] / 2 + ramp[:, None] / 2).round().to(torch.uint8).expand(2, 3, size, size).contiguous()
    # a plane stays a plane under the affine part, so its Laplacian measures the elastic part alone
    assert laplacian_energy(corrupt(plane, "elastic_transform", 5)) > laplacian_energy(
        corrupt(plane, "elastic_transform", 1))


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_imagenet_size(name):
    x = photo(1, 3, 224)
    low, high = corrupt(x, name, 1), corrupt(x, name, 5)
    assert low.shape == high.shape == x.shape and high.dtype == torch.uint8
    assert mad(high, x) > 0.5


def test_gray_is_the_luma_of_the_replicated_rgb_result():
    gray = photo(2, 1, 32)
    for name in ("fog", "motion_blur", "jpeg_compression", "frost"):
        rgb = corrupt(gray.expand(-1, 3, -1, -1).contiguous(), name, 3).float()
        luma = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)
        assert (corrupt(gray, name, 3).float() - luma).abs().max() <= 1


def test_non_square_and_tiny_images():
    x = photo(2, 3, 40)[:, :, :, :30].contiguous()
    for name in ALL_CORRUPTIONS:
        assert corrupt(x, name, 4).shape == x.shape
    assert corrupt(photo(1, 3, 8), "glass_blur", 5).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_seeding_depends_on_the_image_index_only(name):
    x = photo(3, 3, 32)
    first = corrupt(x, name, 3, indices=[4, 5, 9], seed=7)
    assert torch.equal(first, corrupt(x, name, 3, indices=[4, 5, 9], seed=7))
    assert torch.equal(first[1:], corrupt(x[1:], name, 3, indices=[5, 9], seed=7))
    assert torch.equal(first[2:], corrupt(x[2:], name, 3, indices=torch.tensor([9]), seed=7))
    assert torch.equal(first, corrupt(x, name, 3, indices=np.array([4, 5, 9]), seed=np.int64(7)))
    other_seed = corrupt(x, name, 3, indices=[4, 5, 9], seed=8)
    assert torch.equal(other_seed, first) == (name in DETERMINISTIC)


def test_default_indices_are_positions():
    x = photo(2, 3, 32)
    assert torch.equal(corrupt(x, "shot_noise", 2), corrupt(x, "shot_noise", 2, indices=[0, 1]))
    assert not torch.equal(corrupt(x, "shot_noise", 2)[1], corrupt(x[1:], "shot_noise", 2)[0])


def test_scale_override_picks_the_other_table():
    x = photo(2, 3, 32)
    cifar, imagenet = corrupt(x, "gaussian_noise", 5), corrupt(x, "gaussian_noise", 5, scale="imagenet")
    assert torch.equal(cifar, corrupt(x, "gaussian_noise", 5, scale="cifar"))
    assert mad(imagenet, x) > 1.5 * mad(cifar, x)  # std .38 vs .10


def test_contrast_and_brightness_match_the_formulas():
    x = photo(2, 3, 32)
    f = x.float() / 255
    mean = f.mean((2, 3), keepdim=True)
    expected = (((f - mean) * 0.15 + mean).clamp(0, 1) * 255).round()
    assert (corrupt(x, "contrast", 5).float() - expected).abs().max() <= 1
    gray = torch.full((1, 1, 32, 32), 100, dtype=torch.uint8)  # gray: HSV value = the level itself
    assert torch.all(corrupt(gray, "brightness", 4) == 100 + 51)  # + 0.2 * 255
    assert torch.equal(corrupt(gray, "saturate", 2), gray)  # added saturation 0 leaves gray alone


def test_noise_levels():
    flat = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    diff = corrupt(flat, "gaussian_noise", 5).float() - 128
    assert abs(diff.std().item() / 255 - 0.10) < 0.01
    changed = (corrupt(flat, "impulse_noise", 5) != 128).float().mean().item()
    assert abs(changed - 0.07) < 0.02
    salt = (corrupt(flat, "impulse_noise", 5) == 255).float().mean().item()
    assert abs(salt - 0.035) < 0.015
    assert abs(corrupt(flat, "shot_noise", 5).float().mean().item() - 128) < 2


def test_jpeg_is_pillows_round_trip():
    x = photo(2, 3, 32)
    for k in range(2):
        buffer = io.BytesIO()
        Image.fromarray(x[k].permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=80)
        expected = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1)
        assert torch.equal(corrupt(x, "jpeg_compression", 1)[k], expected)


def test_pixelate_is_blocky():
    x = photo(1, 3, 32)
    y = corrupt(x, "pixelate", 5, scale="imagenet")  # factor .25: 8x8 blocks of 4x4 pixels
    assert torch.equal(y, y[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1))


def test_glass_blur_without_blur_only_moves_pixels():
    x = photo(2, 3, 32)
    y = corrupt(x, "glass_blur", 1)  # CIFAR row 1: sigma .05 px is no blur at all, so only the swaps remain
    assert not torch.equal(y, x)
    for before, after in zip(x, y):  # the same RGB pixels, rearranged
        assert sorted(map(tuple, after.flatten(1).T.tolist())) == sorted(map(tuple, before.flatten(1).T.tolist()))


@pytest.mark.parametrize("bad,message", [
    (torch.zeros(2, 3, 8, 8), "dtype torch.float32"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), r"shape \(3, 8, 8\)"),
    (torch.zeros(1, 2, 8, 8, dtype=torch.uint8), r"shape \(1, 2, 8, 8\)"),
])
def test_bad_images(bad, message):
    with pytest.raises(ValueError, match=message):
        corrupt(bad, "fog", 1)
    with pytest.raises(ValueError, match=message):
        perturbation_sequence(bad, "rotate")


def test_bad_arguments():
    x = photo(2, 3, 32)
    with pytest.raises(ValueError, match="unknown corruption 'blur'.*gaussian_noise.*saturate"):
        corrupt(x, "blur", 1)
    assert torch.equal(corrupt(x, "fog", np.int64(2)), corrupt(x, "fog", 2))
    for severity in (0, 6, 2.0, 2.5, True, "2"):
        with pytest.raises(ValueError, match="severity must be an integer 1..5"):
            corrupt(x, "fog", severity)
    with pytest.raises(ValueError, match="indices has 1 entries for 2 images"):
        corrupt(x, "fog", 1, indices=[3])
    with pytest.raises(ValueError, match="scale must be 'auto' or one of"):
        corrupt(x, "fog", 1, scale="tiny")
    with pytest.raises(ValueError, match="unknown perturbation 'fog'.*translate.*shear"):
        perturbation_sequence(x, "fog")
    with pytest.raises(ValueError, match="frames must be an integer 2..41 for translate at scale imagenet"):
        perturbation_sequence(x, "translate", frames=42, scale="imagenet")
    with pytest.raises(ValueError, match="difficulty must be 1, 2 or 3"):
        perturbation_sequence(x, "rotate", difficulty=4)


def test_published_frame_counts():
    assert perturbation_frames("translate", "imagenet") == 41 and perturbation_frames("translate", "cifar") == 16
    assert perturbation_frames("motion_blur", "imagenet") == 31 and perturbation_frames("motion_blur", "cifar") == 21
    assert all(perturbation_frames(name, "imagenet") == 31 for name in NOISE_PERTURBATIONS)


@pytest.mark.parametrize("name", ALL_PERTURBATIONS)
def test_sequence_shape_and_consecutive_frames(name):
    x = photo(2, 3, 32)
    seq = perturbation_sequence(x, name)
    t = perturbation_frames(name, "cifar")
    assert seq.shape == (2, t, 3, 32, 32) and seq.dtype == torch.uint8
    assert torch.equal(seq, perturbation_sequence(x, name))
    assert torch.equal(seq[1:], perturbation_sequence(x[1:], name, indices=[1]))
    moved = (seq[:, 1:].float() - seq[:, :-1].float()).abs().mean((2, 3, 4)) > 0
    if name == "snow":
        # near-vertical angles 4 degrees apart give the same whole-pixel taps at 32 px (ImageMagick rounds the
        # tap offsets too), so two or so frames repeat there, as in the published CIFAR-10-P
        assert moved.float().mean() > 0.85
    elif name == "spatter":
        assert torch.all(moved[:, :15])  # later the drops may all have run off the bottom edge (as published)
    else:
        assert torch.all(moved), f"{name}: some consecutive frames are equal"
    gray = perturbation_sequence(x[:, :1].contiguous(), name, frames=3)
    assert gray.shape == (2, 3, 1, 32, 32)


def test_noise_sequences_start_clean_and_every_frame_differs_from_the_first():
    x = photo(2, 3, 28)
    for name in NOISE_PERTURBATIONS:
        seq = perturbation_sequence(x, name, difficulty=2)
        assert torch.equal(seq[:, 0], x)
        assert all(not torch.equal(seq[:, k], seq[:, 0]) for k in range(1, seq.shape[1]))
        easy, hard = perturbation_sequence(x, name, difficulty=1), perturbation_sequence(x, name, difficulty=3)
        assert mad(hard[:, 1:], x[:, None]) > mad(easy[:, 1:], x[:, None])
        assert not torch.equal(perturbation_sequence(x, name, seed=1), easy)


def test_frames_gives_the_start_of_the_full_sequence():
    x = photo(2, 3, 28)
    for name in ("gaussian_noise", "shot_noise", "snow", "spatter", "zoom_blur"):
        assert torch.equal(perturbation_sequence(x, name, frames=4), perturbation_sequence(x, name)[:, :4])


def test_difficulty_leaves_other_sequences_alone():
    x = photo(1, 3, 32)
    assert torch.equal(perturbation_sequence(x, "rotate", difficulty=3), perturbation_sequence(x, "rotate"))


def test_translate_moves_one_pixel_per_frame_at_native_size():
    x = photo(1, 3, 32)
    seq = perturbation_sequence(x, "translate")  # CIFAR-P: 16 frames, shift k - 7 px
    for k in (0, 7, 10, 15):
        shift = k - 7
        assert torch.equal(seq[0, k, :, 5, 12], x[0, :, 5, 12 - shift])
    assert torch.equal(seq[0, 7], x[0])
    assert torch.all(seq[0, 0, :, :, -7:] == 0)  # shifted left by 7: black on the right


def test_brightness_sequence_is_centred_on_the_clean_image():
    x = photo(1, 3, 32)
    seq = perturbation_sequence(x, "brightness")
    assert mad(seq[0, 15], x[0]) <= 0.5 and seq[0, 30].float().mean() > seq[0, 0].float().mean()


def test_imagenet_sized_sequences():
    x = photo(1, 3, 224)
    assert perturbation_sequence(x, "translate", frames=3).shape == (1, 3, 3, 224, 224)
    assert perturbation_sequence(x, "tilt", frames=2).shape == (1, 2, 3, 224, 224)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_device_and_cpu():
    x = photo(2, 3, 32)
    for name in ALL_CORRUPTIONS:
        y = corrupt(x.cuda(), name, 3)
        assert y.device.type == "cuda" and y.shape == x.shape
        assert mad(y.cpu(), corrupt(x, name, 3)) < 2, name  # same draws, float differences only
    for name in ALL_PERTURBATIONS:
        assert perturbation_sequence(x.cuda(), name, frames=4).device.type == "cuda"


def test_benchmark_quick_runs(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "corruptions.py"
    spec = importlib.util.spec_from_file_location("corruptions_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick"])
    out = capsys.readouterr().out
    assert "| corruption |" in out and "gaussian_noise" in out
