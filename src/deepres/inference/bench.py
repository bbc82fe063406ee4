"""`deepres bench`: CPU inference speed of eager PyTorch, deepres's fast paths and ONNX Runtime, side by side in
one run, with top-1 agreement against the fp32 eager model. benchmarks/cpu_inference.py calls the same code.

Each case (model, image size, batch size) runs every path on the same inputs: `warmup` calls that are not timed,
then timed calls until `seconds` have passed (at least `min_iterations`, at most `max_iterations`). Throughput is
images / median call time; p50/p95 are per-call latencies. Agreement is measured on `agreement_images` random
images per model (random weights: it shows numerical drift, not accuracy); `--agreement-checkpoint RUN_DIR`
measures it on the real test set of a trained model instead.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from deepres.core.checkpoint import resolve_checkpoint
from deepres.core.config import apply_overrides
from deepres.core.device import (available_cores, cpu_class_label, cpu_has_native_bf16, cpu_int8_flags, cpu_isa,
                                 cpu_model_name, load_warning)
from deepres.data import build_loaders
from deepres.models import create_model

from deepres.tasks.build import load_model

from .api import init_model
from .export import export_onnx, onnxruntime_runner as session_runner
from .plan import Request, choose_path
from .runner import InferenceInfo, build_runner, example_batch

# fp32: deepres's fp32 path as precision="fp32" runs it (backend "auto": ONNX Runtime on the CPU from a cached
# export); fp32_torch: the same in PyTorch (BN folded, channels_last, oneDNN)
PATHS = ("eager_fp32", "fp32", "fp32_torch", "fp32_compile", "bf16", "bf16_compile", "int8", "onnxruntime_fp32",
         "onnxruntime_int8")
# --checkpoint only: what init_model / predict run by default for that checkpoint (int8 from its stored calibration
# where that clears the bar on this CPU, else bf16 / fp32: deepres.inference.plan.choose_path)
CHECKPOINT_PATHS = ("default", *PATHS)
ORT_STEPS = {"onnxruntime_fp32": "onnx export (dynamo), ORT CPU EP",
             "onnxruntime_int8": "onnx export (dynamo), ORT quantize_static QDQ u8s8 per-channel, ORT CPU EP"}
DEFAULT_PATHS = ("eager_fp32", "fp32", "fp32_torch", "bf16", "int8", "onnxruntime_fp32", "onnxruntime_int8")
# (model, image side in pixels, batch size): the ImageNet and CIFAR workhorses at a latency and a throughput batch
DEFAULT_CASES = (("resnet50", 224, 1), ("resnet50", 224, 16), ("resnet20", 32, 1), ("resnet20", 32, 128))


@dataclass
class BenchRow:
    model: str
    image_size: int  # pixels
    batch_size: int
    path: str
    images_per_s: float  # batch_size / median call time
    p50_ms: float  # per call (one batch)
    p95_ms: float
    iterations: int  # timed calls (warm-up calls excluded)
    agreement: float | None  # top-1 agreement with eager fp32, % of `agreement_n` images
    agreement_n: int
    max_abs_error: float | None  # largest |logit - eager fp32 logit| on those images
    prepare_s: float  # seconds to build the path (fold, quantize, export...), compile excluded
    compile_s: float = 0.0  # torch.compile seconds (first call for this batch size, inductor caches disabled)
    default: bool = False  # the path precision="auto" picks for this model on this machine (choose_path)
    steps: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ building paths
# benchmark path -> the Request that builds it (the ONNX Runtime paths are built here, not by choose_path)
REQUESTS = {"eager_fp32": Request("eager"), "fp32": Request("fp32"), "fp32_torch": Request("fp32", backend="torch"),
            "fp32_compile": Request("fp32", compile=True), "bf16": Request("bf16"),
            "bf16_compile": Request("bf16", compile=True), "int8": Request("int8")}


def build_path(path: str, model: nn.Module, input_size: tuple[int, int, int], *,
               calibration: list[torch.Tensor] | None = None, workdir: Path | None = None, batch_size: int = 2,
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], InferenceInfo | None, float]:
    """(runner, info, seconds to build, compiling excluded) for one benchmark path; every runner maps a float
    batch to float logits. A compiled path is compiled for `batch_size` here."""
    start = time.perf_counter()
    info = None
    if path in ("int8", "onnxruntime_int8") and calibration is None:  # random weights: the same random images
        calibration = [torch.randn(16, *input_size, generator=torch.Generator().manual_seed(1))]
    if path == "onnxruntime_fp32":
        runner = onnxruntime_runner(model, input_size, workdir or Path(tempfile.mkdtemp()))
    elif path == "onnxruntime_int8":
        runner = onnxruntime_int8_runner(model, input_size, workdir or Path(tempfile.mkdtemp()), calibration)
    elif path in REQUESTS:
        calibration = calibration if path == "int8" else None
        plan = choose_path(model, "cpu", calibration, REQUESTS[path])
        runner, info = build_runner(model, plan, example_batch(input_size, batch_size), calibration=calibration,
                                    verify=False)
    else:
        raise ValueError(f"unknown benchmark path {path!r}; choose from {', '.join(PATHS)}")
    return runner, info, time.perf_counter() - start - (sum(runner.compile_seconds.values()) if info else 0.0)


def onnxruntime_runner(model: nn.Module, input_size, workdir: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime fp32 on the CPU EP for `model`, exported as `deepres export` does (without its metadata)."""
    path = workdir / "model.onnx"
    export_onnx(model.eval(), torch.randn(2, *input_size), path)
    run = session_runner(path)
    return lambda x: torch.from_numpy(run(x.float().contiguous()))


