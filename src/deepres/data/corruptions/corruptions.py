"""ImageNet-C / CIFAR-10-C image corruptions (Hendrycks & Dietterich, ICLR 2019) as batched tensor code.

`corrupt(images, name, severity)` takes uint8 (N, C, H, W) images on any device and returns them corrupted, same
shape, dtype and device. The 15 standard corruptions (CORRUPTIONS, in the paper's order) and the 4 held-out ones
(EXTRA_CORRUPTIONS) are written here from scratch in torch (conv2d blurs, grid_sample warps, gathers for motion
blur and glass blur), so a batch that lives on a GPU is corrupted there; only JPEG goes through Pillow, per image.

Parameter tables: carried over number for number from hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py
("imagenet", native side 224) and make_cifar_c.py ("cifar", native side 32). `corruption_scale(h, w)` picks the
table: shorter side < 64 -> "cifar" (so CIFAR 32 and Fashion-MNIST 28 use it), else "imagenet"; scale= overrides.

Size rule: s = min(H, W) / native side. Every parameter that Hendrycks gives in pixels is multiplied by s: gaussian
and glass blur sigmas, the defocus disk radius, motion blur radius and sigma, elastic alpha / sigma / affine jitter,
snow flake zoom and its motion blur, spatter blur sigmas and distance cap. Integer sizes are rounded and floored
at 1 px (glass blur's max swap distance, kernel radii), so at s < 1 some severities of a parameter can coincide
while the other parameters of the row still keep the five severities apart. Fractions (pixelate's down-scale
factor, zoom factors, contrast, brightness, noise levels) are size-free and used as published. Fog's plasma
fractal is made at the next power of two >= max(H, W) and cropped, as the original does at 224 (256 -> 224).

Where the original calls OpenCV, ImageMagick or skimage, this module computes the same quantity in torch:
- motion blur is ImageMagick's MotionBlurImage kernel: a one-sided line of 2*ceil(radius)+1 taps with weights
  exp(-i^2 / 2 sigma^2), tap i at (round(i cos a), round(i sin a)), edge pixels repeated, at a random angle a;
- glass blur swaps every interior pixel once per iteration with a random partner at offset in [-d, d) as the
  original, but in (2d)^2 conflict-free phases instead of raster order (same swap set, order differs);
- elastic applies the random affine and the smoothed displacement field in one grid_sample (reflected border);
- spatter's water branch replaces Canny + distance transform with a gradient-magnitude edge map and a chessboard
  distance from max-pool dilations; histogram equalisation is done per image by rank;
- frost: Hendrycks' frost photographs are not ours to ship, so frost textures are made procedurally (a plasma
  fractal haze plus six-fold ice-needle streaks, bluish white), five textures per image size, each seeded by
  (size, texture number) and cached; each image picks one and a random crop, as the original picks a photo.
Outputs are rounded to the nearest level (the original truncates with np.uint8: at most one level apart).

Gray images (C = 1) are corrupted as RGB with the plane replicated, then turned back to one channel with
ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B). On gray input saturate's hue is 0 (red), as skimage's rgb2hsv
gives for gray; severities 1-3 (added saturation 0) leave a gray image as it is, 4-5 darken it by luma.

Seeding: every random draw for image k comes from its own torch.Generator (CPU), seeded by a blake2b hash of
(indices[k], name, severity, seed), so an image's corruption never depends on the batch it sits in.
"""
import functools
import hashlib
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..augment.transforms import luma  # ITU-R 601 on float RGB, as cv2's RGB2GRAY

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
SCALES = ("imagenet", "cifar")
NATIVE_SIDE = {"imagenet": 224, "cifar": 32}  # pixels: the side the scale's table was written for
CIFAR_BELOW = 64  # pixels: images whose shorter side is below this use the CIFAR table under scale="auto"


def _zooms(stop, step):
    """Hendrycks' np.arange(1, stop, step) zoom factors, kept as numpy computes them."""
    return tuple(float(z) for z in np.arange(1, stop, step))


