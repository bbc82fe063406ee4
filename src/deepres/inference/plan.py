"""Which fast path runs, and why: `choose_path(model, device, calibration, request)` returns a Plan, a frozen record
of every choice (precision, compute dtype, backend, BatchNorm folding, channels_last, compile, where int8's ranges
come from) and its reason, final when made. It is the whole policy and builds nothing: it reads what was asked, the
stored int8 calibration, the model's structure (can its BatchNorm be folded?) and this machine (core.device).
runner.build_runner carries a plan out.

precision="auto" runs int8 when it is safe and faster: the weights carry a calibration (int8.Int8Calibration) whose
measured top-1 agreement with fp32 is >= AGREEMENT_BAR, on an x86 CPU with AVX2 or more (int8 was measured faster
than fp32 on every such class: ResNet-50 b16 on a 2-core AVX2-only AMD EPYC, int8 30.4 img/s against the fp32
default's 21.8, issue 25; 2-5x on AVX-512 VNNI and AMX), and, on a CPU without 8-bit dot products (VNNI, AMX-INT8),
only with a calibration measured without them too: there fbgemm sums pairs of 8-bit products in int16, which can
saturate, so an agreement measured with VNNI does not carry over. Otherwise bf16 where the hardware computes it
natively, else fp32. Published weights carry no calibration.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from deepres.core.device import auto_dtype, cpu_class, cpu_int8_flags
from deepres.models.base import module_device

from .bn_fold import untraceable
from .int8 import Int8Calibration

PRECISIONS = ("auto", "fp32", "bf16", "int8", "eager")  # what a caller asks for: precision=, --precision
BACKENDS = ("auto", "torch", "onnxruntime")  # what runs an fp32 path on the CPU (see _fp32_backend)
AGREEMENT_BAR = 99.5  # % top-1 agreement of int8 with fp32 on evaluation images that auto needs (issue 15's bar)


@dataclass(frozen=True)
class Request:
    """What the caller asks for."""

    precision: str = "auto"  # one of PRECISIONS; "eager" is the model as it is, fp32
    backend: str = "auto"  # one of BACKENDS
    compile: bool = False  # torch.compile (inductor, frozen weights) on top; compiles once per batch size
    fold_bn: bool | None = None  # None: the precision's choice (fp32 / bf16 fold; int8 fuses conv-BN-ReLU itself)
    channels_last: bool | None = None  # None: every path but eager
    stale_calibration: bool = False  # the weights were reloaded since their int8 calibration was stored


@dataclass(frozen=True)
class Plan:
    """One fast path, decided: what build_runner builds, and why."""

    precision: str  # what was asked for: one of PRECISIONS
    dtype: str  # what it computes in: fp32 | bf16 | int8
    device: torch.device
    backend: str  # what runs it: torch, or onnxruntime (fp32 on the CPU, for the example's image size)
    fold_bn: bool
    channels_last: bool
    compile: bool
    int8_source: str = ""  # int8's activation ranges: "stored" (an earlier calibration's) | "images" | "" (not int8)
    reason: str = ""  # one line: why this path (auto: the CPU, a stored int8 calibration)
    notes: tuple[str, ...] = ()  # why the other choices were made (the backend, BatchNorm left unfolded)
    torch_fallback: bool = False  # ONNX Runtime by backend="auto": a model it cannot take runs on torch instead
    int8_ranges: Mapping[str, Sequence[float]] | None = field(default=None, repr=False, compare=False)  # "stored"


def choose_path(model: nn.Module, device: torch.device | str | None = None, calibration=None,
                request: Request | str = "auto") -> Plan:
    """The fast path for `model` on `device` (default: where the model is), with its reason.

    calibration: what int8 takes its activation ranges from: the Int8Calibration stored with the weights (or bare
    activation ranges, int8.activation_ranges), or calibration images of any kind (only that there are some counts
    here; build_runner takes them preprocessed). request: a Request, or a precision name. A request that cannot be
    met raises ValueError naming what is missing.
    """
    request = Request(precision=request) if isinstance(request, str) else request
    device = torch.device(device) if device is not None else module_device(model)
    stored = calibration if isinstance(calibration, (Int8Calibration, Mapping)) else None
    images = calibration is not None and stored is None
    _check(request, device, stored, images)
    dtype, reason, not_int8 = _compute_dtype(request, device, stored if isinstance(stored, Int8Calibration) else None)
    fold_bn, fold_note = _fold_bn(model, request, dtype)
    backend, backend_note = _fp32_backend(request, dtype, device)
    if backend_note and request.precision == "auto":
        reason += "; run by ONNX Runtime (its fp32 convolutions are faster than oneDNN's)"
    if not_int8:
        reason += f"; not int8: {not_int8}"
    source = "" if dtype != "int8" else "images" if images else "stored"
    ranges = None if source != "stored" else stored.ranges if isinstance(stored, Int8Calibration) else stored
    eager = request.precision == "eager"
    return Plan(precision=request.precision, dtype=dtype, device=device, backend=backend, fold_bn=fold_bn,
                channels_last=not eager if request.channels_last is None else request.channels_last,
                compile=request.compile, int8_source=source, reason=reason,
                notes=tuple(note for note in (fold_note, backend_note) if note),
                torch_fallback=backend == "onnxruntime" and request.backend == "auto", int8_ranges=ranges)


def auto_dtype_for(calibration: Int8Calibration | None, device: torch.device | str) -> tuple[str, str]:
    """(dtype, why) precision="auto" computes in on `device` with this stored calibration: choose_path's rule for
    the precision alone, which needs no model (`deepres calibrate` says what predict will run)."""
    dtype, reason, not_int8 = _compute_dtype(Request(), torch.device(device), calibration)
    return dtype, f"{reason}; not int8: {not_int8}" if not_int8 else reason


def _check(request: Request, device: torch.device, stored, images: bool) -> None:
    """ValueError for a request that cannot be met, naming what is missing."""
    precision = request.precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if request.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {request.backend!r}")
    if images and precision != "int8":
        raise ValueError(f"calibration images are used by precision='int8' only, not precision={precision!r}")
    if request.compile and precision in ("eager", "int8"):
        raise ValueError(f"compile=True needs a fast path to compile (precision='auto', 'fp32' or 'bf16'), not "
                         f"precision={precision!r}" + (" (FX-quantized int8 runs eagerly on the x86 quantized "
                                                       "kernels)" if precision == "int8" else ""))
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision='int8' runs on the CPU only (x86 quantized kernels), not on {device}")
    if precision == "int8" and not images and stored is None:
        raise ValueError("precision='int8' needs calibration images (a few hundred real images of the kind you "
                         "will classify) or an int8 calibration stored with the weights (`deepres calibrate`)")


def _compute_dtype(request: Request, device: torch.device, stored: Int8Calibration | None) -> tuple[str, str, str]:
    """(dtype, reason, why not int8 where auto did not pick it)."""
    precision = request.precision
    if precision != "auto":
        return "fp32" if precision == "eager" else precision, f"precision={precision!r} was asked for", ""
    use, why = _int8_by_default(stored, device, request)
    if use:
        return "int8", why, ""
    dtype = auto_dtype(device)
    return dtype, (f"auto: {dtype} because this {device.type} {'computes' if dtype == 'bf16' else 'lacks'} bf16 "
                   f"natively (AVX-512 BF16 / AMX, or a CUDA GPU with bf16)"), why


def _fold_bn(model: nn.Module, request: Request, dtype: str) -> tuple[bool, str]:
    """(fold BatchNorm into the convolutions?, why not where the model's graph cannot be traced). Every fast fp32 /
    bf16 path folds; int8 fuses conv-BN-ReLU itself; eager runs the model as it is."""
    fold = request.precision != "eager" and dtype != "int8" if request.fold_bn is None else request.fold_bn
    why = untraceable(model) if fold else ""
    if why and request.fold_bn:
        raise ValueError(f"fold_bn=True: {why}")
    return (False, f"BatchNorm left unfolded: {why}") if why else (fold, "")


def _int8_by_default(calibration: Int8Calibration | None, device: torch.device, request: Request) -> tuple[bool, str]:
    """(run int8?, why) for precision="auto": the reason names the stored agreement and the CPU."""
    if calibration is None:
        return False, "no int8 calibration stored with these weights (`deepres calibrate` adds one)"
    if request.stale_calibration:
        return False, "the stored int8 calibration is of the weights before load_state_dict"
    if device.type != "cpu":
        return False, f"int8 runs on the CPU only, not {device.type}"
    if request.compile:
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


def _fp32_backend(request: Request, dtype: str, device: torch.device) -> tuple[str, str]:
    """(backend, why, where auto chose ONNX Runtime). "auto" runs every fast fp32 path on the CPU that is not
    compiled on ONNX Runtime: ResNet-50 fp32 convolutions run faster in its MLAS than in oneDNN (same 2-core Xeon,
    one run: ONNX Runtime 42.4 img/s at batch 16 and 36.3 at batch 1; torch BN-folded and compiled 40.2 and 29.5)."""
    applies = dtype == "fp32" and request.precision != "eager" and device.type == "cpu" and not request.compile
    if request.backend == "onnxruntime" and not applies:
        raise ValueError(f"backend='onnxruntime' runs the fp32 fast path on the CPU without compile, not "
                         f"precision={request.precision!r} ({dtype}) on {device} with compile={request.compile}")
    if not applies or request.backend == "torch":
        return "torch", ""
    if request.backend == "onnxruntime":
        return "onnxruntime", ""
    return "onnxruntime", ("fp32 runs on ONNX Runtime (backend='auto'): its MLAS convolutions are faster than "
                           "oneDNN's fp32 ones on the CPU; backend='torch' keeps it in PyTorch")


class _Unset:
    def __repr__(self) -> str:
        return "<not given>"


UNSET = _Unset()  # default of the deprecated `fast=` keywords: tells "not given" from None (which meant eager)


def precision_or_fast(precision: str, fast, where: str) -> str:
    """`precision`, or what the deprecated `fast=` of `where` asked for where it was given (True: "auto", False or
    None: "eager", a name: that name); the deprecated form warns."""
    if fast is UNSET:
        return precision
    warnings.warn(f"{where}(fast=...) is deprecated: use precision=... (one of {', '.join(PRECISIONS)})",
                  DeprecationWarning, stacklevel=3)
    return "auto" if fast is True else "eager" if fast is False or fast is None else fast
