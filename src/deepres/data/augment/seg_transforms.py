"""Joint image/mask transforms for segmentation, on one item: image uint8 (C, H, W), mask uint8 (H, W).

Geometry moves image and mask together: images are resized antialiased bilinear (or bicubic), masks always by
nearest neighbour (pixel centres, as PIL's NEAREST), so no mask value is ever interpolated. The training pipeline
is mmsegmentation's: RandomResize (ratio range over a base size) -> RandomCrop (cat_max_ratio) -> RandomFlip ->
Pad (image 0, mask 255) to the crop, but at a random offset, so the ignored band falls on every side and a
model learns no bottom/right edge; photometric jitter stays in the batch transform (image only). All
randomness comes from the generator passed in, so a seed gives the same crops on any machine.
"""
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from deepres.core.config import DataConfig
from deepres.core.preprocess import Preprocess

from . import transforms as T
from ..readers.seg_labels import IGNORE_INDEX

Interpolation = Literal["bilinear", "bicubic", "nearest"]  # of the image; "nearest" for label-like images, tests
CROP_REDRAWS = 10  # cat_max_ratio: at most this many crop boxes are tried (mmseg RandomCrop)


def resize_nearest(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of a (.., H, W) tensor of any dtype to (height, width); output pixel i takes
    input pixel floor((i + 0.5) * in / out), so values are copied, never mixed."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (height, width):
        return x
    rows = ((torch.arange(height, device=x.device) + 0.5) * (in_h / height)).long().clamp_(max=in_h - 1)
    cols = ((torch.arange(width, device=x.device) + 0.5) * (in_w / width)).long().clamp_(max=in_w - 1)
    return x[..., rows[:, None], cols[None, :]]


def resize_image(image: torch.Tensor, size, interpolation: Interpolation = "bilinear") -> torch.Tensor:
    """An image to (height, width): antialiased bilinear/bicubic (deepres.data.augment.transforms.resize) or nearest."""
    return resize_nearest(image, size) if interpolation == "nearest" else T.resize(image, size, interpolation)


def scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) times factor, rounded, at least 1 pixel each."""
    return max(1, int(round(height * factor))), max(1, int(round(width * factor)))


def base_factor(height: int, width: int, base_size: int, base_side: str) -> float:
    """The factor that brings the image's longer (or shorter) side to base_size pixels; 1 for base_size 0."""
    if base_size <= 0:
        return 1.0
    return base_size / (max(height, width) if base_side == "longer" else min(height, width))


def rescale(image: torch.Tensor, mask: torch.Tensor | None, factor: float,
            interpolation: Interpolation = "bilinear") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image and mask scaled by `factor` (the mask by nearest neighbour); a None mask stays None."""
    size = scaled_size(image.shape[-2], image.shape[-1], factor)
    return resize_image(image, size, interpolation), None if mask is None else resize_nearest(mask, size)


def _randint(generator: torch.Generator, high: int) -> int:
    """A uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=generator, device=generator.device).item())


def _dominated(mask: torch.Tensor, max_ratio: float) -> bool:
    """mmseg's RandomCrop test: the crop is redrawn unless it shows at least two non-ignore classes and none of
    them covers max_ratio or more of its non-ignore pixels."""
    counts = torch.bincount(mask.flatten().long(), minlength=256)[:IGNORE_INDEX]
    counts = counts[counts > 0]
    return not (len(counts) > 1 and counts.max().item() / counts.sum().item() < max_ratio)