# Per-severity rows (severity 1..5) from make_imagenet_c.py / make_cifar_c.py; the comment names the fields.
_TABLES = {
    "gaussian_noise": {"imagenet": (.08, .12, .18, .26, .38), "cifar": (.04, .06, .08, .09, .10)},  # std
    "shot_noise": {"imagenet": (60, 25, 12, 5, 3), "cifar": (500, 250, 100, 75, 50)},  # photons per unit
    "impulse_noise": {"imagenet": (.03, .06, .09, .17, .27), "cifar": (.01, .02, .03, .05, .07)},  # fraction
    "speckle_noise": {"imagenet": (.15, .2, .35, .45, .6), "cifar": (.06, .1, .12, .16, .2)},  # std
    "gaussian_blur": {"imagenet": (1, 2, 3, 4, 6), "cifar": (.4, .6, .7, .8, 1)},  # sigma px
    # (sigma px, max swap distance px, iterations)
    "glass_blur": {"imagenet": ((.7, 1, 2), (.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
                   "cifar": ((.05, 1, 1), (.25, 1, 1), (.4, 1, 1), (.25, 1, 2), (.4, 1, 2))},
    # (disk radius px, anti-alias sigma)
    "defocus_blur": {"imagenet": ((3, .1), (4, .5), (6, .5), (8, .5), (10, .5)),
                     "cifar": ((.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1))},
    # (radius px, sigma px)
    "motion_blur": {"imagenet": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
                    "cifar": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))},
    "zoom_blur": {"imagenet": (_zooms(1.11, .01), _zooms(1.16, .01), _zooms(1.21, .02), _zooms(1.26, .02),
                               _zooms(1.31, .03)),
                  "cifar": (_zooms(1.06, .01), _zooms(1.11, .01), _zooms(1.16, .01), _zooms(1.21, .01),
                            _zooms(1.26, .01))},
    # (mean, std, flake zoom, threshold, motion radius px, motion sigma px, image weight)
    "snow": {"imagenet": ((.1, .3, 3, .5, 10, 4, .8), (.2, .3, 2, .5, 12, 4, .7), (.55, .3, 4, .9, 12, 8, .7),
                          (.55, .3, 4.5, .85, 12, 8, .65), (.55, .3, 2.5, .85, 12, 12, .55)),
             "cifar": ((.1, .2, 1, .6, 8, 3, .95), (.1, .2, 1, .5, 10, 4, .9), (.15, .3, 1.75, .55, 10, 4, .9),
                       (.25, .3, 2.25, .6, 12, 6, .85), (.3, .3, 1.25, .65, 14, 12, .8))},
    # (image weight, frost weight)
    "frost": {"imagenet": ((1, .4), (.8, .6), (.7, .7), (.65, .7), (.6, .75)),
              "cifar": ((1, .2), (1, .3), (.9, .4), (.85, .4), (.75, .45))},
    # (fog strength, fractal decay)
    "fog": {"imagenet": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
            "cifar": ((.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75))},
    "brightness": {"imagenet": (.1, .2, .3, .4, .5), "cifar": (.05, .1, .15, .2, .3)},  # added to HSV value
    "contrast": {"imagenet": (.4, .3, .2, .1, .05), "cifar": (.75, .5, .4, .3, .15)},  # factor about the mean
    # (HSV saturation factor, added saturation)
    "saturate": {"imagenet": ((.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)),
                 "cifar": ((.3, 0), (.1, 0), (1.5, 0), (2, .1), (2.5, .2))},
    "jpeg_compression": {"imagenet": (25, 18, 15, 10, 7), "cifar": (80, 65, 58, 50, 40)},  # Pillow quality
    "pixelate": {"imagenet": (.6, .5, .4, .3, .25), "cifar": (.95, .9, .85, .75, .65)},  # down-scale factor
    # (alpha px, sigma px, affine jitter px); ImageNet's are 244 * fractions, 244 as in the original
    "elastic_transform": {
        "imagenet": ((244 * 2, 244 * .7, 244 * .1), (244 * 2, 244 * .08, 244 * .2), (244 * .05, 244 * .01, 244 * .02),
                     (244 * .07, 244 * .01, 244 * .02), (244 * .12, 244 * .01, 244 * .02)),
        "cifar": ((32 * 0, 32 * 0, 32 * .08), (32 * .05, 32 * .2, 32 * .07), (32 * .08, 32 * .06, 32 * .06),
                  (32 * .1, 32 * .04, 32 * .05), (32 * .1, 32 * .03, 32 * .03))},
    # (mean, std, blur sigma px, threshold, strength / mud sigma px, 0 = water or 1 = mud)
    "spatter": {"imagenet": ((.65, .3, 4, .69, .6, 0), (.65, .3, 3, .68, .6, 0), (.65, .3, 2, .68, .5, 0),
                             (.65, .3, 1, .65, 1.5, 1), (.67, .4, 1, .65, 1.5, 1)),
                "cifar": ((.62, .1, .7, .7, .5, 0), (.65, .1, .8, .7, .5, 0), (.65, .3, 1, .69, .5, 0),
                          (.65, .1, .7, .69, .6, 1), (.65, .1, .5, .68, .6, 1))},
}
WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise, RGB
MUD = (63 / 255, 42 / 255, 20 / 255)  # mud brown, RGB


