"""int8 on the CPU: the calibration stored with a model's weights (`Int8Calibration`, a checkpoint's
int8_calibration metadata) and the mechanics of post-training static quantization (torch.ao FX graph mode, x86
backend): observe the activations, calibrate, save and load the observed ranges, convert, and run one converted copy
per input shape. When int8 runs by default is plan.choose_path's decision (AGREEMENT_BAR and the CPU rules there).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import torch
import torch.fx
import torch.nn as nn

CALIBRATION_FORMAT = 1  # bump when the stored layout changes


@dataclass
class Int8Calibration:
    """What int8 needs to rebuild a model's quantized copy without images, and how well that copy agreed."""

    ranges: dict[str, list[float]]  # FX observer name -> [min, max] of that activation on the calibration images
    agreement: float  # % of evaluation images whose int8 top-1 class equals the fp32 model's
    eval_images: int  # images the agreement was measured on
    calibration_images: int  # images the ranges were observed on
    cpu: str = ""  # the CPU it was measured on (model name) ...
    cpu_int8: list[str] = field(default_factory=list)  # ... and its int8 flags (the kernels differ without VNNI)
    torch: str = ""
    format: int = CALIBRATION_FORMAT

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data, where: str = "int8_calibration") -> "Int8Calibration":
        """The stored form back; ValueError naming `where` and the key for anything malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != CALIBRATION_FORMAT:
            raise ValueError(f"{where}: format {data.get('format')!r}, this version reads {CALIBRATION_FORMAT}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        missing = {"ranges", "agreement", "eval_images", "calibration_images"} - set(data)
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        ranges = data["ranges"]
        if not isinstance(ranges, dict) or not all(
                isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
                for v in ranges.values()):
            raise ValueError(f"{where}: 'ranges' must map observer names to [min, max]")
        agreement = data["agreement"]
        if not isinstance(agreement, (int, float)) or not 0 <= agreement <= 100:
            raise ValueError(f"{where}: 'agreement' must be a percentage, got {agreement!r}")
        return cls(**data)


class PerShapeInt8:
    """A converted int8 model kept once per input shape. The x86 quantized convolutions build their oneDNN
    primitive for the first input shape they see and rebuild it on every call of any other shape: measured on
    ResNet-50 (one process, same machine), batch 1 ran at 68 img/s on a copy first called with batch 16 against
    93 on a fresh copy, and batch 16 at 186 against 196 the other way round. So each new shape gets its own copy of
    the never-called model (ResNet-50 int8: about 25 MB each), up to MAX_SHAPES; later shapes share the first."""

    MAX_SHAPES = 8

    def __init__(self, module: nn.Module):
        self.pristine = module  # never called, so copies of it hold no shape
        self.by_shape: dict[tuple[int, ...], nn.Module] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        module = self.by_shape.get(shape)
        if module is None:
            if len(self.by_shape) < self.MAX_SHAPES:
                module = self.by_shape[shape] = copy.deepcopy(self.pristine)
            else:
                module = next(iter(self.by_shape.values()))
        return module(x)


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor] | None, example: torch.Tensor, *,
                  ranges: dict[str, Sequence[float]] | None = None) -> nn.Module:
    """Post-training static int8 quantization (torch.ao FX graph mode, x86 backend): conv-BN-ReLU fused, weights
    per-channel symmetric, activations per-tensor from their min/max over the `calibration` batches, or from
    `ranges` (activation_ranges of an earlier calibration of the same model: no images needed)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    observed = observe_int8(model, example)
    if ranges is not None:
        load_activation_ranges(observed, ranges)
    elif calibration is None:
        raise ValueError("int8 needs calibration batches (a few hundred real, preprocessed images) or the ranges "
                         "of a stored calibration")
    else:
        run_calibration(observed, calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates FX quantization (see observe_int8)
        return convert_fx(observed)


def observe_int8(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """A CPU copy of `model` prepared for int8 (FX graph mode, x86 backend) with a min/max observer on every
    activation to quantize; the observer names depend on the model's graph only, so ranges saved from one
    observed copy load into another (activation_ranges / load_activation_ranges)."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = "x86"
    # Full 8-bit activations on every CPU class. Without VNNI, fbgemm's AVX2 kernels sum pairs of u8 x s8 products
    # in int16, which can saturate, and 7-bit activations (reduce_range) rule that out; measured, they cost more
    # than the saturation they prevent: the Fashion-MNIST ResNet-20 demo on AVX2 (by ISA restriction) agrees with
    # fp32 on 99.46% of 5000 test images in 8 bits, 99.02% in 7, and ResNet-50 b16 runs at 36.0 against 32.4 img/s.
    # Whatever a model loses to saturation shows in the agreement its calibration measures on the same kernels
    # (plan.choose_path takes a calibration measured without VNNI only on a CPU without VNNI). With VNNI the 8 bits
    # are exact (ResNet-20: 98.7% vs 97.9% top-1 agreement with 7).
    # MinMax rather than the default histogram observer: as accurate on ResNets here, and calibrates much faster.
    qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=False),
                      weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # torch 2.13 deprecates FX quantization in favour of torchao's pt2e; it is still the one in torch itself.
        warnings.simplefilter("ignore")
        return prepare_fx(model, get_default_qconfig_mapping("x86").set_global(qconfig),
                          example_inputs=(example.cpu(),))


def run_calibration(observed: nn.Module, calibration: Iterable[torch.Tensor]) -> int:
    """Feed the calibration batches through an observe_int8 model; returns the number of images seen."""
    seen = 0
    with torch.no_grad():  # observers update their buffers in place, which inference_mode forbids
        for batch in calibration:
            observed(batch.cpu().float())
            seen += batch.shape[0]
    if seen == 0:
        raise ValueError("int8: the calibration batches were empty")
    return seen


def _activation_observers(observed: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in observed.named_modules()
            if hasattr(module, "min_val") and hasattr(module, "max_val") and name}


def activation_ranges(observed: nn.Module) -> dict[str, list[float]]:
    """{observer name: [min, max]} of a calibrated observe_int8 model: everything int8 needs from the images.
    The raw min/max, not scales: the scales follow from them on any CPU."""
    ranges = {name: [float(obs.min_val), float(obs.max_val)] for name, obs in _activation_observers(observed).items()}
    empty = [name for name, (low, high) in ranges.items() if low > high]  # min/max start at +inf / -inf
    if empty:
        raise ValueError(f"int8: no calibration data reached {', '.join(empty[:3])}")
    return ranges


def load_activation_ranges(observed: nn.Module, ranges: dict[str, Sequence[float]]) -> None:
    """Set the observers of an observe_int8 model from activation_ranges (of the same architecture)."""
    observers = _activation_observers(observed)
    if set(observers) != set(ranges):
        missing, extra = sorted(set(observers) - set(ranges)), sorted(set(ranges) - set(observers))
        raise ValueError(f"int8 activation ranges do not fit this model: {len(missing)} observers without a range "
                         f"({', '.join(missing[:3])}), {len(extra)} ranges without an observer "
                         f"({', '.join(extra[:3])})")
    for name, (low, high) in ranges.items():
        observers[name].min_val.fill_(float(low))  # scalar buffers of a per-tensor observer
        observers[name].max_val.fill_(float(high))