@dataclass(frozen=True)
class SegTrainTransform:
    """Random rescale, crop, flip and pad: (image (C, H, W), mask (H, W)) -> exactly (C, crop, crop), (crop, crop)."""

    crop_size: int  # output side, pixels (data.image_size)
    scale_range: tuple[float, float] = (1.0, 1.0)  # factor drawn uniformly, applied after the base resize
    base_size: int = 0  # pixels of the image's base_side before the factor; 0 = as stored
    base_side: Literal["longer", "shorter"] = "longer"
    cat_max_ratio: float = 1.0  # < 1: redraw crops dominated by one class (see _dominated); 1 = off
    hflip: bool = True  # mirror with probability 0.5
    interpolation: Interpolation = "bilinear"

    def __post_init__(self):
        low, high = self.scale_range
        if self.crop_size < 1:
            raise ValueError(f"data.image_size (the crop side) must be >= 1, got {self.crop_size}")
        if not 0 < low <= high:
            raise ValueError(f"data.scale_range must be 0 < low <= high, got {tuple(self.scale_range)}")
        if self.base_size < 0:
            raise ValueError(f"data.base_size must be >= 0, got {self.base_size}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"data.cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "SegTrainTransform":
        return cls(crop_size=cfg.image_size, scale_range=tuple(cfg.scale_range), base_size=cfg.base_size,
                   base_side=cfg.base_side, cat_max_ratio=cfg.cat_max_ratio, hflip=cfg.hflip)

    def _crop_box(self, mask: torch.Tensor, generator: torch.Generator) -> tuple[int, int, int, int]:
        height, width = mask.shape
        crop_h, crop_w = min(self.crop_size, height), min(self.crop_size, width)

        def draw():
            return _randint(generator, height - crop_h), _randint(generator, width - crop_w), crop_h, crop_w

        box = draw()
        if self.cat_max_ratio < 1:
            for _ in range(CROP_REDRAWS):
                if not _dominated(T.crop(mask, *box), self.cat_max_ratio):
                    break
                box = draw()
        return box

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[-2:] != mask.shape:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        low, high = self.scale_range
        ratio = low + (high - low) * torch.rand(1, generator=generator, device=generator.device).item()
        factor = base_factor(image.shape[-2], image.shape[-1], self.base_size, self.base_side) * ratio
        if not math.isclose(factor, 1.0):
            image, mask = rescale(image, mask, factor, self.interpolation)
        box = self._crop_box(mask, generator)
        image, mask = T.crop(image, *box), T.crop(mask, *box)
        if self.hflip and torch.rand(1, generator=generator, device=generator.device).item() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        pad_h, pad_w = self.crop_size - mask.shape[0], self.crop_size - mask.shape[1]
        if pad_h or pad_w:
            # mmseg pads bottom/right only (0.x Pad: mmcv.impad(shape=); 1.x stack_batch: (0, w, 0, h)); here all sides
            top, left = _randint(generator, pad_h), _randint(generator, pad_w)
            padding = (left, pad_w - left, top, pad_h - top)  # F.pad order: left, right, top, bottom
            image = F.pad(image, padding, value=0)
            mask = F.pad(mask, padding, value=IGNORE_INDEX)
        return image.contiguous(), mask.contiguous()


@dataclass(frozen=True)
class SegEvalTransform:
    """The image resized so its base_side is test_size (0: as stored); the mask untouched, since predictions are
    scored at the stored size. The one segmentation eval resize: `deepres eval`'s loader and the Predictor
    (deepres.inference.preprocess, from the model's Preprocess) both run it."""

    test_size: int = 0  # pixels
    base_side: Literal["longer", "shorter"] = "longer"
    interpolation: Interpolation = "bilinear"

    def __post_init__(self):
        if self.test_size < 0:
            raise ValueError(f"data.test_size must be >= 0, got {self.test_size}")

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "SegEvalTransform":
        return cls(test_size=cfg.test_size, base_side=cfg.base_side)  # = from_preprocess(seg_eval_preprocess(cfg))

    @classmethod
    def from_preprocess(cls, pp: Preprocess) -> "SegEvalTransform":
        """The resize a Preprocess without a crop describes: its resize_side to pp.resize, or as stored ("none")."""
        if pp.crop_size:
            raise ValueError(f"a segmentation eval transform takes no crop, got crop_size {pp.crop_size}")
        if pp.resize_side == "none":
            return cls(test_size=0, interpolation=pp.interpolation)
        return cls(test_size=pp.resize, base_side=pp.resize_side, interpolation=pp.interpolation)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        """(image, mask): the image at the test size, the mask as given."""
        factor = base_factor(image.shape[-2], image.shape[-1], self.test_size, self.base_side)
        if not math.isclose(factor, 1.0):
            image = resize_image(image, scaled_size(image.shape[-2], image.shape[-1], factor), self.interpolation)
        return image, mask


def seg_eval_preprocess(cfg: DataConfig, in_chans: int) -> Preprocess:
    """A segmentation data config's eval transform as one Preprocess (read back by SegEvalTransform.from_preprocess):
    the `base_side` side to data.test_size, no crop, the config's normalisation. At test_size 0 the images stay as
    stored (resize_side "none"), and `resize` is data.image_size, the side of example inputs (exports, warm-up)."""
    return Preprocess(resize=cfg.test_size or cfg.image_size, crop_size=0, interpolation="bilinear",
                      resize_side=cfg.base_side if cfg.test_size else "none", mean=tuple(cfg.mean),
                      std=tuple(cfg.std), in_chans=in_chans, normalize=cfg.normalize)