def onnxruntime_int8_runner(model: nn.Module, input_size, workdir: Path, calibration: list[torch.Tensor]
                            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime's own static int8 on the CPU EP, deepres int8's peer: the fp32 ONNX export, ORT's shape
    pre-processing, then quantize_static in the QDQ format (uint8 activations, int8 per-channel weights, MinMax
    ranges) calibrated on the same `calibration` batches deepres int8 observes."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared, quantized = workdir / "int8_source.onnx", workdir / "int8_prepared.onnx", workdir / "int8.onnx"
    export_onnx(model.eval(), torch.randn(2, *input_size), source)
    quant_pre_process(str(source), str(prepared))
    input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch.float().contiguous().numpy()}

    quantize_static(str(prepared), str(quantized), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    run = session_runner(quantized)
    return lambda x: torch.from_numpy(run(x.float().contiguous()))


# ------------------------------------------------------------------------------------------ timing


def time_calls(runner: Callable, batch: torch.Tensor, *, warmup: int, seconds: float, min_iterations: int,
               max_iterations: int) -> list[float]:
    """Per-call wall times (s) after `warmup` untimed calls, until `seconds` pass (within the iteration bounds)."""
    with torch.inference_mode():
        for _ in range(warmup):
            runner(batch)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < max_iterations and (len(times) < min_iterations or
                                                time.perf_counter() - started < seconds):
            t = time.perf_counter()
            runner(batch)
            times.append(time.perf_counter() - t)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement in %, max abs logit difference)."""
    same = (logits.argmax(1) == reference.argmax(1)).float().mean().item() * 100
    return same, float((logits.float() - reference.float()).abs().max())


def run_batches(runner: Callable, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([runner(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])


# ------------------------------------------------------------------------------------------ the benchmark


def benchmark(cases=DEFAULT_CASES, paths=DEFAULT_PATHS, **options) -> list[BenchRow]:
    """Time every path on every case (see _benchmark); compile times are cold: inductor's caches are off."""
    import torch._inductor.config as inductor_config

    # Report what a fresh machine's first run costs, not a warm on-disk inductor cache.
    with inductor_config.patch(force_disable_caches=True):
        return _benchmark(cases, paths, **options)


