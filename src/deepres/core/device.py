"""Devices, precisions, seeds and what the CPU can do: the facts every layer asks about the machine."""
import functools
import math
import os
import random
from pathlib import Path

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


# ------------------------------------------------------------------------------------------ cores and threads


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask (taskset, cpusets), further capped by a cgroup CPU quota
    (containers: cgroup v2 cpu.max, v1 cpu.cfs_quota_us), rounded up; at least 1. os.cpu_count() counts every
    core of the machine, and torch's default thread count can exceed what a container is allowed to use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The cgroup CPU quota in cores (quota / period), or None when there is none (unlimited, or not Linux)."""
    base = Path(root)
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
                                    ("cpu,cpuacct/cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_period_us")):
        try:
            fields = (base / quota_file).read_text().split()  # v2: "QUOTA PERIOD" or "max PERIOD"
            if period_file is not None:  # v1: the quota (-1 = none) and the period in two files
                fields = fields[:1] + (base / period_file).read_text().split()
            quota, period = float(fields[0]), float(fields[1])
        except (OSError, IndexError, ValueError):  # absent, or "max" / "-1": no quota
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def local_processes() -> int:
    """Processes of this job on this node (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun): they share its cores."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def thread_plan(workers: int, *, processes: int = 1, cores: int | None = None) -> tuple[int, int]:
    """(DataLoader workers, torch compute threads) per process whose sum over `processes` processes on this node
    is at most the available cores: workers leave each process at least one core to compute on."""
    per_process = max(1, (available_cores() if cores is None else cores) // max(1, processes))
    workers = max(0, min(workers, per_process - 1))
    return workers, max(1, per_process - workers)


def limit_compute_threads(requested: int | None = None, *, workers: int = 0, processes: int = 1) -> int:
    """Set torch's intra-op threads so that they and `workers` DataLoader workers, in each of `processes` processes
    (or threads that call torch side by side), fit the available cores: `requested` (e.g. --threads) capped there,
    or by default torch's own count lowered to fit (never raised: a caller, e.g. a study running runs side by side,
    may have set fewer). Returns the thread count in force. More threads than free cores is what makes the torch
    paths collapse under contention: OpenMP threads wait for each other at every parallel region while one of them
    is descheduled."""
    if requested is not None and requested < 1:
        raise ValueError(f"threads must be >= 1, got {requested}")
    fit = thread_plan(workers, processes=processes)[1]
    threads = min(requested if requested is not None else torch.get_num_threads(), fit)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def load_warning() -> str | None:
    """A warning when the 1-minute load average exceeds the available cores (other processes are using the CPU,
    so timings measure the contention as much as the code), else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return None
    cores = available_cores()
    if load <= cores:
        return None
    return (f"WARNING: the load average ({load:.1f}) exceeds the {cores} available core(s): other processes are "
            f"using the CPU, so the timings below are slower than this machine idle and not comparable")
