"""int8 by default when it is safe and faster: the stored calibration (`Int8Calibration`, a checkpoint's
int8_calibration metadata) and the rule `int8_choice` that fast="auto" follows: int8 when the checkpoint carries a
calibration whose measured top-1 agreement with fp32 is >= AGREEMENT_BAR, on an x86 CPU with AVX2 or more (int8 was
measured faster than fp32 on every such class: ResNet-50 b16 on a 2-core AVX2-only AMD EPYC, int8 30.4 img/s against
the fp32 default's 21.8, issue 25; 2-5x on AVX-512 VNNI and AMX), and, on a CPU without 8-bit dot products (VNNI,
AMX-INT8), only with a calibration measured without them too: there fbgemm sums pairs of 8-bit products in int16,
which can saturate, so an agreement measured with VNNI does not carry over. Otherwise today's default (bf16 where
native, else fp32). Published weights carry no calibration.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from deepres.core.device import cpu_class, cpu_int8_flags

AGREEMENT_BAR = 99.5  # % top-1 agreement of int8 with fp32 on evaluation images that auto needs (issue 15's bar)
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


def int8_choice(calibration: Int8Calibration | None, device: torch.device, *, compile: bool = False) \
        -> tuple[bool, str]:
    """(run int8?, why): the fast="auto" rule for int8. The reason names the stored agreement and the CPU."""
    if calibration is None:
        return False, "no int8 calibration stored with these weights (`deepres calibrate` adds one)"
    if device.type != "cpu":
        return False, f"int8 runs on the CPU only, not {device.type}"
    if compile:
        return False, "compile=True was asked and int8 does not compile"
    if calibration.agreement < AGREEMENT_BAR:
        return False, (f"the stored int8 calibration agrees with fp32 on {calibration.agreement:.2f}% of "
                       f"{calibration.eval_images} images, below the {AGREEMENT_BAR}% bar")
    cls, flags = cpu_class(), cpu_int8_flags()
    if cls == "baseline":
        return False, "this CPU has no AVX2, where int8 was never measured faster than fp32"
    if not flags and calibration.cpu_int8:
        return False, (f"this CPU has no VNNI or AMX-INT8, so its int8 kernels round differently (int16 sums); the "
                       f"stored agreement was measured with {', '.join(calibration.cpu_int8)}: `deepres calibrate` on "
                       f"this machine measures it for these kernels")
    has = f"this CPU has {', '.join(flags)}" if flags else f"this CPU (class {cls}) runs int8 faster than fp32"
    return True, (f"auto: int8 because the stored calibration agrees with fp32 on {calibration.agreement:.2f}% of "
                  f"{calibration.eval_images} images (bar {AGREEMENT_BAR}%) and {has}")