# ---------------------------------------------------------------- checks, seeding, conversions

SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTION_SETS = {"standard": CORRUPTIONS, "extra": EXTRA_CORRUPTIONS, "all": ALL_CORRUPTIONS}


def parse_names(text: str, sets: dict[str, tuple[str, ...]], option: str) -> list[str]:
    """A set name (standard, extra, all, ...) or names separated by commas (from sets["all"]); ValueError naming
    the option and what is unknown."""
    if text in sets:
        return list(sets[text])
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in sets["all"]]
    if unknown or not names:
        raise ValueError(f"{option} {text}: {', '.join(unknown) or 'nothing'} is not known; give "
                         f"{' / '.join(sets)} or names from {', '.join(sets['all'])}")
    return names


def parse_corruptions(text: str) -> list[str]:
    """--corruptions: standard (the 15 of mCE), extra (the 4 held-out), all, or names a,b,c."""
    return parse_names(text, CORRUPTION_SETS, "--corruptions")


def parse_severities(text: str) -> list[int]:
    """--severities: '1-5', '3' or '1,3,5' -> sorted severities in 1..5; ValueError naming the option otherwise."""
    try:
        if "-" in text:
            low, high = (int(x) for x in text.split("-"))
            values = list(range(low, high + 1))
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--severities {text}: give a range (1-5) or severities separated by commas") from None
    if not values or any(v not in SEVERITIES for v in values):
        raise ValueError(f"--severities {text}: severities are 1 to 5")
    return sorted(set(values))


def corruption_scale(height: int, width: int) -> str:
    """The table scale="auto" uses: "cifar" when the shorter side is below 64 px, else "imagenet"."""
    return "cifar" if min(height, width) < CIFAR_BELOW else "imagenet"


def check_images(images: torch.Tensor) -> None:
    """A uint8 (N, C, H, W) batch with C in {1, 3}, or ValueError naming what is wrong."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        dtype = images.dtype if isinstance(images, torch.Tensor) else None
        raise ValueError(f"images must be uint8 (N, C, H, W) with C = 1 or 3, got shape {shape} dtype {dtype}")


def resolve_scale(scale: str, height: int, width: int) -> str:
    if scale == "auto":
        return corruption_scale(height, width)
    if scale not in SCALES:
        raise ValueError(f"scale must be 'auto' or one of {SCALES}, got {scale!r}")
    return scale


def generators(indices: torch.Tensor | Sequence[int] | None, count: int, *key) -> list[torch.Generator]:
    """One CPU generator per image, seeded by a stable hash of (indices[k], *key)."""
    index_list = list(range(count)) if indices is None else [int(i) for i in torch.as_tensor(indices).flatten()]
    if len(index_list) != count:
        raise ValueError(f"indices has {len(index_list)} entries for {count} images")
    gens = []
    for index in index_list:
        digest = hashlib.blake2b(repr((index, *key)).encode(), digest_size=8).digest()
        gens.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1))
    return gens


def draw(gens: list[torch.Generator], sample, device) -> torch.Tensor:
    """Stack sample(generator) over the images (drawn on CPU, so every device sees the same numbers)."""
    return torch.stack([sample(g) for g in gens]).to(device)


def rand(gens, shape, device, low=0.0, high=1.0) -> torch.Tensor:
    return low + (high - low) * draw(gens, lambda g: torch.rand(shape, generator=g), device)


def randn(gens, shape, device, mean=0.0, std=1.0) -> torch.Tensor:
    return mean + std * draw(gens, lambda g: torch.randn(shape, generator=g), device)


def to_float_rgb(images: torch.Tensor) -> torch.Tensor:
    x = images.float() / 255
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_uint8(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Float RGB in [0, 1] (any leading dims) -> uint8 with `channels` channels (luma for 1)."""
    if channels == 1:
        x = luma(x)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def truncate_levels(x: torch.Tensor) -> torch.Tensor:
    """np.uint8(clip(x, 0, 1) * 255) / 255, with a 1e-3 level guard so that a float32 value a hair under a
    level (an 8-bit image passed through unchanged) keeps its level."""
    return torch.floor(x.clamp(0, 1) * 255 + 1e-3) / 255


# ---------------------------------------------------------------- filters and warps

