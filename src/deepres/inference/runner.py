"""Building a fast path: `build_runner(model, plan, example)` carries out a Plan (plan.choose_path) on a private copy
of the model: BatchNorm folded, ONNX Runtime, channels_last, bf16 weights, int8, torch.compile, as the plan says. It
returns `(runner, info)`: `runner(batch)` takes a float NCHW batch (any batch size, any device/dtype) and returns
float32 logits; `info` says what was applied, the compile time, and the largest logit difference from the fp32 model
on the example batch (int8 calibrated on images: on the first calibration batch, real images). The user's model is
never modified.
"""
from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from deepres.core.device import adapt_threads, keep_freed_memory
from deepres.models.base import eval_mode, module_device

from .bn_fold import fold_batchnorm_inplace
from .int8 import PerShapeInt8, quantize_int8
from .onnx_backend import OnnxRuntimeFp32
from .plan import Plan

log = logging.getLogger(__name__)


class InferenceRunner:
    """Calls a prepared model: moves a float NCHW batch to the model's device, dtype and memory format, runs it
    without autograd, and returns float32 outputs. Works for every batch size; a compiled model compiles on the
    first call with each new input shape, and `compile_seconds` records how long each took."""

    def __init__(self, module: Callable, *, device: torch.device, input_dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, compiled: bool = False):
        self.module = module  # the prepared nn.Module, or its torch.compile wrapper
        self.device = device
        self.input_dtype = input_dtype
        self.channels_last = channels_last
        self.compiled = compiled
        self.compile_seconds: dict[tuple[int, ...], float] = {}  # input shape -> first-call (compile) seconds

    def prepare_input(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4:
            raise ValueError(f"expected a float NCHW batch, got a tensor of shape {tuple(batch.shape)}")
        x = batch.to(self.device, self.input_dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            adapt_threads()  # fewer threads while other processes hold cores (core.device.ThreadGovernor)
        with torch.inference_mode():
            x = self.prepare_input(batch)
            if self.compiled and not x.is_inference():
                # A compiled graph is specialised on inference vs normal tensors: always pass inference tensors,
                # or a caller's plain tensor would cost a second compile of the same shape.
                x = x.clone()
            first_of_shape = self.compiled and tuple(x.shape) not in self.compile_seconds
            start = time.perf_counter()
            out = self.module(x)
            if first_of_shape:
                self.compile_seconds[tuple(x.shape)] = time.perf_counter() - start
        return out.float()


@dataclass
class InferenceInfo:
    """What build_runner applied and measured."""

    precision: str  # what was asked for (Plan.precision)
    dtype: str  # compute dtype: fp32 | bf16 | int8
    device: str
    steps: list[str] = field(default_factory=list)  # what was applied, in order
    bn_folded: int = 0  # BatchNorm layers merged into convolutions
    bn_kept: dict[str, str] = field(default_factory=dict)  # BatchNorm layers left as they are, and why
    channels_last: bool = False
    compiled: bool = False
    backend: str = "torch"  # what runs the prepared model: torch, or onnxruntime (Plan.backend, unless it failed)
    compile_seconds: float = 0.0  # torch.compile: first (compiling) call on the example batch; see the runner's
    max_abs_error: float | None = None  # largest |logit - fp32 eager logit| on check_batch
    check_batch: str = ""  # what max_abs_error was measured on: a random batch, or (int8) real calibration images
    notes: list[str] = field(default_factory=list)  # the plan's notes, then what happened while building
    reason: str = ""  # the plan's reason: why this path

    @property
    def mode(self) -> str:
        """Deprecated name of `precision`."""
        warnings.warn("InferenceInfo.mode is deprecated: use .precision", DeprecationWarning, stacklevel=2)
        return self.precision


def example_batch(input_size: Sequence[int], batch_size: int = 2) -> torch.Tensor:
    """A random batch of `batch_size` images of `input_size` (C, H, W), the same on every call: the example that
    build_runner compiles for (use the batch size you will run) and checks against the fp32 model."""
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0))


