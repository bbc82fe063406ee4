"""ImageNet-P / CIFAR-10-P perturbation sequences (Hendrycks & Dietterich, ICLR 2019), made on the fly.

`perturbation_sequence(images, name)` turns uint8 (N, C, H, W) images into uint8 (N, T, C, H, W) sequences whose
frames follow the published progression, from hendrycks/robustness ImageNet-P/create_p/make_imagenet_p.py
("imagenet", native side 224) and make_cifar_p.py ("cifar", native side 32); the scale is chosen as in
deepres.data.corruptions (shorter side < 64 -> "cifar") and pixel sizes are rescaled by the same rule.

Frames T per perturbation (frame 0 first): noise 31 (frame 0 the clean image, then 30 independent draws), motion
blur 31 at ImageNet (angle 4 (i - 30) degrees) and 21 at CIFAR (9 (i - 20)), translate 41 at ImageNet (shift i - 20
px) and 16 at CIFAR (i - 7), every other one 31. `frames=k` gives exactly the first k frames of the full one.

Difficulty: for the noise perturbations (NOISE_PERTURBATIONS) it picks the noise level of Hendrycks' three data
sets (e.g. gaussian_noise, _2, _3); for the others the sequence is the same at every difficulty, because there
the published difficulty d is the stride between compared frames in the flip-rate metric, not a different video.
Noise perturbations compare every frame with frame 0; the others compare consecutive frames.

Differences from the published videos, which were made from the 256 px resized photo and cropped to 224: here the
image is all there is, so translate, rotate, tilt, scale and shear bring in black (0) where the source is outside
the image (CIFAR-P's behaviour). Translate moves by whole pixels, max(1, round(s)) px per frame (s = side /
native side), so consecutive frames always differ. Shear is torchvision 0.2's affine shear (the one Hendrycks
used): x' = x - sin(shear) y, y' = cos(shear) y about the centre. Frames were stored as H.264 video; here they
are exact (no codec loss). Spatter drips one row per frame at every size (the original's kernel).
"""
from collections.abc import Sequence

import numpy as np
import torch

from ..augment.transforms import luma
from .corruptions import (NATIVE_SIDE, adjust_hsv, check_images, gaussian_blur, generators, motion_blur, parse_names,
                          randn, resolve_scale, to_float_rgb, to_uint8, truncate_levels, warp, water_spatter,
                          zoom_center)

PERTURBATIONS = ("gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow", "brightness", "translate",
                 "rotate", "tilt", "scale")
EXTRA_PERTURBATIONS = ("speckle_noise", "gaussian_blur", "spatter", "shear")
ALL_PERTURBATIONS = PERTURBATIONS + EXTRA_PERTURBATIONS
NOISE_PERTURBATIONS = frozenset({"gaussian_noise", "shot_noise", "speckle_noise"})

# Frame counts and parameters from make_imagenet_p.py / make_cifar_p.py; noise rows are per difficulty 1..3.
_FRAMES = {"motion_blur": {"imagenet": 31, "cifar": 21}, "translate": {"imagenet": 41, "cifar": 16}}
_TABLES = {
    "gaussian_noise": {"imagenet": (.03, .05, .08), "cifar": (.02, .04, .06)},  # std
    "shot_noise": {"imagenet": (300, 120, 60), "cifar": (700, 400, 200)},  # photons per unit
    "speckle_noise": {"imagenet": (.05, .10, .15), "cifar": (.05, .07, .10)},  # std
    "motion_blur": {"imagenet": (10, 3, 4, 30), "cifar": (6, 1.8, 9, 20)},  # radius px, sigma px, deg/frame, centre
    "zoom_blur": {"imagenet": .004, "cifar": .004},  # zoom added per frame, frames averaged cumulatively
    # (mean, std, flake zoom, threshold, motion radius px, motion sigma px, image weight, first angle, deg/frame)
    "snow": {"imagenet": (.05, .3, 3, .5, 14, 4, .85, -150, 4), "cifar": (.05, .3, 2, .5, 10, 2, .85, -150, 4)},
    "brightness": {"imagenet": .02, "cifar": .015},  # HSV value added per frame, frame 15 unchanged
    "translate": {"imagenet": 20, "cifar": 7},  # frame i shifts right by (i - this) steps
    "rotate": {"imagenet": 1.0, "cifar": 1.0},  # degrees per frame, frame 15 upright
    "tilt": {"imagenet": 1.0, "cifar": .75},  # degrees per frame about both axes, frame 15 flat
    "scale": {"imagenet": (.40, .025), "cifar": (.70, .02)},  # first zoom, zoom added per frame
    "gaussian_blur": {"imagenet": (.25, .035, 6.0), "cifar": (.3, .015, 7.0)},  # first sigma px, per frame, truncate
    # (mean, std, blur sigma px, threshold, per-frame drip kernel down the rows)
    "spatter": {"imagenet": (.65, .27, 3.7, .69, (.05, .1, .15, .7)), "cifar": (.6, .265, 1.75, .7, (.2, .8))},
    "shear": {"imagenet": 1.0, "cifar": 1.0},  # degrees per frame, frame 15 unsheared
}


