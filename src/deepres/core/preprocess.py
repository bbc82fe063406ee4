"""The one eval-transform type: what a classifier expects as input (shorter side, centre crop, interpolation,
normalisation, channels). Data configs, published weights records, checkpoints and exported files all describe
their preprocessing with it; deepres.inference.preprocess applies it to images."""
import math
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # 0-1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Eval transform: the `resize_side` side to `resize`, centre `crop_size` square (0: no crop, the whole
    resized image, as segmentation models see it; with resize_side "none" the image as stored), normalise."""

    resize: int = 256  # shorter (or `resize_side`) side before the centre crop, pixels
    crop_size: int = 224  # side of the square the model sees, pixels; 0 = no crop (segmentation)
    interpolation: str = "bilinear"  # antialiased "bilinear" (deepres training) or "bicubic" (timm weights)
    mean: tuple[float, ...] = IMAGENET_MEAN  # per channel, 0-1 scale (3 values on a 1-channel model: averaged)
    std: tuple[float, ...] = IMAGENET_STD  # per channel, 0-1 scale
    in_chans: int = 3  # channels the model takes; images are converted to it (gray <-> RGB; others must match)
    normalize: str = "meanstd"  # "meanstd": (x/255 - mean)/std; "mean": x - mean*255 (plain mean subtraction)
    # the side `resize` sets: "shorter" (classifiers, torchvision) or "longer"; "none" (no crop only): no resize, the
    # image as stored (segmentation at data.test_size 0), `resize` then only sizes example inputs (input_size)
    resize_side: str = "shorter"

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.resize < 1 or self.crop_size < 0:
            raise ValueError(f"preprocess resize must be >= 1 pixel and crop_size >= 0 (0 = no crop), got "
                             f"{self.resize}, {self.crop_size}")
        if self.resize_side not in ("shorter", "longer", "none"):
            raise ValueError(f"preprocess resize_side must be shorter, longer or none, got {self.resize_side!r}")
        if self.resize_side == "none" and self.crop_size:
            raise ValueError(f"preprocess resize_side none (images as stored) takes no crop, got crop_size "
                             f"{self.crop_size}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"preprocess interpolation must be bilinear or bicubic, got {self.interpolation!r}")
        if self.normalize not in ("meanstd", "mean"):
            raise ValueError(f"preprocess normalize must be meanstd or mean, got {self.normalize!r}")
        if self.in_chans < 1:
            raise ValueError(f"preprocess in_chans must be >= 1, got {self.in_chans}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one model input (without a crop: a square image resized to `resize`)."""
        side = self.crop_size or self.resize
        return self.in_chans, side, side

    @property
    def crop_pct(self) -> float:
        return (self.crop_size or self.resize) / self.resize


# data.eval_preset name -> (shorter side to resize to, centre crop side), pixels. Each name says its crop first:
# Assemble-ResNet's own "imagenet_224_256" means train at 224, evaluate at 256, so a bare "224_256" read either way.
EVAL_PRESETS = {
    "crop224_resize256": (256, 224),  # the torchvision / mmcls ImageNet test: shorter side 256, centre 224
    "crop256_resize257": (257, 256),  # Assemble-ResNet's "imagenet_224_256a" (their ResNet-152)
    "crop256_resize292": (292, 256),  # Assemble-ResNet's "imagenet_224_256" (Big-Little models; crop_pct 0.875)
    "crop320_resize320": (320, 320),  # ademxapp's ILSVRC test (iclass/ilsvrc.py: Scale(320), CenterCrop(320))
    # the whole 128-px Mini-Places2 image, for the neon multi-scale test (--test-scales 112,128,160,240 resizes it)
    "crop128_resize128": (128, 128),
}
# Names stored configs and runs used before the presets said their crop; they load and mean the same.
EVAL_PRESET_ALIASES = {
    "224_256": "crop224_resize256",
    "224_256a": "crop256_resize257",
    "256_292": "crop256_resize292",
}


def parse_eval_preset(preset: str, image_size: int) -> tuple[int, int] | None:
    """data.eval_preset -> (shorter side to resize to, centre crop side) in pixels; None for "none"."""
    if preset == "none":
        return None
    preset = EVAL_PRESET_ALIASES.get(preset, preset)
    if preset in EVAL_PRESETS:
        return EVAL_PRESETS[preset]
    if preset.startswith("crop_pct:"):
        try:
            crop_pct = float(preset.split(":", 1)[1])
        except ValueError:
            crop_pct = -1.0
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"data.eval_preset {preset!r}: crop_pct must be a number in (0, 1], e.g. crop_pct:0.875")
        return int(math.floor(image_size / crop_pct)), image_size
    raise ValueError(f"unknown data.eval_preset {preset!r}; expected none, {', '.join(EVAL_PRESETS)} or crop_pct:X")