def build_runner(model: nn.Module, plan: Plan, example: torch.Tensor, *,
                 calibration: Iterable[torch.Tensor] | None = None,
                 verify: bool = True) -> tuple[InferenceRunner, InferenceInfo]:
    """A runner of `plan` for `model` (left unchanged) and an InferenceInfo saying what was applied.

    example: a float NCHW batch (example_batch): the ONNX export's image size, the compile warm-up, and the
    self-check. calibration: the preprocessed float batches int8 observes where plan.int8_source is "images".
    verify: compare with the fp32 eager model and record the largest difference in info.max_abs_error.
    """
    if example.ndim != 4 or not example.is_floating_point():
        raise ValueError(f"example must be a float NCHW batch, got {example.dtype} {tuple(example.shape)}")
    if plan.int8_source == "images" and calibration is None:
        raise ValueError("this plan calibrates int8 on images: pass calibration=[batch, ...] (preprocessed float "
                         "NCHW batches)")
    device = plan.device
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on large activations at every call (core.device)
    example = example.float().to(device)
    info = InferenceInfo(precision=plan.precision, dtype=plan.dtype, device=str(device),
                         channels_last=plan.channels_last, notes=list(plan.notes), reason=plan.reason)
    prepared = copy.deepcopy(model).eval().to(device)
    if plan.fold_bn:
        report = fold_batchnorm_inplace(prepared)  # `prepared` is already this function's own copy
        info.bn_folded, info.bn_kept = len(report.folded), report.kept
        info.steps.append(f"fold_bn ({len(report.folded)} folded, {len(report.kept)} kept)")
    onnx = _onnxruntime(prepared, plan, example, info) if plan.backend == "onnxruntime" else None
    if plan.channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
        info.steps.append("channels_last")

    input_dtype = torch.float32
    if plan.dtype == "bf16":
        # Weights stored in bf16 rather than autocast: no per-call weight casts (as fast as autocast on ResNet-50,
        # measured), simpler to compile and export. The logits come back as float32.
        prepared = prepared.to(torch.bfloat16)
        input_dtype = torch.bfloat16
        info.steps.append("bf16 weights and activations")
    elif plan.dtype == "int8":
        calibration = list(calibration) if calibration is not None else None  # a generator is read once, then kept
        prepared = quantize_int8(prepared, calibration, example, ranges=plan.int8_ranges)
        info.steps.append("int8 (FX graph mode, x86 backend, per-channel weights)")

    module = FrozenCompiled(prepared) if plan.compile else PerShapeInt8(prepared) if plan.dtype == "int8" else prepared
    if onnx is not None:
        onnx.fallback, module = prepared, onnx  # other image sizes run on torch
        info.backend = "onnxruntime"
        info.steps.append(f"onnxruntime fp32 ({onnx.source}) for {tuple(example.shape[1:])} images, "
                          f"torch for other sizes")
    runner = InferenceRunner(module, device=device, input_dtype=input_dtype,
                             channels_last=plan.channels_last and onnx is None, compiled=plan.compile)
    if plan.compile:
        runner(example)  # compiles for this batch size; other sizes compile on their first call
        info.compiled, info.compile_seconds = True, runner.compile_seconds[tuple(example.shape)]
        info.steps.append(f"torch.compile (inductor, freezing; {info.compile_seconds:.1f} s for batch "
                          f"{example.shape[0]})")
    if verify:
        # int8 activation ranges fit real images, not noise: check it on real images (a calibration batch)
        on_images = plan.dtype == "int8" and bool(calibration)
        check = calibration[0].float().to(device) if on_images else example
        info.check_batch = "the first calibration batch" if on_images else "a random batch"
        with eval_mode(model), torch.inference_mode():
            expected = model(check.to(module_device(model))).float().to(device)
        info.max_abs_error = float((runner(check) - expected).abs().max())
    return runner, info


def _onnxruntime(prepared: nn.Module, plan: Plan, example: torch.Tensor, info: InferenceInfo) -> OnnxRuntimeFp32 | None:
    """The prepared fp32 model on ONNX Runtime (exported before channels_last); None where it failed and the plan
    lets torch run it instead."""
    try:
        return OnnxRuntimeFp32(prepared, tuple(example.shape[1:]), example)
    except Exception as error:  # a model torch.onnx cannot export, an output ONNX Runtime gets wrong
        name = type(prepared).__name__
        if not plan.torch_fallback:
            raise ValueError(f"backend='onnxruntime': {name} does not run on ONNX Runtime: {error}") from error
        info.notes.append(f"fp32 on torch: the ONNX Runtime backend failed ({type(error).__name__}: {error})")
        log.warning("fast path: %s", info.notes[-1])
        return None


class FrozenCompiled:
    """`module` compiled by inductor with its weights frozen into the graph, so oneDNN pre-packs them and the
    convolutions run with bias, ReLU and the residual add fused in; later changes to the module's parameters do
    not reach the compiled calls (the module is a private copy, so none should happen). Static shapes, compiled
    once per batch size: on ResNet-50 bf16 a dynamic batch dimension gave back most of the gain (measured: 1.05x
    ONNX Runtime instead of 1.5x)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.compiled = torch.compile(module, dynamic=False)
        self.frozen: set[tuple] = set()  # (shape, dtype) of the inputs compiled so far

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key in self.frozen:
            return self.compiled(x)
        # Inductor reads `freezing` from its global config while a call compiles, and torch 2.13 drops it from
        # torch.compile(options=...): passed that way nothing was frozen (ResNet-50 b16 bf16_compile, same
        # machine: 133 img/s unfrozen, 199-233 frozen). Patched around this model's compiling calls only: a training
        # model compiled in the same process must never be frozen.
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            out = self.compiled(x)
        self.frozen.add(key)
        return out
