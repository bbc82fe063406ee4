"""Image transforms on tensors: one image as (C, H, W) or a batch as (N, C, H, W), uint8 or float (0-255 scale).

Random transforms take an explicit torch.Generator and draw their parameters on the generator's device (CPU
in deepres), so results depend only on the generator's seed, never on global RNG state; per-sample choices
(flip, crop offsets, jitter factors) are drawn for a whole batch at once and applied with tensor ops.
"""
import math

import torch
import torch.nn.functional as F


# AlexNet PCA lighting: eigenvalues / eigenvectors (columns) of the ImageNet RGB pixel covariance, 0-1 scale,
# as published with fb.resnet.torch (datasets/imagenet.lua).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# ITU-R 601 luma weights (Pillow's "L" conversion and cv2's RGB2GRAY), and Pillow's 16-bit fixed-point form of them
# (ImagingConvert rgb2l: they sum to 2^16, so a gray pixel keeps its value)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
LUMA_FIXED = (19595, 38470, 7471)


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(C,H,W) -> (1,C,H,W); returns whether the input was a single image."""
    if x.dim() == 3:
        return x.unsqueeze(0), True
    if x.dim() == 4:
        return x, False
    raise ValueError(f"expected an image (C,H,W) or batch (N,C,H,W), got shape {tuple(x.shape)}")


def _draw(generator: torch.Generator, fn, *args, **kwargs) -> torch.Tensor:
    return fn(*args, generator=generator, device=generator.device, **kwargs)


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.empty(n, device=generator.device).uniform_(low, high, generator=generator)


# ----------------------------------------------------------------------------------------------- geometry
def resize(x: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Antialiased bilinear (or bicubic, clamped to 0-255) resize to (height, width); uint8 in, uint8 out
    (rounded), float stays float."""
    height, width = _pair(size)
    batch, single = _batched(x)
    if batch.shape[-2:] == (height, width):
        return x
    out = F.interpolate(batch.float(), size=(height, width), mode=mode, antialias=True, align_corners=False)
    if mode == "bicubic":
        out = out.clamp_(0, 255)  # bicubic overshoots at edges
    if x.dtype == torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out[0] if single else out


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) when the shorter side becomes `size` (longer side truncated, as torchvision)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_shorter(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize so the shorter side is `size` pixels, keeping the aspect ratio."""
    return resize(x, shorter_side_size(x.shape[-2], x.shape[-1], size), mode)


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Crop a (.., H, W) tensor; the box must lie inside the image."""
    return x[..., top:top + height, left:left + width]


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """Central crop to `size`; an image smaller than the crop is zero-padded first (as torchvision)."""
    out_h, out_w = _pair(size)
    height, width = x.shape[-2:]
    if out_h > height or out_w > width:
        pad_h, pad_w = max(out_h - height, 0), max(out_w - width, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        height, width = x.shape[-2:]
    top = int(round((height - out_h) / 2.0))
    left = int(round((width - out_w) / 2.0))
    return crop(x, top, left, out_h, out_w)


def random_resized_crop_params(height: int, width: int, generator: torch.Generator,
                               scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Inception-style crop box (top, left, h, w): area fraction in `scale`, aspect ratio (w/h) in `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(generator, 1, scale[0], scale[1]).item()
        aspect = math.exp(_uniform(generator, 1, *log_ratio).item())
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(_draw(generator, torch.randint, 0, height - crop_h + 1, (1,)).item())
            left = int(_draw(generator, torch.randint, 0, width - crop_w + 1, (1,)).item())
            return top, left, crop_h, crop_w
    # Fallback after 10 misses: the whole image, clamped to the allowed aspect range, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w, crop_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_h, crop_w = height, int(round(height * max(ratio)))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(x: torch.Tensor, size, generator: torch.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Random area/aspect crop resized to `size`; one box per image of a batch."""
    batch, single = _batched(x)
    crops = []
    for image in batch:
        top, left, h, w = random_resized_crop_params(image.shape[-2], image.shape[-1], generator, scale, ratio)
        crops.append(resize(crop(image, top, left, h, w), size))
    out = torch.stack(crops)
    return out[0] if single else out


def pad_random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` pixels each side, then crop back to the input size at a random offset per image."""
    if padding == 0:
        return x
    batch, single = _batched(x)
    n, _, height, width = batch.shape
    padded = F.pad(batch, (padding, padding, padding, padding))
    tops = _draw(generator, torch.randint, 0, 2 * padding + 1, (n,)).to(x.device)
    lefts = _draw(generator, torch.randint, 0, 2 * padding + 1, (n,)).to(x.device)
    rows = tops[:, None] + torch.arange(height, device=x.device)  # (N, H)
    cols = lefts[:, None] + torch.arange(width, device=x.device)  # (N, W)
    index = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    out = out.permute(0, 3, 1, 2).contiguous()
    return out[0] if single else out


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror left-right."""
    return x.flip(-1)


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image of a batch (or the single image) with probability p."""
    batch, single = _batched(x)
    flip = (_draw(generator, torch.rand, batch.shape[0]) < p).to(x.device)
    out = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    return out[0] if single else out


# ------------------------------------------------------------------------------------------ eval presets
def resize_center_crop(x: torch.Tensor, resize_to: int, crop_size: int, mode: str = "bilinear") -> torch.Tensor:
    """Shorter side to `resize_to`, then the central `crop_size` square (the standard eval transform)."""
    return center_crop(resize_shorter(x, resize_to, mode), crop_size)


# ------------------------------------------------------------------------------------------- channels
def luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB on dim -3, kept as one channel ((.., 3, H, W) -> (.., 1, H, W)); one channel is
    returned as is. uint8: exactly Pillow's "L", (19595 R + 38470 G + 7471 B + 2^15) >> 16 (AutoAugment's ops and
    the channel conversion are defined on it); float: 0.299 R + 0.587 G + 0.114 B unrounded, on the input's scale."""
    if x.shape[-3] == 1:
        return x
    if x.dtype == torch.uint8:
        r, g, b = x.int().unbind(-3)
        fixed = r * LUMA_FIXED[0] + g * LUMA_FIXED[1] + b * LUMA_FIXED[2]
        return ((fixed + (1 << 15)) >> 16).to(torch.uint8).unsqueeze(-3)
    return (x * x.new_tensor(LUMA_WEIGHTS).view(3, 1, 1)).sum(dim=-3, keepdim=True)


def adapt_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Gray -> RGB by repetition, RGB -> gray by `luma` (uint8 stays uint8, float becomes float32); unchanged when
    the count already matches."""
    channels = x.shape[-3]
    if channels == in_chans:
        return x
    if channels == 1 and in_chans == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    if channels == 3 and in_chans == 1:
        return luma(x if x.dtype == torch.uint8 else x.float())
    raise ValueError(f"cannot convert {channels}-channel images to in_chans={in_chans}")


# ------------------------------------------------------------------------------------- photometric (float)


def color_jitter(x: torch.Tensor, generator: torch.Generator, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0) -> torch.Tensor:
    """Per-image brightness, contrast, saturation factors in [max(0, 1-s), 1+s], applied in that fixed order
    (torchvision shuffles it) to a float batch on the 0-255 scale; the result is clamped to 0-255."""
    batch, single = _batched(x)
    n = batch.shape[0]

    def factors(strength):
        low = max(0.0, 1.0 - strength)
        draws = _uniform(generator, n, low, 1.0 + strength)
        return draws.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)

    out = batch
    if brightness > 0:
        out = out * factors(brightness)
    if contrast > 0:
        mean = luma(out).mean(dim=(-3, -2, -1), keepdim=True)
        out = (out - mean) * factors(contrast) + mean
    if saturation > 0 and out.shape[1] == 3:
        gray = luma(out)
        out = (out - gray) * factors(saturation) + gray
    out = out.clamp(0, 255)
    return out[0] if single else out


def pca_lighting(x: torch.Tensor, generator: torch.Generator, alphastd: float) -> torch.Tensor:
    """AlexNet lighting noise: add eigvec @ (alpha * eigval) * 255 per image, alpha ~ N(0, alphastd),
    to a float RGB batch on the 0-255 scale."""
    if alphastd == 0:
        return x
    batch, single = _batched(x)
    if batch.shape[1] != 3:
        raise ValueError(f"PCA lighting needs RGB images, got {batch.shape[1]} channels")
    alpha = _draw(generator, torch.randn, batch.shape[0], 3) * alphastd
    eigval = torch.tensor(IMAGENET_EIGVAL, device=alpha.device)
    eigvec = torch.tensor(IMAGENET_EIGVEC, device=alpha.device)
    rgb = (alpha * eigval) @ eigvec.T * 255.0  # (N, 3): rgb[n, i] = sum_j eigvec[i, j] alpha[n, j] eigval[j]
    out = batch + rgb.to(device=x.device, dtype=x.dtype)[:, :, None, None]
    return out[0] if single else out


# ------------------------------------------------------------------------------------------ normalisation
def _channel_values(values, channels: int, name: str, device, dtype) -> torch.Tensor:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        pass
    elif len(values) == 1:
        values = values * channels
    elif channels == 1 and len(values) == 3:
        # The 3-channel default (ImageNet) on a gray set: use its average rather than fail.
        values = (sum(values) / 3,)
    else:
        raise ValueError(f"data.{name} has {len(values)} values but the images have {channels} channels")
    return torch.tensor(values, device=device, dtype=dtype).view(channels, 1, 1)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x/255 - mean) / std, per channel; x uint8 or float on the 0-255 scale; mean/std on the 0-1 scale."""
    channels = x.shape[-3]
    x = x.float()
    mean_t = _channel_values(mean, channels, "mean", x.device, x.dtype)
    std_t = _channel_values(std, channels, "std", x.device, x.dtype)
    if (std_t <= 0).any():
        raise ValueError(f"data.std must be positive, got {tuple(std)}")
    return (x / 255.0 - mean_t) / std_t


def subtract_mean(x: torch.Tensor, mean) -> torch.Tensor:
    """x - mean*255 per channel (neon-style plain mean subtraction; output stays on the 0-255 scale)."""
    channels = x.shape[-3]
    x = x.float()
    return x - _channel_values(mean, channels, "mean", x.device, x.dtype) * 255.0