def _border_index(n: int, pad: int, mode: str, device) -> torch.Tensor:
    """Source index for positions -pad .. n+pad-1: "nearest" repeats the edge, "reflect" mirrors (d c b a | a b
    c d, scipy's reflect) and "reflect101" mirrors about the edge pixel (c b | a b c, OpenCV's default)."""
    i = torch.arange(-pad, n + pad, device=device)
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    period = 2 * n if mode == "reflect" else 2 * n - 2
    i = i.remainder(period)
    return torch.where(i < n, i, period - 1 - i if mode == "reflect" else period - i)


def pad2d(x: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    """Pad the last two dims by any amount (also more than the side) with the given border rule."""
    x = x.index_select(-2, _border_index(x.shape[-2], pad_h, mode, x.device))
    return x.index_select(-1, _border_index(x.shape[-1], pad_w, mode, x.device))


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """skimage/scipy's sampled Gaussian: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    return (k / k.sum()).float()


def filter_separable(x: torch.Tensor, kernel: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Correlate the last two dims of x (any leading dims) with `kernel` along rows and columns."""
    shape, r = x.shape, kernel.numel() // 2
    if r == 0:
        return x
    y = pad2d(x.reshape(-1, 1, *shape[-2:]), r, r, mode)
    k = kernel.to(x.device, x.dtype)
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return y.reshape(shape)


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian on the last two dims (its default border is "nearest")."""
    return filter_separable(x, gaussian_kernel1d(sigma, truncate), mode)


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect101") -> torch.Tensor:
    """Correlate the last two dims with one 2-D kernel of odd size (cv2.filter2D's default border)."""
    shape, (kh, kw) = x.shape, kernel.shape
    y = pad2d(x.reshape(-1, 1, *shape[-2:]), kh // 2, kw // 2, mode)
    return F.conv2d(y, kernel.to(x.device, x.dtype).view(1, 1, kh, kw)).reshape(shape)


def pixel_grid(height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x, y), each (H, W), float32."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return xs, ys


def sample(x: torch.Tensor, src_x: torch.Tensor, src_y: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Bilinear x (B, C, H, W) at pixel coordinates src_x, src_y (B, H', W'), pixel centres at integers."""
    h, w = x.shape[-2:]
    grid = torch.stack((2 * src_x / max(w - 1, 1) - 1, 2 * src_y / max(h - 1, 1) - 1), dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding, align_corners=True)


def warp(x: torch.Tensor, inverse: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """x (B, C, H, W) under projective maps: inverse (B, 3, 3) takes output pixel (x, y, 1) to source pixel."""
    h, w = x.shape[-2:]
    xs, ys = pixel_grid(h, w, x.device)
    points = torch.stack((xs, ys, torch.ones_like(xs)), dim=-1).reshape(-1, 3)
    src = points @ inverse.to(x.device, torch.float32).transpose(1, 2)  # (B, H*W, 3)
    src = src[..., :2] / src[..., 2:]
    return sample(x, src[..., 0].reshape(-1, h, w), src[..., 1].reshape(-1, h, w), padding)


def zoom_center(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom in about the centre by `factor` >= 1, keeping the size (Hendrycks' clipped_zoom, bilinear)."""
    h, w = x.shape[-2:]
    xs, ys = pixel_grid(h, w, x.device)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    src_x = ((xs - cx) / factor + cx).expand(x.shape[0], h, w)
    src_y = ((ys - cy) / factor + cy).expand(x.shape[0], h, w)
    return sample(x, src_x, src_y, "border")


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MotionBlurImage on x (B, C, H, W), one angle (degrees) per image: a one-sided line kernel
    of 2*ceil(radius)+1 taps, weight exp(-i^2 / 2 sigma^2), tap i at (round(i cos a), round(i sin a))."""
    b, c, h, w = x.shape
    taps = 2 * math.ceil(radius) + 1
    i = torch.arange(taps, dtype=torch.float64)
    weights = torch.exp(-i * i / (2 * max(sigma, 1e-6) ** 2))
    weights = (weights / weights.sum()).to(x.device, x.dtype)
    a = torch.deg2rad(angles.double().cpu())
    dx = torch.round(i[None] * torch.cos(a)[:, None]).long().to(x.device)  # (B, taps)
    dy = torch.round(i[None] * torch.sin(a)[:, None]).long().to(x.device)
    hwc = x.permute(0, 2, 3, 1)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    rows0, cols0 = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    out = torch.zeros_like(hwc)
    for t in range(taps):
        rows = (rows0[None] + dy[:, t:t + 1]).clamp(0, h - 1)[:, :, None]
        cols = (cols0[None] + dx[:, t:t + 1]).clamp(0, w - 1)[:, None, :]
        out += weights[t] * hwc[batch, rows, cols]
    return out.permute(0, 3, 1, 2)


def plasma_fractal(gens, size: int, decay: float, device) -> torch.Tensor:
    """Diamond-square height maps (B, size, size) in [0, 1], size a power of two, wrapping at the edges; the
    random amplitude starts at 100^2 and its square root falls by `decay` per level (as Hendrycks' wibble)."""
    b = len(gens)
    grid = torch.zeros(b, 1, 1, device=device)
    wibble = 100.0
    while grid.shape[-1] < size:
        n = grid.shape[-1]
        noise = rand(gens, (3, n, n), device, -1.0, 1.0) * wibble * wibble
        right, down = grid.roll(-1, -1), grid.roll(-1, -2)
        centre = (grid + right + down + down.roll(-1, -1)) / 4 + noise[:, 0]
        top = (grid + right + centre + centre.roll(1, -2)) / 4 + noise[:, 1]  # between corners along a row
        left = (grid + down + centre + centre.roll(1, -1)) / 4 + noise[:, 2]  # between corners along a column
        finer = torch.empty(b, 2 * n, 2 * n, device=device)
        finer[:, 0::2, 0::2], finer[:, 1::2, 1::2] = grid, centre
        finer[:, 0::2, 1::2], finer[:, 1::2, 0::2] = top, left
        grid, wibble = finer, wibble / decay
    low = grid.amin((-2, -1), keepdim=True)
    return (grid - low) / (grid.amax((-2, -1), keepdim=True) - low).clamp_min(1e-12)


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ---------------------------------------------------------------- colour

def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """skimage's rgb2hsv on dim -3, all in [0, 1]; gray pixels get hue 0 and saturation 0."""
    r, g, b = x.unbind(-3)
    v, _ = x.max(-3)
    delta = v - x.min(-3).values
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    d = delta.clamp_min(1e-12)
    h = torch.where(r == v, (g - b) / d, torch.where(g == v, 2 + (b - r) / d, 4 + (r - g) / d))
    h = torch.where(delta > 0, (h / 6).remainder(1.0), torch.zeros_like(h))
    return torch.stack((h, s, v), -3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-3)
    h6 = h * 6
    sector = torch.floor(h6).long().remainder(6)
    f = h6 - torch.floor(h6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = torch.stack((torch.stack((v, q, p, p, t, v)), torch.stack((t, v, v, q, p, p)),
                         torch.stack((p, p, t, v, v, q))))  # (3 channels, 6 sectors, ...)
    return table.gather(1, sector.unsqueeze(0).unsqueeze(0).expand(3, 1, *sector.shape)).squeeze(1).movedim(0, -3)


def adjust_hsv(x: torch.Tensor, channel: int, factor: float, offset: float) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv[..., channel, :, :] = (hsv[..., channel, :, :] * factor + offset).clamp(0, 1)
    return hsv_to_rgb(hsv)


# ---------------------------------------------------------------- corruptions: f(x, p, gens, s) -> float RGB

def _gaussian_noise(x, p, gens, s):
    return x + randn(gens, x.shape[1:], x.device, std=p)


def _shot_noise(x, p, gens, s):
    rates = (x * p).cpu()
    return torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates, gens)]).to(x.device) / p


def _impulse_noise(x, p, gens, s):
    u = rand(gens, x.shape[1:], x.device)  # u < p/2: pepper, p/2 <= u < p: salt (skimage's s&p, half each)
    return torch.where(u < p / 2, torch.zeros_like(x), torch.where(u < p, torch.ones_like(x), x))


def _speckle_noise(x, p, gens, s):
    return x + x * randn(gens, x.shape[1:], x.device, std=p)


def _gaussian_blur(x, p, gens, s):
    return gaussian_blur(x, p * s)


def _glass_blur(x, p, gens, s):
    sigma, delta, iterations = p[0] * s, max(1, round(p[1] * s)), p[2]
    n, c, h, w = x.shape
    x = truncate_levels(gaussian_blur(x, sigma))  # the original's np.uint8 between passes
    rows = torch.arange(delta + 1, h - delta + 1, device=x.device)  # pixels Hendrycks visits: d+1 .. side-d
    cols = torch.arange(delta + 1, w - delta + 1, device=x.device)
    offsets = draw(gens, lambda g: torch.randint(-delta, delta, (iterations, 2, h, w), generator=g), x.device)
    flat = x.reshape(n, c, h * w).clone()
    stride = 2 * delta  # pixels this far apart in both axes have disjoint swap pairs (offsets span 2d - 1)
    for it in range(iterations):
        for phase_r in range(stride):
            for phase_c in range(stride):
                pr, pc = rows[phase_r::stride], cols[phase_c::stride]
                if pr.numel() == 0 or pc.numel() == 0:
                    continue
                gr, gc = torch.meshgrid(pr, pc, indexing="ij")
                dy, dx = offsets[:, it, 0][:, gr, gc], offsets[:, it, 1][:, gr, gc]
                here = (gr * w + gc).reshape(1, 1, -1).expand(n, c, -1)
                there = ((gr + dy) * w + gc + dx).reshape(n, 1, -1).expand(n, c, -1)
                a, b = flat.gather(2, here), flat.gather(2, there)
                flat.scatter_(2, here, b)
                flat.scatter_(2, there, a)
    return gaussian_blur(flat.reshape(n, c, h, w), sigma)


def _disk_kernel(radius: float, alias_sigma: float) -> torch.Tensor:
    """Hendrycks' anti-aliased disk: ones where x^2 + y^2 <= r^2 on a grid of half-width 8 (or ceil(r) beyond 8),
    normalised, then a 3x3 (5x5 beyond 8) Gaussian of sigma alias_sigma with OpenCV's border."""
    # Cropping the 17x17 grid to floor(r) + 2 changes nothing (the border reflection still only sees zeros).
    half = min(8, math.floor(radius) + 2) if radius <= 8 else math.ceil(radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None] ** 2) <= radius ** 2).double()
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    g = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-g * g / (2 * alias_sigma ** 2))
    return filter_separable(disk, g / g.sum(), "reflect101").float()