def _noise(x, p, gens, s, t, name):
    """Frame 0 clean, then t - 1 independent noisy copies."""
    n = x.shape[0]
    if name == "shot_noise":
        rates = (x * p).cpu()
        noisy = torch.stack([torch.poisson(r.expand(t - 1, *r.shape).contiguous(), generator=g)
                             for r, g in zip(rates, gens)]).to(x.device) / p
    else:
        z = randn(gens, (t - 1, *x.shape[1:]), x.device, std=p)
        noisy = x[:, None] + (z if name == "gaussian_noise" else x[:, None] * z)
    return torch.cat((x[:, None], noisy.clamp(0, 1).reshape(n, t - 1, *x.shape[1:])), 1)


def _frames_of(x, t):
    """(N, 3, H, W) -> (N * t, 3, H, W), each image repeated t times in a row."""
    return x.repeat_interleave(t, 0)


def _motion(x, p, gens, s, t):
    radius, sigma, step, centre = p
    angles = ((torch.arange(t) - centre) * step).float().repeat(x.shape[0])
    x = torch.round(x * 255) / 255
    return motion_blur(_frames_of(x, t), max(1.0, radius * s), sigma * s, angles).unflatten(0, (-1, t))


def _zoom(x, p, gens, s, t):
    frames, total = [x], x.clone()
    for i in range(1, t):
        total = total + zoom_center(x, 1 + p * i)
        frames.append(total / (i + 1))
    return torch.stack(frames, 1)


def _snow(x, p, gens, s, t):
    mean, std, zoom, threshold, radius, sigma, keep, first, step = p
    n, _, h, w = x.shape
    flakes = zoom_center(randn(gens, (1, h, w), x.device, mean, std), max(1.0, zoom * s))
    flakes = truncate_levels(torch.where(flakes < threshold, 0, flakes))
    angles = (first + step * torch.arange(t)).float().repeat(n)
    moving = motion_blur(_frames_of(flakes, t), max(1.0, radius * s), sigma * s, angles)
    moving = (torch.round(moving * 255) / 255).unflatten(0, (n, t))
    x = keep * x + (1 - keep) * torch.maximum(x, luma(x) * 1.5 + 0.5)
    return x[:, None] + moving + moving.flip(-2, -1)


def _brightness(x, p, gens, s, t):
    return torch.stack([adjust_hsv(x, 2, 1.0, (i - 15) * p) for i in range(t)], 1)


def _translate(x, p, gens, s, t):
    step = max(1, round(s))
    frames = []
    for i in range(t):
        shift = (i - p) * step
        frame = torch.zeros_like(x)
        width = x.shape[-1]
        if shift >= 0:
            frame[..., shift:] = x[..., :width - shift]
        else:
            frame[..., :width + shift] = x[..., -shift:]
        frames.append(frame)
    return torch.stack(frames, 1)


