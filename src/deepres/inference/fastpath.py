"""Fast inference: fold BatchNorm into convolutions, channels_last, bf16, torch.compile and int8, each switchable
and each checked against the plain fp32 model.

`prepare_for_inference(model, example_input_size=(3, 224, 224))` returns `(runner, info)`: `runner(batch)` takes a
float NCHW batch (any batch size, any device/dtype) and returns float32 logits; `info` says what was applied, the
compile time, and the largest logit difference from the fp32 model on a random example batch (int8: on its first
calibration batch of real images). The user's model is never modified: every step works on a copy.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from deepres.core.device import adapt_threads, auto_dtype, keep_freed_memory, thread_ceiling
from deepres.core.files import cache_dir, temp_file
from deepres.models.base import eval_mode, module_device

from .export import export_onnx, onnxruntime_session

MODES = ("auto", "eager", "fp32", "bf16", "int8")
BACKENDS = ("auto", "torch", "onnxruntime")  # what runs an fp32 path (see fp32_backend)
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- BatchNorm folding


@dataclass
class FoldReport:
    folded: list[str] = field(default_factory=list)  # BN modules merged into the conv before them
    kept: dict[str, str] = field(default_factory=dict)  # BN module -> why it stays (no conv right before it, ...)


def find_conv_bn_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(conv, bn) module names where the BN reads only that conv's output; and the other BNs with the reason.

    The graph comes from torch.fx tracing, so any block layout is handled: BN after the addition (bn_after_add) and
    the pre-activation BN-ReLU-conv (BN on a block's input) have no conv directly before them and are kept.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # data-dependent control flow and the like
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx to find conv-BN pairs: {e}") from None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, kept = [], {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = model.get_submodule(node.target)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        conv = model.get_submodule(source.target) if getattr(source, "op", None) == "call_module" else None
        if not isinstance(conv, nn.Conv2d):
            kept[node.target] = "its input is not a convolution's output (pre-activation or BN after an addition)"
        elif bn.running_mean is None or bn.running_var is None:
            kept[node.target] = "it has no running statistics (track_running_stats=False)"
        elif len(source.users) != 1 or calls[source.target] != 1 or calls[node.target] != 1:
            kept[node.target] = f"{source.target}'s output is used elsewhere too, or a module is called twice"
        else:
            pairs.append((source.target, node.target))
    return pairs, kept


def _replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """An eval-mode copy of `model` with each BN that directly follows a conv merged into that conv's weight and
    bias (the BN becomes nn.Identity); the model itself is left unchanged."""
    folded = copy.deepcopy(model).eval()
    return folded, _fold_batchnorm_(folded)


def _fold_batchnorm_(model: nn.Module) -> FoldReport:
    """fold_batchnorm in place, on an eval-mode model that is already a private copy."""
    pairs, kept = find_conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _replace_submodule(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace_submodule(model, bn_name, nn.Identity())
    return FoldReport(folded=[bn for _, bn in pairs], kept=kept)


# ----------------------------------------------------------------------------------------- the runner


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
    mode: str  # the mode asked for
    dtype: str  # compute dtype: fp32 | bf16 | int8
    device: str
    steps: list[str] = field(default_factory=list)  # what was applied, in order
    bn_folded: int = 0  # BatchNorm layers merged into convolutions
    bn_kept: dict[str, str] = field(default_factory=dict)  # BatchNorm layers left as they are, and why
    channels_last: bool = False
    compiled: bool = False
    backend: str = "torch"  # what runs the prepared model: torch, or onnxruntime (fp32 on the CPU, fp32_backend)
    compile_seconds: float = 0.0  # torch.compile: first (compiling) call on the example batch; see the runner's
    max_abs_error: float | None = None  # largest |logit - fp32 eager logit| on check_batch
    check_batch: str = ""  # what max_abs_error was measured on: a random batch, or (int8) real calibration images
    notes: list[str] = field(default_factory=list)  # why auto chose what it did
    reason: str = ""  # one line: why this path was picked (auto: the CPU, a stored int8 calibration)


def prepare_for_inference(model: nn.Module, *, example_input_size: Sequence[int], mode: str = "auto",
                          fold_bn: bool | None = None, channels_last: bool | None = None,
                          compile: bool = False, calibration: Iterable[torch.Tensor] | None = None,
                          int8_ranges: dict[str, Sequence[float]] | None = None,
                          device: torch.device | str | None = None, verify: bool = True,
                          example_batch_size: int = 2, backend: str = "auto") -> tuple[InferenceRunner, InferenceInfo]:
    """A runner for fast inference with `model` (left unchanged) and an InferenceInfo saying what was applied.

    mode: "eager" (the model as is, fp32), "fp32" (BN folded + channels_last), "bf16" (that, in bfloat16),
    "int8" (post-training quantization, FX graph mode with the x86 backend; CPU only, needs `calibration`
    batches or `int8_ranges`, the activation_ranges a calibration stored), "auto" (bf16 where the hardware
    computes it natively, else fp32; the int8-by-default rule is the Predictor's, deepres.inference.int8).
    fold_bn / channels_last override the mode's choice. compile: torch.compile (inductor, frozen weights) on top;
    it compiles once per batch size.
    example_input_size: (C, H, W) of one image; a random batch of `example_batch_size` such images is the compile
    warm-up (use the batch size you will run) and the self-check.
    verify: compare with the fp32 eager model on that example batch and record the error in info.
    backend: what runs an fp32 path on the CPU: "torch" (oneDNN), "onnxruntime" (the prepared model exported to
    ONNX once, cached on disk, and run by ONNX Runtime's MLAS kernels for the example image size), or "auto"
    (onnxruntime where it applies, see fp32_backend; torch if the model does not export).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if len(example_input_size) != 3:
        raise ValueError(f"example_input_size must be (channels, height, width), got {tuple(example_input_size)}")
    device = torch.device(device) if device is not None else module_device(model)
    dtype = auto_dtype(device) if mode == "auto" else {"eager": "fp32"}.get(mode, mode)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on large activations at every call (core.device)
    if dtype == "int8" and device.type != "cpu":
        raise ValueError(f"mode='int8' runs on the CPU only (x86 quantized kernels), not on {device}")
    if dtype == "int8" and compile:
        raise ValueError("compile=True is not available with mode='int8' (FX-quantized models run eagerly on the "
                         "x86 quantized kernels)")
    if example_batch_size < 1:
        raise ValueError(f"example_batch_size must be >= 1, got {example_batch_size}")
    fast = mode != "eager"
    use_ort, why_ort = fp32_backend(backend, mode=mode, dtype=dtype, device=device, compile=compile)
    fold_bn = fast and dtype != "int8" if fold_bn is None else fold_bn  # int8 fuses conv-BN(-ReLU) itself
    channels_last = fast if channels_last is None else channels_last
    info = InferenceInfo(mode=mode, dtype=dtype, device=str(device), channels_last=channels_last)
    if mode == "auto":
        native = "natively (AVX-512 BF16 / AMX, or a CUDA GPU with bf16)"
        info.reason = (f"auto: {dtype} because this {device.type} {'computes' if dtype == 'bf16' else 'lacks'} "
                       f"bf16 {native}")
        info.notes.append(info.reason)
    seeded = torch.Generator().manual_seed(0)  # the same check, and error figure, on every call
    example = torch.randn(example_batch_size, *example_input_size, generator=seeded).to(device)

    reference = model
    prepared = copy.deepcopy(model).eval().to(device)
    if fold_bn:
        report = _fold_batchnorm_(prepared)  # `prepared` is already this function's own copy
        info.bn_folded, info.bn_kept = len(report.folded), report.kept
        info.steps.append(f"fold_bn ({len(report.folded)} folded, {len(report.kept)} kept)")
    ort_module = None
    if use_ort:
        try:
            ort_module = OnnxRuntimeFp32(prepared, example_input_size, example)  # exported before channels_last
        except Exception as error:  # a model torch.onnx cannot export, an output ONNX Runtime gets wrong
            if backend == "onnxruntime":
                raise ValueError(f"backend='onnxruntime': {type(model).__name__} does not run on ONNX Runtime: "
                                 f"{error}") from error
            info.notes.append(f"fp32 on torch: the ONNX Runtime backend failed ({type(error).__name__}: {error})")
            log.warning("fast path: %s", info.notes[-1])
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
        info.steps.append("channels_last")

    input_dtype = torch.float32
    if dtype == "bf16":
        # Weights stored in bf16 rather than autocast: no per-call weight casts (as fast as autocast on ResNet-50,
        # measured), simpler to compile and export. The logits come back as float32.
        prepared = prepared.to(torch.bfloat16)
        input_dtype = torch.bfloat16
        info.steps.append("bf16 weights and activations")
    elif dtype == "int8":
        calibration = list(calibration) if calibration is not None else None
        prepared = quantize_int8(prepared, calibration, example, ranges=int8_ranges)
        info.steps.append("int8 (FX graph mode, x86 backend, per-channel weights)")

    module = FrozenCompiled(prepared) if compile else PerShapeInt8(prepared) if dtype == "int8" else prepared
    if ort_module is not None:
        ort_module.fallback, module = prepared, ort_module  # other image sizes run on torch
        info.backend = "onnxruntime"
        info.steps.append(f"onnxruntime fp32 ({ort_module.source}) for {tuple(example_input_size)} images, "
                          f"torch for other sizes")
        info.notes.append(why_ort)
        if mode == "auto":
            info.reason += "; run by ONNX Runtime (its fp32 convolutions are faster than oneDNN's)"
    runner = InferenceRunner(module, device=device, input_dtype=input_dtype,
                             channels_last=channels_last and ort_module is None, compiled=compile)
    if compile:
        runner(example)  # compiles for this batch size; other sizes compile on their first call
        info.compiled, info.compile_seconds = True, runner.compile_seconds[tuple(example.shape)]
        info.steps.append(f"torch.compile (inductor, freezing; {info.compile_seconds:.1f} s for batch "
                          f"{example_batch_size})")
    if verify:
        # int8 activation ranges fit real images, not noise: check it on real images (a calibration batch)
        on_images = dtype == "int8" and bool(calibration)
        check = calibration[0].float().to(device) if on_images else example
        info.check_batch = "the first calibration batch" if on_images else "a random batch"
        with eval_mode(reference), torch.inference_mode():
            expected = reference(check.to(module_device(reference))).float().to(device)
        info.max_abs_error = float((runner(check) - expected).abs().max())
    return runner, info


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


# ----------------------------------------------------------------------------------------- fp32 on ONNX Runtime


def fp32_backend(backend: str, *, mode: str, dtype: str, device: torch.device, compile: bool) -> tuple[bool, str]:
    """(run the fp32 path on ONNX Runtime?, why). "auto" does for every fast fp32 path on the CPU that is not
    compiled: ResNet-50 fp32 convolutions run faster in ONNX Runtime's MLAS than in oneDNN (same 2-core Xeon, one
    run: ONNX Runtime 42.4 img/s at batch 16 and 36.3 at batch 1; torch BN-folded and compiled 40.2 and 29.5)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    applies = dtype == "fp32" and mode != "eager" and device.type == "cpu" and not compile
    if backend == "onnxruntime" and not applies:
        raise ValueError(f"backend='onnxruntime' runs the fp32 fast path on the CPU without compile, not mode={mode!r} "
                         f"({dtype}) on {device} with compile={compile}")
    if backend != "auto" or not applies:
        return backend == "onnxruntime", ""
    return True, ("fp32 runs on ONNX Runtime (backend='auto'): its MLAS convolutions are faster than oneDNN's "
                  "fp32 ones on the CPU; backend='torch' keeps it in PyTorch")


class OnnxRuntimeFp32:
    """A prepared fp32 model run by ONNX Runtime for `input_size` images (any batch size), the torch model
    (`fallback`, set by prepare_for_inference) for other sizes. The ONNX file is exported once per weights,
    architecture, image size and torch version and kept in deepres's cache (`$DEEPRES_CACHE/onnx`), so later
    runs only load it; it is checked against the torch model on `example` before use.

    Each call runs with as many ONNX Runtime threads as the thread governor gives torch at that moment
    (core.device.adapt_threads, ticked by the InferenceRunner): a session per thread count, the others made from
    the cached file when first needed. A single session keeps its thread count for good, and beside a busy process
    its spinning threads wait on the one that shares a core."""

    def __init__(self, model: nn.Module, input_size: Sequence[int], example: torch.Tensor, *,
                 tolerance: float = 1e-4):
        self.input_size = tuple(input_size)
        self.fallback: Callable | None = None
        start = time.perf_counter()
        path, cached = onnx_cache_path(model, self.input_size), True
        session = None
        if path.is_file():
            try:
                session = onnxruntime_session(path)
            except Exception as error:  # a torn or foreign file: export it again
                log.warning("fast path: %s does not load in ONNX Runtime (%s); exporting it again", path, error)
        if session is None:
            cached = False
            session, kept = _export_and_load(model, example, path)
            path = path if kept else None
        if len(session.get_outputs()) != 1:
            raise ValueError(f"the exported model has {len(session.get_outputs())} outputs, the fast path takes one")
        self.path, self.name = path, session.get_inputs()[0].name  # path: None where the cache was not writable
        self.sessions = {thread_ceiling(): session}  # intra-op threads -> session
        self.source = (f"{'cached' if cached else 'exported'} ONNX {time.perf_counter() - start:.1f} s"
                       f"{f', {path.name}' if path else ', not cached'}")
        with torch.inference_mode():
            expected = model(example.cpu().float())
        error = float((self(example.cpu().float()) - expected).abs().max())
        if not error <= tolerance * max(1.0, float(expected.abs().max())):
            raise ValueError(f"ONNX Runtime's output differs from PyTorch's by {error:.3g} on the example batch")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_size and self.fallback is not None:
            return self.fallback(x.contiguous(memory_format=torch.channels_last))
        return torch.from_numpy(self.session().run(None, {self.name: x.float().contiguous().numpy()})[0])

    def session(self):
        """The session with the thread count the governor gives torch now (made on first need)."""
        threads = torch.get_num_threads()
        session = self.sessions.get(threads)
        if session is None:
            try:
                session = onnxruntime_session(self.path, threads) if self.path else None
            except Exception as error:  # the cached file was removed or replaced since
                log.warning("fast path: no %d-thread ONNX Runtime session from %s (%s)", threads, self.path, error)
            # the ceiling's session otherwise; kept under this count either way, so a failure is not retried
            session = self.sessions[threads] = session or self.sessions[max(self.sessions)]
        return session


def onnx_cache_path(model: nn.Module, input_size: Sequence[int]) -> Path:
    """Where OnnxRuntimeFp32 keeps `model`'s export: named by a hash of its architecture (class and module tree),
    every state-dict tensor, the image size and the torch version."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model}\n{tuple(input_size)}\n"
                            f"{torch.__version__}\n".encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return cache_dir() / "onnx" / f"{type(model).__name__.lower()}-{digest.hexdigest()[:24]}.onnx"


def _export_and_load(model: nn.Module, example: torch.Tensor, path: Path):
    """(session, kept): export `model` to `path` (written under a temporary name and renamed, so a crash leaves no
    torn file) and load it; where the cache cannot be written, the export goes to a temporary folder and is loaded
    from there (kept False)."""
    # batch 2: torch.export makes a batch dimension of size 0 or 1 static
    example = example[:2].cpu().float().expand(2, -1, -1, -1).contiguous()

    def export_and_load(target: Path):
        with contextlib.redirect_stderr(io.StringIO()):  # the exporter's progress lines, not the user's business
            export_onnx(model, example, target)
        return onnxruntime_session(target)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp.onnx")
        os.close(fd)
    except OSError as error:
        log.warning("fast path: cannot write the ONNX cache %s (%s); exporting to a temporary folder", path.parent,
                    error)
        with tempfile.TemporaryDirectory() as folder:
            return export_and_load(Path(folder) / path.name), False
    try:
        session = export_and_load(Path(tmp))
        os.replace(tmp, path)
        return session, True
    finally:
        Path(tmp).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- int8


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
        raise ValueError("mode='int8' needs calibration batches (a few hundred real, preprocessed images): "
                         "pass calibration=[batch, ...]")
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
    # (inference.int8 takes a calibration measured without VNNI only on a CPU without VNNI). With VNNI the 8 bits
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
        raise ValueError("mode='int8': the calibration batches were empty")
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