def _benchmark(cases=DEFAULT_CASES, paths=DEFAULT_PATHS, *, warmup: int = 2, seconds: float = 2.0,
               min_iterations: int = 5, max_iterations: int = 200, agreement_images: int = 32, rounds: int = 1,
               seed: int = 0, log=print) -> list[BenchRow]:
    """Time every path on every case. The paths of one model are all built (and compiled for each batch size)
    first, then timed in `rounds` interleaved rounds, each path and batch for about `seconds` per round: a
    machine whose speed drifts over minutes (a shared VM) then slows every path alike, not the last ones."""
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown benchmark path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    rows: list[BenchRow] = []
    by_model: dict[tuple[str, int], list[int]] = {}
    for name, size, batch in cases:
        by_model.setdefault((name, size), []).append(batch)
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        for (name, size), batches in by_model.items():
            torch.manual_seed(seed)
            model = create_model(name).eval()
            default_path = choose_path(model, "cpu").dtype  # what precision="auto" runs (no int8 calibration)
            input_size = (3, size, size)
            # Agreement images go through in chunks of the largest batch (a whole number of them), so a compiled
            # path sees no input shape beyond the timed ones.
            chunk = max(batches)
            images = torch.randn(-(-agreement_images // chunk) * chunk, *input_size, generator=generator)
            inputs = {b: torch.randn(b, *input_size, generator=generator) for b in batches}
            reference = run_batches(model, images, chunk)
            built = {}  # path -> (runner, info, prepare_s, agreement, max error)
            for path in paths:
                runner, info, prepare_s = build_path(path, model, input_size, workdir=Path(tmp), batch_size=chunk)
                agree, error = agreement(run_batches(runner, images, chunk), reference)
                if info is not None and info.compiled:  # compile every batch size outside the timing
                    for batch in batches:
                        runner(inputs[batch])
                built[path] = runner, info, prepare_s, agree, error
            times: dict[tuple[str, int], list[float]] = {(path, batch): [] for path in paths for batch in batches}
            for round_index in range(rounds):
                for path in paths:
                    for batch in batches:
                        times[path, batch] += time_calls(built[path][0], inputs[batch], warmup=warmup,
                                                         seconds=seconds, min_iterations=min_iterations,
                                                         max_iterations=max_iterations)
                        if round_index == rounds - 1:
                            rows.append(_bench_row(name, size, batch, path, built[path], times[path, batch],
                                                   inputs[batch], len(images), default=path == default_path))
                            log(f"{name} {size}px batch {batch} {path}: {rows[-1].images_per_s:.1f} img/s, p50 "
                                f"{rows[-1].p50_ms:.1f} ms ({rows[-1].iterations} iterations in {rounds} "
                                f"round(s))")
            del built
    return rows


def _bench_row(name: str, size: int, batch: int, path: str, built: tuple, times: list[float], x: torch.Tensor,
               agreement_n: int, *, default: bool) -> BenchRow:
    runner, info, prepare_s, agree, error = built
    compile_s = runner.compile_seconds.get(tuple(x.shape), 0.0) if info is not None and info.compiled else 0.0
    return BenchRow(model=name, image_size=size, batch_size=batch, path=path,
                    images_per_s=batch / statistics.median(times), p50_ms=percentile(times, 50) * 1e3,
                    p95_ms=percentile(times, 95) * 1e3, iterations=len(times), agreement=agree,
                    agreement_n=agreement_n, max_abs_error=error, prepare_s=prepare_s, compile_s=compile_s,
                    default=default, steps=list(info.steps) if info else [ORT_STEPS[path]])


def checkpoint_agreement(checkpoint: str | Path, paths=DEFAULT_PATHS, *, limit: int = 0, batch_size: int = 500,
                         calibration_images: int = 512, timing_batch: int = 0, seconds: float = 2.0,
                         log=print) -> list[dict]:
    """Top-1 accuracy of each path and its agreement with eager fp32 on the test split of a trained model
    (its first `limit` images; 0 = all); with timing_batch > 0 also its images/s on real test images at that
    batch size. Both int8 paths calibrate on the same `calibration_images` training images; "default" is what
    init_model runs for this checkpoint (its stored int8 calibration where that clears the bar on this CPU)."""
    path = resolve_checkpoint(str(checkpoint))
    loaded = load_model(path) if path.suffix == ".safetensors" else None
    if loaded is None or loaded.config is None:
        raise ValueError(f"--agreement-checkpoint {checkpoint}: no deepres config inside {path}, so the test set "
                         f"is unknown; give a deepres run directory or .safetensors checkpoint")
    unknown = [p for p in paths if p not in CHECKPOINT_PATHS]
    if unknown:
        raise ValueError(f"unknown benchmark path(s) {', '.join(unknown)}; choose from {', '.join(CHECKPOINT_PATHS)}")
    cfg = apply_overrides(loaded.config, [f"data.eval_batch_size={batch_size}", f"data.limit_val={limit}"])
    model = loaded.model
    train_loader, eval_loader, _ = build_loaders(cfg.data, torch.device("cpu"), seed=cfg.train.seed)
    images, labels = [], []
    for x, y in eval_loader:
        images.append(x.float())
        labels.append(y)
    images, labels = torch.cat(images), torch.cat(labels)
    calibration, seen = [], 0
    for x, _ in train_loader:  # int8 observes real training images (augmented, as the loader gives them)
        calibration.append(x.float())
        seen += len(x)
        if seen >= calibration_images:
            break
    if len(images) < timing_batch:
        raise ValueError(f"--checkpoint-batch {timing_batch}: only {len(images)} test images")
    input_size = tuple(images.shape[1:])
    reference = run_batches(model, images, batch_size)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in paths:
            if name == "default":
                runner, reason = _default_runner(path, timing_batch or 2)
            else:
                runner, _, _ = build_path(name, model, input_size, calibration=calibration, workdir=Path(tmp))
                reason = ""
            logits = run_batches(runner, images, batch_size)
            agree, error = agreement(logits, reference)
            top1 = (logits.argmax(1) == labels).float().mean().item() * 100
            row = {"path": name, "agreement": agree, "top1": top1, "max_abs_error": error, "n": len(labels),
                   "checkpoint": str(path), "model": cfg.model.name, "calibration_images": seen, "reason": reason}
            if timing_batch:
                times = time_calls(runner, images[:timing_batch], warmup=2, seconds=seconds, min_iterations=5,
                                   max_iterations=500)
                row.update(batch_size=timing_batch, images_per_s=timing_batch / statistics.median(times),
                           p50_ms=percentile(times, 50) * 1e3)
            results.append(row)
            speed = f", {row['images_per_s']:.0f} img/s at batch {timing_batch}" if timing_batch else ""
            log(f"{path} {name}: top-1 {top1:.2f}%, agreement with eager fp32 {agree:.2f}% of {len(labels)}{speed}"
                + (f" ({reason})" if reason else ""))
    return results


def _default_runner(checkpoint: Path, batch_size: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The runner init_model(checkpoint) uses by default on the CPU, and why it picked it."""
    predictor = init_model(str(checkpoint), device="cpu")
    runner = predictor.fast_runner(batch_size)
    return runner, predictor.plan.reason


# ------------------------------------------------------------------------------------------ report


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def environment() -> dict:
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
           "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
           "available_cores": available_cores(), "cpu_int8": cpu_int8_flags(), "load_average": _load_average(),
           "isa": cpu_isa(), "cpu_class": cpu_class_label(),
           "load_warning": load_warning()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    cpu = cpu_model_name()
    if cpu:
        env["cpu"] = cpu
    return env


def markdown_table(rows: list[BenchRow]) -> str:
    lines = ["| model | size | batch | path | img/s | p50 ms | p95 ms | iters | top-1 agree | max abs err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = f"{r.agreement:.1f}% ({r.agreement_n})" if r.agreement is not None else "-"
        error = f"{r.max_abs_error:.2g}" if r.max_abs_error is not None else "-"
        label = f"**{r.path}** (auto)" if r.default else r.path
        lines.append(f"| {r.model} | {r.image_size} | {r.batch_size} | {label} | {r.images_per_s:.1f} | "
                     f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.iterations} | {agree} | {error} |")
    return "\n".join(lines)


def agreement_table(results: list[dict]) -> str:
    timed = any("images_per_s" in r for r in results)
    lines = ["| path | top-1 | agreement with eager fp32 | max abs err | images |" + (" batch | img/s |" * timed),
             "|---|---|---|---|---|" + ("---|---|" * timed)]
    for r in results:
        speed = f" {r['batch_size']} | {r['images_per_s']:.1f} |" if "images_per_s" in r else ""
        lines.append(f"| {r['path']} | {r['top1']:.2f}% | {r['agreement']:.2f}% | {r['max_abs_error']:.2g} | "
                     f"{r['n']} |{speed}")
    reasons = [f"default: {r['reason']}" for r in results if r.get("reason")]
    return "\n".join(lines + reasons)