def _defocus_blur(x, p, gens, s):
    return filter2d(x, _disk_kernel(p[0] * s, p[1]))


def _motion_blur(x, p, gens, s):
    angles = rand(gens, (), "cpu", -45.0, 45.0)
    x = torch.round(x.clamp(0, 1) * 255) / 255  # ImageMagick works on the 8-bit image
    return motion_blur(x, max(1.0, p[0] * s), p[1] * s, angles)


def _zoom_blur(x, p, gens, s):
    out = x.clone()
    for factor in p:
        out += zoom_center(x, factor)
    return out / (len(p) + 1)


def _snow(x, p, gens, s):
    mean, std, zoom, threshold, radius, sigma, keep = p
    n, _, h, w = x.shape
    flakes = randn(gens, (1, h, w), x.device, mean, std)
    flakes = zoom_center(flakes, max(1.0, zoom * s))
    flakes = truncate_levels(torch.where(flakes < threshold, 0, flakes))
    angles = rand(gens, (), "cpu", -135.0, -45.0)
    flakes = torch.round(motion_blur(flakes, max(1.0, radius * s), sigma * s, angles) * 255) / 255
    x = keep * x + (1 - keep) * torch.maximum(x, luma(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-2, -1)


@functools.lru_cache(maxsize=32)
def frost_texture(height: int, width: int, texture: int) -> torch.Tensor:
    """Procedural frost, (3, height, width) float in [0, 1] on CPU, the same for the same arguments: a plasma
    haze plus ice needles at six-fold angles with side needles, slightly blurred, tinted bluish white."""
    gen = [torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(
        repr(("frost", height, width, texture)).encode(), digest_size=8).digest(), "little") >> 1)]
    side = min(height, width)
    haze = plasma_fractal(gen, next_pow2(max(height, width)), 2.0, "cpu")[0, :height, :width]
    count = max(8, height * width // 300)
    u = rand(gen, (6, count), "cpu")[0]
    y0, x0 = u[0] * height, u[1] * width
    angle = (torch.floor(u[2] * 6) * math.pi / 3) + (u[3] - 0.5) * 0.4
    length, bright = (0.02 + 0.1 * u[4]) * side, 0.3 + 0.7 * u[5]
    steps = torch.linspace(0, 1, 48)
    ys = y0[:, None] + steps[None] * length[:, None] * torch.sin(angle)[:, None]
    xs = x0[:, None] + steps[None] * length[:, None] * torch.cos(angle)[:, None]
    # side needles at +-60 degrees from points along each needle, a third of its length
    base = torch.rand(count, generator=gen[0])[:, None] * length[:, None]
    side_angle = angle[:, None] + torch.tensor([[math.pi / 3, -math.pi / 3]])
    ys2 = (y0[:, None] + base * torch.sin(angle)[:, None])[..., None] + \
        steps[None, None] * (length[:, None, None] / 3) * torch.sin(side_angle)[..., None]
    xs2 = (x0[:, None] + base * torch.cos(angle)[:, None])[..., None] + \
        steps[None, None] * (length[:, None, None] / 3) * torch.cos(side_angle)[..., None]
    canvas = torch.zeros(height * width)
    for py, px, weight in ((ys, xs, bright[:, None]), (ys2, xs2, 0.6 * bright[:, None, None])):
        r, c = py.round().long() % height, px.round().long() % width
        canvas.index_add_(0, (r * width + c).flatten(), weight.expand(py.shape).flatten())
    needles = gaussian_blur(canvas.view(height, width).clamp(0, 1), 0.35 * side / 224 + 0.3)
    frost = (0.5 * haze + 1.2 * needles).clamp(0, 1)
    return frost[None] * torch.tensor([0.85, 0.92, 1.0]).view(3, 1, 1)


def _frost(x, p, gens, s):
    n, _, h, w = x.shape
    big_h, big_w = h + h // 2, w + w // 2  # the original crops from larger photos
    picks = draw(gens, lambda g: torch.cat((torch.randint(5, (1,), generator=g),
                                            torch.randint(big_h - h + 1, (1,), generator=g),
                                            torch.randint(big_w - w + 1, (1,), generator=g))), "cpu")
    crops = [frost_texture(big_h, big_w, int(t))[:, top:top + h, left:left + w] for t, top, left in picks.tolist()]
    return p[0] * x + p[1] * torch.stack(crops).to(x.device)


def _fog(x, p, gens, s):
    n, _, h, w = x.shape
    fog = plasma_fractal(gens, next_pow2(max(h, w)), p[1], x.device)[:, None, :h, :w]
    peak = x.amax((1, 2, 3), keepdim=True)
    return (x + p[0] * fog) * peak / (peak + p[0])


def _brightness(x, p, gens, s):
    return adjust_hsv(x, 2, 1.0, p)


def _saturate(x, p, gens, s):
    return adjust_hsv(x, 1, p[0], p[1])


def _contrast(x, p, gens, s):
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * p + mean


def _jpeg_compression(x, p, gens, s):
    out = []
    for image in to_uint8(x, 3).permute(0, 2, 3, 1).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=p)
        out.append(torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))))
    return torch.stack(out).permute(0, 3, 1, 2).to(x.device).float() / 255


