"""Devices, precisions, seeds and what the CPU can do: the facts every layer asks about the machine."""
import functools
import os
import random

import numpy as np
import torch

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.amp / --amp -> autocast dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool, device: torch.device) -> None:
    """Deterministic kernels (errors on ops that have none), or cuDNN autotuning when off."""
    if enabled and device.type == "cuda":
        # cuBLAS needs a fixed workspace for reproducible results; must be set before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and device.type == "cuda"


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo; "" where there is none (e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    flags = cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private; absent in some builds
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


def auto_dtype(device: torch.device) -> str:
    """'bf16' where the hardware computes it natively (CUDA with bf16, CPUs with AVX-512 BF16 / AMX), else 'fp32'."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")  # /proc/cpuinfo flags of 8-bit dot-product instructions


def cpu_int8_flags() -> list[str]:
    """This CPU's int8 dot-product flags (AMX-INT8, AVX-512 VNNI, AVX-VNNI), in that order; [] without any."""
    return [flag for flag in INT8_FLAGS if flag in cpu_flags()]


def cpu_has_vnni() -> bool:
    """True when the CPU has 8-bit dot products (AVX-512 VNNI, AVX-VNNI or AMX-INT8)."""
    return bool(cpu_int8_flags())
