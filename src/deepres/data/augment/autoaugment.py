"""AutoAugment, RandAugment and TrivialAugment on uint8 batches (N, C, H, W), C = 1 or 3, on the batch's device.

Every image of a batch gets its own sub-policy / ops, signs and magnitudes (torchvision and kornia draw one per
call). A policy first draws a plan from the generator, one row per image: the op of each step, its argument
(the mapped magnitude, signed) and two uniforms for Cutout's centre. `apply_plan` then runs each step by
grouping the images by op, so a batch costs at most (steps x ops) tensor calls and no loop over pixels.

The ops follow Pillow's definitions (ImageOps, ImageEnhance), as torchvision's tensor ops and the TF/TPU code do:
blends truncate to uint8 (PIL's ImagingBlend), gray is Pillow's "L" (ITU-R 601, fixed point, rounded), geometry
samples the nearest pixel with pixel centres at +0.5 (PIL's affine transform), Color is the identity on gray
images (their gray image is themselves). Where a source differs from Pillow in an op, not in a magnitude, deepres
keeps Pillow's definition: TF's Contrast blends towards H*W/256 (its histogram sum / 256, not the mean), TF's
Sharpness truncates the smoothed image (Pillow and torchvision round), TF's geometry samples at integer pixel
coordinates (no half-pixel offset), and torchvision's Contrast uses the unrounded mean of a truncated gray image.

Magnitude conventions (`convention=`), each with its source:
- "torchvision": torchvision/transforms/autoaugment.py. Bins: 10 (AutoAugment), 31 (RandAugment,
  TrivialAugmentWide). Signed ops (Shear, Translate, Rotate, Brightness/Color/Contrast/Sharpness) flip sign with
  p=0.5. Shear linspace(0, 0.3); Translate linspace(0, 150/331 * width|height) px, truncated to int; Rotate
  linspace(0, 30) deg; enhance factor 1 + linspace(0, 0.9); Posterize bits 8 - round(i / ((bins-1)/4));
  Solarize threshold linspace(255, 0). TrivialAugmentWide: shear 0.99, translate 32 px, rotate 135 deg,
  enhance 0.99, posterize 8 - round(i / ((bins-1)/6)). Fill 0. AutoAugment: the paper's ImageNet policy;
  RandAugment / TrivialAugment: 14 ops (Identity and the 13 below, no Invert).
- "tf": tensorflow/tpu models/official/efficientnet/autoaugment.py, levels 0.._MAX_LEVEL=10. Rotate 30 l/10 deg
  and Shear 0.3 l/10, random sign; Translate translate_const l/10 px, random sign (250 px for AutoAugment,
  100 px for RandAugment); enhance factor l/10 * 1.8 + 0.1 (no sign); Posterize int(l/10 * 4) bits kept (level 8
  keeps 3 bits, level < 2.5 keeps none: a black image); Solarize threshold int(l/10 * 256); SolarizeAdd adds
  int(l/10 * 110) below 128; Cutout a square of side 2 int(l/10 * cutout_const) (100 AutoAugment, 40
  RandAugment) at a uniform centre. Fill 128 (their `replace`). AutoAugment: `policy_v0` (the EfficientNet
  policy, with SolarizeAdd); RandAugment: their 16 ops (no Identity; Invert, Cutout, SolarizeAdd), each applied.
  TF has no TrivialAugment: deepres draws one of the 16 ops at a uniform integer level 0..10 (RandAugment's
  constants).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deepres.core.config import parse_auto_augment

from .transforms import luma  # uint8: Pillow's "L", the gray image ImageEnhance and ImageOps work on

# Every op a plan can name; a plan stores indices into this tuple.
OP_NAMES = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
            "Contrast", "Sharpness", "Posterize", "Solarize", "SolarizeAdd", "AutoContrast", "Equalize", "Invert",
            "Cutout")
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}
CONVENTIONS = ("torchvision", "tf")
FILL = {"torchvision": 0, "tf": 128}  # outside the image after geometry; Cutout's value
_MAX_LEVEL = 10.0  # tf levels

# torchvision AutoAugmentPolicy.IMAGENET: (op, probability, magnitude bin of 10 or None)
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
# tensorflow/tpu efficientnet autoaugment.py policy_v0: (op, probability, level 0..10)
TF_POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)), (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)), (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)), (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)), (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)), (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)), (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)), (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)), (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)), (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)), (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)), (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)), (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
TORCHVISION_RAND_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                        "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
TF_RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
               "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")
_ENHANCE = {"Brightness", "Color", "Contrast", "Sharpness"}


# ------------------------------------------------------------------------------------------ magnitudes
def torchvision_argument(op: str, index: int | None, num_bins: int, height: int, width: int,
                         wide: bool = False) -> tuple[float, float]:
    """The op's argument for bin `index` of `num_bins` as torchvision maps it: (with a + sign, with a - sign)."""
    if index is None or op in ("Identity", "AutoContrast", "Equalize", "Invert"):
        return 0.0, 0.0
    t = index / (num_bins - 1)  # position along linspace(0, max, num_bins)
    if op == "Posterize":
        bits = float(8 - round(index / ((num_bins - 1) / (6 if wide else 4))))
        return bits, bits
    if op == "Solarize":
        return 255.0 * (1 - t), 255.0 * (1 - t)
    if op in ("TranslateX", "TranslateY"):
        side = width if op == "TranslateX" else height
        pixels = float(int((32.0 if wide else 150.0 / 331.0 * side) * t))  # torchvision's int(magnitude)
        return pixels, -pixels
    top = {"ShearX": 0.3, "ShearY": 0.3, "Rotate": 30.0}.get(op, 0.9)  # enhance ops: 0.9
    if wide:
        top = {"ShearX": 0.99, "ShearY": 0.99, "Rotate": 135.0}.get(op, 0.99)
    base = 1.0 if op in _ENHANCE else 0.0  # torchvision's enhance factor is 1 + magnitude
    return base + top * t, base - top * t