def _box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Pillow's BOX resampling as an (n_out, n_in) matrix: output i averages the inputs whose centres fall in
    its box (width max(scale, 1) input pixels), which is nearest-neighbour when enlarging."""
    scale = n_in / n_out
    support = max(scale, 1.0) / 2
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    pos = torch.arange(n_in, dtype=torch.float64) + 0.5 - centre[:, None]
    m = ((pos > -support) & (pos <= support)).double()
    return (m / m.sum(1, keepdim=True)).float()


def _pixelate(x, p, gens, s):
    h, w = x.shape[-2:]
    small_h, small_w = max(1, int(h * p)), max(1, int(w * p))
    down_h, down_w = _box_matrix(h, small_h).to(x.device), _box_matrix(w, small_w).to(x.device)
    small = torch.round((down_h @ x @ down_w.T).clamp(0, 1) * 255) / 255  # Pillow keeps 8 bits in between
    return _box_matrix(small_h, h).to(x.device) @ small @ _box_matrix(small_w, w).to(x.device).T


def _elastic_transform(x, p, gens, s):
    alpha, sigma, jitter = (v * s for v in p)
    n, _, h, w = x.shape
    # random affine: three points about the centre, each moved by U(-jitter, jitter) px (as the original)
    cy, cx, r = h // 2, w // 2, min(h, w) // 3
    src = torch.tensor([[cx + r, cy + r], [cx - r, cy + r], [cx - r, cy - r]], dtype=torch.float64)
    dst = src + rand(gens, (3, 2), "cpu", -jitter, jitter).double()
    ones = torch.ones(n, 3, 1, dtype=torch.float64)
    # A maps dst -> src (homogeneous rows): the inverse of the affine that moves the points, for sampling
    a = torch.linalg.solve(torch.cat((dst, ones), -1), torch.cat((src.expand(n, 3, 2), ones), -1))
    inverse = a.transpose(1, 2)
    field = rand(gens, (2, h, w), x.device, -1.0, 1.0)
    field = gaussian_blur(field, sigma, "reflect", truncate=3.0) * alpha if sigma > 0 else field * 0
    xs, ys = pixel_grid(h, w, x.device)
    px, py = xs + field[:, 0], ys + field[:, 1]
    m = inverse.to(x.device, torch.float32)
    src_x = m[:, 0, 0, None, None] * px + m[:, 0, 1, None, None] * py + m[:, 0, 2, None, None]
    src_y = m[:, 1, 0, None, None] * px + m[:, 1, 1, None, None] * py + m[:, 1, 2, None, None]
    return sample(x, src_x, src_y, "reflection")


def _chessboard_distance(edges: torch.Tensor, cap: int) -> torch.Tensor:
    """Distance (px, chessboard metric) from each pixel to the nearest edge pixel of (B, 1, H, W), capped."""
    dist = torch.full_like(edges, float(cap))
    reached = edges
    for d in range(cap):
        dist = torch.where((reached > 0) & (dist == cap), torch.full_like(dist, float(d)), dist)
        reached = F.max_pool2d(reached, 3, 1, 1)
    return dist


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of uint8-valued (B, 1, H, W) float images, per image (OpenCV's LUT rule)."""
    b = x.shape[0]
    levels = x.reshape(b, -1).long()
    hist = torch.zeros(b, 256, device=x.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float))
    cdf = hist.cumsum(1)
    first = cdf.gather(1, (hist > 0).float().argmax(1, keepdim=True))
    lut = torch.round((cdf - first) * 255 / (levels.shape[1] - first).clamp_min(1)).clamp(0, 255)
    return lut.gather(1, levels).reshape(x.shape)