def _about_centre(forward: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse pixel maps (T, 3, 3) for 2x2 linear maps `forward` (T, 2, 2) applied about the image centre."""
    t = forward.shape[0]
    m = torch.eye(3, dtype=torch.float64).repeat(t, 1, 1)
    m[:, :2, :2] = forward.double()
    centre = torch.eye(3, dtype=torch.float64)
    centre[:2, 2] = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    back = torch.linalg.inv(centre)
    return torch.linalg.inv(centre @ m @ back)


def _linear_warp(x, forward):
    n, _, h, w = x.shape
    t = forward.shape[0]
    inverse = _about_centre(forward, h, w).repeat(n, 1, 1)
    return warp(_frames_of(x, t), inverse).unflatten(0, (n, t))


def _rotate(x, p, gens, s, t):
    a = torch.deg2rad((torch.arange(t, dtype=torch.float64) - 15) * p)
    cos, sin = torch.cos(a), torch.sin(a)
    return _linear_warp(x, torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), 1))


def _shear(x, p, gens, s, t):
    a = torch.deg2rad((torch.arange(t, dtype=torch.float64) - 15) * p)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return _linear_warp(x, torch.stack((torch.stack((one, -torch.sin(a)), -1),
                                        torch.stack((zero, torch.cos(a)), -1)), 1))


def _scale(x, p, gens, s, t):
    z = p[0] + p[1] * torch.arange(t, dtype=torch.float64)
    return _linear_warp(x, torch.diag_embed(torch.stack((z, z), -1)))


def _tilt(x, p, gens, s, t):
    """Hendrycks' camera tilt: rotate the image plane by phi = theta = (i - 15) p degrees about the y and x axes
    and project it back with focal length f = sqrt(w^2 + h^2) (his P2 T RX RY P1 homography)."""
    n, _, h, w = x.shape
    f = (w * w + h * h) ** 0.5
    p1 = torch.tensor([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]], dtype=torch.float64)
    p2 = torch.tensor([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1, 0]], dtype=torch.float64)
    shift = torch.eye(4, dtype=torch.float64)
    shift[2, 3] = f
    inverses = []
    for i in range(t):
        a = torch.deg2rad(torch.tensor((i - 15) * p, dtype=torch.float64))
        c, sn = torch.cos(a), torch.sin(a)
        rx = torch.eye(4, dtype=torch.float64)
        rx[1, 1], rx[1, 2], rx[2, 1], rx[2, 2] = c, -sn, sn, c
        ry = torch.eye(4, dtype=torch.float64)
        ry[0, 0], ry[0, 2], ry[2, 0], ry[2, 2] = c, -sn, sn, c
        inverses.append(torch.linalg.inv(p2 @ shift @ rx @ ry @ p1))
    return warp(_frames_of(x, t), torch.stack(inverses).repeat(n, 1, 1)).unflatten(0, (n, t))


def _gaussian_blur(x, p, gens, s, t):
    first, step, truncate = p
    return torch.stack([gaussian_blur(x, (first + step * i) * s, truncate=truncate) for i in range(t)], 1)


def _drip(liquid: torch.Tensor, kernel: tuple[float, ...]) -> torch.Tensor:
    """np.convolve(column, kernel, mode="same") down every column of (B, 1, H, W): liquid runs down."""
    k, h = len(kernel), liquid.shape[-2]
    offset = (k - 1) // 2
    out = torch.zeros_like(liquid)
    for j, weight in enumerate(kernel):
        shift = j - offset  # out[r] += kernel[j] * liquid[r - shift]
        if shift >= 0:
            out[..., shift:, :] += weight * liquid[..., :h - shift, :]
        else:
            out[..., :h + shift, :] += weight * liquid[..., -shift:, :]
    return out


def _spatter(x, p, gens, s, t):
    mean, std, sigma, threshold, kernel = p
    n, _, h, w = x.shape
    liquid = gaussian_blur(randn(gens, (1, h, w), x.device, mean, std), sigma * s)
    liquid = torch.where(liquid < threshold, 0, liquid)
    layers = [liquid]
    for _ in range(t - 1):
        layers.append(_drip(layers[-1], kernel))
    return water_spatter(_frames_of(x, t), torch.stack(layers, 1).flatten(0, 1), 0.6, s).unflatten(0, (n, t))


_FUNCTIONS = {
    "motion_blur": _motion, "zoom_blur": _zoom, "snow": _snow, "brightness": _brightness,
    "translate": _translate, "rotate": _rotate, "tilt": _tilt, "scale": _scale, "gaussian_blur": _gaussian_blur,
    "spatter": _spatter, "shear": _shear,
}


PERTURBATION_SETS = {"none": (), "standard": PERTURBATIONS, "extra": EXTRA_PERTURBATIONS, "all": ALL_PERTURBATIONS}


def parse_perturbations(text: str) -> list[str]:
    """--perturbations: none, standard (the 10 of mFR), extra (the 4 held-out), all, or names a,b,c."""
    return parse_names(text, PERTURBATION_SETS, "--perturbations")


def perturbation_frames(name: str, scale: str) -> int:
    """The published frame count T of perturbation `name` at `scale` ("imagenet" or "cifar")."""
    return _FRAMES.get(name, {}).get(scale, 31)


def perturbation_sequence(images: torch.Tensor, name: str, *, seed: int = 0,
                          indices: torch.Tensor | Sequence[int] | None = None, frames: int | None = None,
                          difficulty: int = 1, scale: str = "auto") -> torch.Tensor:
    """uint8 (N, T, C, H, W) ImageNet-P sequences of uint8 (N, C, H, W) images; T = the published count unless
    frames (2 .. published count) asks for the first `frames`. Seeding as deepres.data.corruptions.corrupt."""
    check_images(images)
    if name not in _TABLES:
        raise ValueError(f"unknown perturbation {name!r}; expected one of {', '.join(ALL_PERTURBATIONS)}")
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, np.integer)) or not 1 <= difficulty <= 3:
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty!r}")
    difficulty = int(difficulty)
    n, c, h, w = images.shape
    scale = resolve_scale(scale, h, w)
    published = perturbation_frames(name, scale)
    t = published if frames is None else frames
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 2 <= t <= published:
        raise ValueError(f"frames must be an integer 2..{published} for {name} at scale {scale}, got {frames!r}")
    t = int(t)
    gens = generators(indices, n, "perturbation", name, difficulty, int(seed))
    if n == 0:
        return images.new_zeros(0, t, c, h, w)
    x, s = to_float_rgb(images), min(h, w) / NATIVE_SIDE[scale]
    table = _TABLES[name][scale]
    if name in NOISE_PERTURBATIONS:
        # all published frames are drawn so that frames=k is exactly the first k of the full sequence
        out = _noise(x, table[difficulty - 1], gens, s, published, name)[:, :t]
    else:
        out = _FUNCTIONS[name](x, table, gens, s, t)
    return to_uint8(out, c)