def tf_argument(op: str, level: float, translate_const: float, cutout_const: float) -> tuple[float, float]:
    """The op's argument for `level` (0..10) as the TF/TPU code maps it: (with a + sign, with a - sign)."""
    fraction = level / _MAX_LEVEL
    if op in ("Identity", "AutoContrast", "Equalize", "Invert"):
        return 0.0, 0.0
    if op in _ENHANCE:
        factor = fraction * 1.8 + 0.1
        return factor, factor
    unsigned = {"Posterize": lambda: int(fraction * 4), "Solarize": lambda: int(fraction * 256),
                "SolarizeAdd": lambda: int(fraction * 110), "Cutout": lambda: int(fraction * cutout_const)}
    if op in unsigned:
        value = float(unsigned[op]())
        return value, value
    top = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3}.get(op, translate_const)  # translate: pixels
    return fraction * top, -fraction * top


# -------------------------------------------------------------------------------------------- the ops
# Each op: (x uint8 (n, C, H, W), arg float (n,), aux float (n, 2) in [0, 1), fill) -> uint8 (n, C, H, W).
def _sample(x: torch.Tensor, src_x: torch.Tensor, src_y: torch.Tensor, fill: int) -> torch.Tensor:
    """Nearest pixel at source coordinates (n, H, W) (pixel centres at integers); `fill` outside the image."""
    n, c, h, w = x.shape
    col = torch.floor(src_x + 0.5).long()  # PIL: floor of the coordinate measured from the pixel corner
    row = torch.floor(src_y + 0.5).long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, flat).view(n, c, h, w)
    return torch.where(inside[:, None], out, torch.full_like(out, fill))


def _grid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32),
                            torch.arange(w, device=x.device, dtype=torch.float32), indexing="ij")
    return xs[None], ys[None]


def shear_x(x, arg, aux, fill):
    """Output (x, y) takes input (x + m (y + 0.5), y): PIL's affine (1, m, 0, 0, 1, 0), torchvision's center=[0, 0]."""
    xs, ys = _grid(x)
    return _sample(x, xs + arg.view(-1, 1, 1) * (ys + 0.5), ys.expand(len(x), -1, -1), fill)


def shear_y(x, arg, aux, fill):
    xs, ys = _grid(x)
    return _sample(x, xs.expand(len(x), -1, -1), ys + arg.view(-1, 1, 1) * (xs + 0.5), fill)


def translate_x(x, arg, aux, fill):
    """A positive argument moves the content right by `arg` pixels."""
    xs, ys = _grid(x)
    return _sample(x, xs - arg.view(-1, 1, 1), ys.expand(len(x), -1, -1), fill)


def translate_y(x, arg, aux, fill):
    xs, ys = _grid(x)
    return _sample(x, xs.expand(len(x), -1, -1), ys - arg.view(-1, 1, 1), fill)