def water_spatter(x: torch.Tensor, liquid: torch.Tensor, strength: float, s: float) -> torch.Tensor:
    """Hendrycks' water drops on x (B, 3, H, W) from a thresholded liquid layer (B, 1, H, W): an edge map's
    distance transform (capped at 20 px), equalised, embossed and blurred, scales the liquid; add turquoise."""
    layer = torch.floor(liquid * 255).remainder(256)  # the original's astype(np.uint8)
    grad_y, grad_x = filter2d(layer, _SOBEL.T), filter2d(layer, _SOBEL)
    edges = (grad_x.abs() + grad_y.abs() > 150).float()  # stands in for Canny(50, 150)
    dist = _chessboard_distance(edges, max(2, round(20 * s)))
    dist = torch.floor(filter2d(dist, _BOX3)).clamp(0, 255)
    dist = filter2d(_equalize(dist), _EMBOSS).round().clamp(0, 255)  # cv2.CV_8U saturates
    dist = filter2d(dist, _BOX3)
    m = layer * dist
    m = m / m.amax((1, 2, 3), keepdim=True).clamp_min(1e-12) * strength
    return x + m * x.new_tensor(WATER).view(1, 3, 1, 1)


_SOBEL = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
_BOX3 = torch.full((3, 3), 1 / 9)
_EMBOSS = torch.tensor([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]])