def rotate(x, arg, aux, fill):
    """Rotate by `arg` degrees about the image centre, counter-clockwise for a positive angle (PIL, torchvision)."""
    xs, ys = _grid(x)
    cx, cy = (x.shape[-1] - 1) / 2, (x.shape[-2] - 1) / 2
    theta = torch.deg2rad(arg.float()).view(-1, 1, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx, dy = xs - cx, ys - cy
    return _sample(x, cx + dx * cos - dy * sin, cy + dx * sin + dy * cos, fill)


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """degenerate + factor (image - degenerate), clamped and truncated to uint8 (PIL's Image.blend)."""
    out = degenerate.float() + factor.float().view(-1, 1, 1, 1) * (image.float() - degenerate.float())
    return out.clamp(0, 255).to(torch.uint8)


def brightness(x, arg, aux, fill):
    return _blend(torch.zeros_like(x), x, arg)


def color(x, arg, aux, fill):
    return _blend(luma(x).expand_as(x), x, arg)


def contrast(x, arg, aux, fill):
    """Blend with the gray image's mean, rounded to an integer (PIL's ImageEnhance.Contrast)."""
    mean = torch.floor(luma(x).float().mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(x), x, arg)


def sharpness(x, arg, aux, fill):
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13, rounded; the border pixels unfiltered)."""
    n, c, h, w = x.shape
    degenerate = x.clone()
    if h > 2 and w > 2:
        kernel = torch.ones(1, 1, 3, 3, device=x.device)
        kernel[0, 0, 1, 1] = 5.0
        smooth = F.conv2d(x.reshape(n * c, 1, h, w).float(), kernel / 13.0)
        degenerate[:, :, 1:-1, 1:-1] = smooth.round().clamp(0, 255).to(torch.uint8).view(n, c, h - 2, w - 2)
    return _blend(degenerate, x, arg)


def posterize(x, arg, aux, fill):
    """Keep the `arg` high bits of each value (0 bits: black)."""
    shift = (8 - arg.long()).view(-1, 1, 1, 1)
    return ((x.int() >> shift) << shift).to(torch.uint8)


def solarize(x, arg, aux, fill):
    """Invert the values >= the threshold `arg`."""
    return torch.where(x.float() >= arg.view(-1, 1, 1, 1), 255 - x, x)


def solarize_add(x, arg, aux, fill):
    """Add `arg` to the values below 128, clamped (TF's solarize_add)."""
    added = (x.int() + arg.long().view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
    return torch.where(x < 128, added, x)


def autocontrast(x, arg, aux, fill):
    """Stretch each channel to 0..255: floor((v - lo) 255 / (hi - lo)); a flat channel unchanged."""
    v = x.int()
    lo = v.amin(dim=(2, 3), keepdim=True)
    hi = v.amax(dim=(2, 3), keepdim=True)
    stretched = (v - lo) * 255 // (hi - lo).clamp(min=1)
    return torch.where(hi > lo, stretched, v).to(torch.uint8)


def equalize(x, arg, aux, fill):
    """PIL's ImageOps.equalize per channel: step = (pixels - count of the top value) // 255,
    lut[i] = (step // 2 + pixels below i) // step; unchanged where step is 0."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    top_count = hist.gather(1, flat.amax(dim=1, keepdim=True))
    step = (h * w - top_count) // 255  # (n*c, 1)
    below = torch.cumsum(hist, dim=1) - hist  # pixels with a smaller value
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.to(torch.uint8).view(n, c, h, w)


def invert(x, arg, aux, fill):
    return 255 - x


def identity(x, arg, aux, fill):
    return x


def cutout(x, arg, aux, fill):
    """Fill a square of side 2 `arg` centred on a uniform pixel (aux), clipped to the image (TF's cutout)."""
    h, w = x.shape[-2:]
    xs, ys = _grid(x)
    cy = torch.floor(aux[:, 0] * h).view(-1, 1, 1)
    cx = torch.floor(aux[:, 1] * w).view(-1, 1, 1)
    pad = arg.view(-1, 1, 1)
    inside = (ys >= cy - pad) & (ys < cy + pad) & (xs >= cx - pad) & (xs < cx + pad)
    return torch.where(inside[:, None], torch.full_like(x, fill), x)


OPS = {"Identity": identity, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
       "TranslateY": translate_y, "Rotate": rotate, "Brightness": brightness, "Color": color, "Contrast": contrast,
       "Sharpness": sharpness, "Posterize": posterize, "Solarize": solarize, "SolarizeAdd": solarize_add,
       "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert, "Cutout": cutout}


# ------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class AugmentPlan:
    """Per image and step: the op (index into OP_NAMES; Identity when the step is skipped), its argument and
    two uniforms in [0, 1) (Cutout's centre row and column)."""

    ops: torch.Tensor  # (N, steps) int64
    args: torch.Tensor  # (N, steps) float32
    aux: torch.Tensor  # (N, steps, 2) float32

    def row(self, i: int) -> "AugmentPlan":
        return AugmentPlan(self.ops[i:i + 1], self.args[i:i + 1], self.aux[i:i + 1])


def apply_plan(images: torch.Tensor, plan: AugmentPlan, fill: int) -> torch.Tensor:
    """Run the plan on a uint8 batch, step by step, each op once on the images that chose it."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"auto augment needs a uint8 batch (N, 1 or 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    x = images
    ops, args, aux = (t.to(images.device) for t in (plan.ops, plan.args, plan.aux))
    for step in range(ops.shape[1]):
        for index in torch.unique(ops[:, step]).tolist():
            if OP_NAMES[index] == "Identity":
                continue
            chosen = (ops[:, step] == index).nonzero().squeeze(1)
            x = x.clone() if x is images else x
            x[chosen] = OPS[OP_NAMES[index]](x[chosen], args[chosen, step], aux[chosen, step], fill)
    return x


def _signed_args(plus: torch.Tensor, minus: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    positive = torch.randint(0, 2, plus.shape, generator=generator, device=generator.device).bool()
    return torch.where(positive, plus, minus)


def _uniforms(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device)


@dataclass(frozen=True)
class AutoAugment:
    """One of the AutoAugment family on uint8 batches, with a different draw for every image."""

    policy: str  # "autoaugment", "randaugment" or "trivialaugment"
    convention: str = "torchvision"  # "torchvision" or "tf": magnitudes, fill, policy table, op set
    num_ops: int = 2  # randaugment: ops per image (N)
    magnitude: int = 9  # randaugment: bin of 31 (torchvision) or level 0..10 (tf) (M)

    def __post_init__(self):
        if self.policy not in ("autoaugment", "randaugment", "trivialaugment"):
            raise ValueError(f"unknown auto augment policy {self.policy!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown auto augment convention {self.convention!r}; expected torchvision or tf")

    @classmethod
    def from_spec(cls, spec: str, convention: str = "torchvision") -> "AutoAugment | None":
        """From data.auto_augment ("" -> None) and data.auto_augment_convention."""
        parsed = parse_auto_augment(spec, convention)
        if parsed is None:
            return None
        policy, num_ops, magnitude = parsed
        return cls(policy, convention, num_ops, magnitude)

    @property
    def fill(self) -> int:
        return FILL[self.convention]

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return apply_plan(images, self.plan(images.shape[0], images.shape[-2], images.shape[-1], generator),
                          self.fill)

    def plan(self, n: int, height: int, width: int, generator: torch.Generator) -> AugmentPlan:
        """Draw every image's ops and arguments from `generator` (on its device) in a fixed order."""
        if self.policy == "autoaugment":
            return self._autoaugment_plan(n, height, width, generator)
        if self.convention == "torchvision":
            names = TORCHVISION_RAND_OPS
            wide = self.policy == "trivialaugment"

            def argument(op, level):
                return torchvision_argument(op, level, 31, height, width, wide=wide)
        else:
            names = TF_RAND_OPS

            def argument(op, level):
                return tf_argument(op, level, translate_const=100.0, cutout_const=40.0)
        steps = self.num_ops if self.policy == "randaugment" else 1
        levels = 31 if self.convention == "torchvision" else int(_MAX_LEVEL) + 1
        # table[op, level] = (plus, minus) for every op of the set and every level
        table = torch.tensor([[argument(op, level) for level in range(levels)] for op in names])
        choice = torch.randint(0, len(names), (n, steps), generator=generator, device=generator.device)
        if self.policy == "randaugment":
            level = torch.full((n, steps), self.magnitude, dtype=torch.long, device=generator.device)
        else:
            level = torch.randint(0, levels, (n, steps), generator=generator, device=generator.device)
        pair = table.to(choice.device)[choice, level]  # (n, steps, 2)
        args = _signed_args(pair[..., 0], pair[..., 1], generator)
        index = torch.tensor([OP_INDEX[op] for op in names], device=choice.device)
        return AugmentPlan(index[choice], args.float(), _uniforms(generator, n, steps, 2))

    def _autoaugment_plan(self, n: int, height: int, width: int, generator: torch.Generator) -> AugmentPlan:
        if self.convention == "torchvision":
            policies = IMAGENET_POLICY

            def argument(op, level):
                return torchvision_argument(op, level, 10, height, width)
        else:
            policies = TF_POLICY_V0

            def argument(op, level):
                return tf_argument(op, level, translate_const=250.0, cutout_const=100.0)
        ops = torch.tensor([[OP_INDEX[op] for op, _, _ in sub] for sub in policies])  # (P, 2)
        probs = torch.tensor([[p for _, p, _ in sub] for sub in policies])
        pairs = torch.tensor([[argument(op, level) for op, _, level in sub] for sub in policies])  # (P, 2, 2)
        device = generator.device
        chosen = torch.randint(0, len(policies), (n,), generator=generator, device=device)
        applied = _uniforms(generator, n, 2) < probs.to(device)[chosen]
        pair = pairs.to(device)[chosen]
        args = _signed_args(pair[..., 0], pair[..., 1], generator)
        op = torch.where(applied, ops.to(device)[chosen], OP_INDEX["Identity"])
        return AugmentPlan(op, args.float(), _uniforms(generator, n, 2, 2))