def _spatter(x, p, gens, s):
    mean, std, sigma, threshold, strength, mud = p
    n, _, h, w = x.shape
    liquid = gaussian_blur(randn(gens, (1, h, w), x.device, mean, std), sigma * s)
    liquid = torch.where(liquid < threshold, 0, liquid)
    if not mud:
        return water_spatter(x, liquid, strength, s)
    m = gaussian_blur((liquid > threshold).float(), strength * s)
    m = torch.where(m < 0.8, 0, m)
    return x * (1 - m) + m * x.new_tensor(MUD).view(1, 3, 1, 1)


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur, "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness,
    "contrast": _contrast, "elastic_transform": _elastic_transform, "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression, "speckle_noise": _speckle_noise, "gaussian_blur": _gaussian_blur,
    "spatter": _spatter, "saturate": _saturate,
}


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int = 0,
            indices: torch.Tensor | Sequence[int] | None = None, scale: str = "auto") -> torch.Tensor:
    """Corrupt uint8 (N, C, H, W) images with `name` at `severity` 1..5; uint8, same shape and device.

    indices[k] (default k) names image k for seeding: its draws depend only on (indices[k], name, severity,
    seed). scale is "auto" (corruption_scale), "imagenet" or "cifar"."""
    check_images(images)
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(ALL_CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer 1..5, got {severity!r}")
    severity = int(severity)
    n, c, h, w = images.shape
    scale = resolve_scale(scale, h, w)
    gens = generators(indices, n, name, severity, int(seed))
    if n == 0:
        return images.clone()
    params = _TABLES[name][scale][severity - 1]
    out = _FUNCTIONS[name](to_float_rgb(images), params, gens, min(h, w) / NATIVE_SIDE[scale])
    return to_uint8(out, c)
