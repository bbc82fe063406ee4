"""Devices, precisions, seeds and what the CPU can do: the facts every layer asks about the machine."""
import contextlib
import functools
import getpass
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepres.core.malloc import KEEP_FREED_MEMORY, M_MMAP_MAX, M_TRIM_THRESHOLD, glibc_mallopt

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.amp / --amp -> autocast dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for one that has none)."""
    tensor = next(iter(model.parameters()), None)
    tensor = tensor if tensor is not None else next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


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


@contextlib.contextmanager
def nondeterministic_kernels_allowed():
    """Inside: kernels without a deterministic implementation run even in a train.deterministic process (the
    quantized int8 ones have none, and calibration computes ranges and an agreement, not training updates)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo; "" where there is none (e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


# CPU classes, from the fewest instructions to the most, and the /proc/cpuinfo flags each one may keep. deepres's
# choice rules (training precision, inference path, int8 default) read the flags; DEEPRES_CPU_ISA=CLASS hides the
# flags above CLASS from them, so a machine of a higher class decides as the lower one would (isa_restriction_env
# also limits the kernels: oneDNN, ATen, inductor, fbgemm and MKL). AVX2: the commonest server and laptop class
# (e.g. AMD EPYC Zen 2/3), no AVX-512, no VNNI, no native bf16. AVX512: AVX-512 with BF16 and VNNI where the CPU
# has them (e.g. AMD EPYC Zen 4), no AMX. AMX: Intel Xeon Sapphire Rapids and later.
CPU_CLASSES = ("avx2", "avx512", "amx")
_CLASS_HIDES = {"avx2": ("avx512", "amx", "avx_vnni"), "avx512": ("amx", "avx_vnni"), "amx": ()}  # flag prefixes hidden
CPU_ISA_ENV = "DEEPRES_CPU_ISA"


def _isa_override() -> str | None:
    value = os.environ.get(CPU_ISA_ENV, "").strip().lower()
    if value and value not in CPU_CLASSES:
        raise ValueError(f"{CPU_ISA_ENV}={value!r}: must be one of {', '.join(CPU_CLASSES)} (or unset)")
    return value or None


@functools.cache
def _proc_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS), less those that
    DEEPRES_CPU_ISA hides (see CPU_CLASSES)."""
    flags, limit = _proc_cpu_flags(), _isa_override()
    if limit is None:
        return flags
    return frozenset(f for f in flags if not f.startswith(_CLASS_HIDES[limit]))


def cpu_class(flags: frozenset[str] | None = None) -> str:
    """'amx', 'avx512', 'avx2' or 'baseline' (none of them: older x86, or flags unknown, e.g. ARM or macOS)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "baseline"


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    flags = cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True
    if flags or _isa_override():  # the flags are known (or restricted on purpose): they decide
        return False
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


# Emulated bf16 training on an AVX2 CPU, measured against fp32 (issue 25: `deepres train fashion_mnist/resnet20`
# with amp=bf16, 50 img/s, against a plain fp32 loop's 501-512 img/s on a 2-core AMD EPYC with AVX2 only)
EMULATED_BF16_SLOWDOWN = 10


@dataclass(frozen=True)
class AmpChoice:
    """An autocast precision decided for this device: amp 'none' (fp32), 'bf16' or 'fp16', and why."""
    amp: str
    reason: str
    emulated: bool = False  # bf16 on a CPU that has no bf16 instructions: it runs, about 10x slower than fp32

    @property
    def dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp]

    @property
    def label(self) -> str:  # what a result line says it ran in
        return "fp32" if self.amp == "none" else self.amp


def resolve_amp(requested: str, device: torch.device) -> AmpChoice:
    """train.amp / --amp on this device. 'auto': bf16 where the device computes it natively (auto_dtype: CUDA with
    bf16, AVX-512 BF16, AMX), else 'none' (fp32); fp16 only where asked. An explicit bf16 on a CPU without native bf16
    runs, and the reason says it is emulated and how much slower it measured."""
    if requested not in AMP_DTYPES and requested != "auto":
        raise ValueError(f"amp={requested!r}: must be one of auto, {', '.join(AMP_DTYPES)}")
    where = f"CPU class {cpu_class()}" if device.type == "cpu" else device.type
    if requested == "auto":
        if auto_dtype(device) == "bf16":
            return AmpChoice("bf16", f"auto: native bf16, {where}")
        return AmpChoice("none", f"auto: fp32, no native bf16 on {where}")
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return AmpChoice("bf16", f"bf16 as asked, but this CPU ({where}) has no native bf16: it is emulated, about "
                                 f"{EMULATED_BF16_SLOWDOWN}x slower than fp32 in training (measured on an AVX2 AMD "
                                 f"EPYC); amp=auto picks fp32 here", emulated=True)
    return AmpChoice(requested, "as asked")


INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")  # /proc/cpuinfo flags of 8-bit dot-product instructions


def cpu_int8_flags() -> list[str]:
    """This CPU's int8 dot-product flags (AMX-INT8, AVX-512 VNNI, AVX-VNNI), in that order; [] without any."""
    return [flag for flag in INT8_FLAGS if flag in cpu_flags()]


def isa_restriction_env(cpu_isa_class: str) -> dict[str, str]:
    """Environment variables that make this process's kernels and deepres's choice rules act as on a CPU of
    `cpu_isa_class` (one of CPU_CLASSES): oneDNN (ONEDNN_MAX_CPU_ISA), ATen's and inductor's vector code
    (ATEN_CPU_CAPABILITY), fbgemm (FBGEMM_ENABLE_INSTRUCTIONS), MKL (MKL_ENABLE_INSTRUCTIONS) and deepres
    (DEEPRES_CPU_ISA). They must be set before torch is imported: a benchmark re-executes itself with them. ONNX
    Runtime has no such switch, so its figures stay those of the real CPU."""
    if cpu_isa_class not in CPU_CLASSES:
        raise ValueError(f"CPU class {cpu_isa_class!r}: must be one of {', '.join(CPU_CLASSES)}")
    kernels = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
               "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "ATEN_CPU_CAPABILITY": "avx512",
                          "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
               "amx": {}}[cpu_isa_class]
    if kernels:
        # A cache of inductor's own: torch 2.13's FX graph cache key leaves out the vector width that
        # ATEN_CPU_CAPABILITY picks, so code generated for AVX2's 8 lanes was reused by an unrestricted process,
        # compiled there for 16 and wrote past its buffers (heap corruption in fp32 ResNet-20 training, measured)
        base = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
            tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
        for cls in CPU_CLASSES:  # already a restricted process's (re-executed): the same folder again
            base = base.removesuffix(f"-isa-{cls}")
        kernels["TORCHINDUCTOR_CACHE_DIR"] = f"{base}-isa-{cpu_isa_class}"
    return kernels | {CPU_ISA_ENV: cpu_isa_class}


def reexec_as_cpu_class(cpu_isa_class: str | None) -> None:
    """Re-execute this script (a benchmark's --isa CLASS) with isa_restriction_env(CLASS) set, unless it already
    is; None does nothing. torch reads ATEN_CPU_CAPABILITY when it loads, so the restriction needs a new process."""
    if cpu_isa_class is None:
        return
    env = isa_restriction_env(cpu_isa_class)
    if all(os.environ.get(name) == value for name, value in env.items()):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


# ------------------------------------------------------------------------------------------ cores and threads


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask (taskset, cpusets), further capped by a cgroup CPU quota
    (containers: cgroup v2 cpu.max, v1 cpu.cfs_quota_us), rounded up; at least 1. os.cpu_count() counts every
    core of the machine, and torch's default thread count can exceed what a container is allowed to use."""
    cpus = _affinity()
    cores = len(cpus) if cpus is not None else os.cpu_count() or 1
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
    reset_thread_governor(ceiling=threads, reserved=workers)  # adapt_threads: at most this many, fewer when busy
    return threads


class ThreadGovernor:
    """Adapts torch's intra-op threads to the cores other processes leave free, measured between calls.

    Why: with OpenMP threads on every core, one core taken by another process makes each parallel region wait for
    the thread that shares it, and the spinning waiters take CPU from it too, so a 2-thread job on 2 cores runs
    4-9x slower beside one busy process instead of 2x (benchmarks/contention.py). One thread per free core keeps
    it at about the share of the machine that is left. tick() is cheap (two small /proc reads at most every
    `interval` seconds): call it once per batch. Over each interval it counts the CPU time the process's own CPUs
    spent busy (/proc/stat, steal included) minus this process's CPU time; `reserved` cores of that are this job's
    own helpers (DataLoader workers). Threads = the ceiling (the count in force at the first tick, or set by
    `ceiling`) minus the other processes' whole cores, at least 1. It stays off where /proc/stat cannot speak for
    this process's cores (not Linux, or a cgroup CPU quota: the host's other tenants would count) and with
    DEEPRES_ADAPTIVE_THREADS=0."""

    def __init__(self, interval: float = 1.0, reserved: float = 0.0, stat_path: str = "/proc/stat"):
        self.interval, self.reserved, self.stat_path = interval, reserved, stat_path
        self.ceiling: int | None = None
        self.cpus = _affinity()
        self.enabled = (os.environ.get("DEEPRES_ADAPTIVE_THREADS", "1") != "0" and self.cpus is not None
                        and cgroup_cpu_quota() is None and self._busy() is not None)
        self._last = None  # (wall, busy cpu seconds of our cpus, this process's cpu seconds)
        self.others = 0.0  # cores' worth of other processes' work over the last interval

    def _busy(self) -> float | None:
        """Busy seconds (user, nice, system, irq, softirq, steal) summed over this process's CPUs."""
        try:
            with open(self.stat_path) as f:
                lines = [line.split() for line in f if line.startswith("cpu") and not line.startswith("cpu ")]
        except OSError:
            return None
        ticks = 0
        for fields in lines:
            if int(fields[0][3:]) in self.cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
                ticks += user + nice + system + irq + softirq + steal
        return ticks / os.sysconf("SC_CLK_TCK")

    def tick(self) -> int | None:
        """Re-decide the thread count if an interval has passed; returns the count set, or None (no change)."""
        if not self.enabled:
            return None
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.interval:
            return None
        busy, own = self._busy(), time.process_time()
        if self.ceiling is None:
            self.ceiling = torch.get_num_threads()
        last, self._last = self._last, (now, busy, own)
        if last is None or busy is None:
            return None
        wall = now - last[0]
        self.others = max(0.0, (busy - last[1]) - (own - last[2])) / wall - self.reserved
        threads = max(1, min(self.ceiling, len(self.cpus) - math.ceil(self.others - 0.5)))
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return None


_GOVERNOR: ThreadGovernor | None = None


def adapt_threads() -> int | None:
    """The process-wide ThreadGovernor's tick (see there): inference runners and the training loop call it."""
    global _GOVERNOR
    if _GOVERNOR is None:
        _GOVERNOR = ThreadGovernor()
    return _GOVERNOR.tick()


def thread_ceiling() -> int:
    """The threads this process computes with when no other process competes: the process-wide governor's
    ceiling once it has ticked, else torch's current count. What a peer library (ONNX Runtime) is given, so a
    moment of contention when its session is made does not fix it at fewer threads for good."""
    if _GOVERNOR is not None and _GOVERNOR.ceiling is not None:
        return _GOVERNOR.ceiling
    return torch.get_num_threads()


def reset_thread_governor(*, ceiling: int | None = None, reserved: float = 0.0) -> None:
    """Start the process-wide governor afresh: `ceiling` threads at most (None: the count in force at its first
    tick), `reserved` cores of this job's own helper processes not counted as contention."""
    global _GOVERNOR
    _GOVERNOR = ThreadGovernor(reserved=reserved)
    _GOVERNOR.ceiling = ceiling


_HEAP_KEPT: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel; True when it does.

    glibc serves every block over 32 MB (a ResNet-50 activation at batch 16, 224 px, is 51 MB) with a fresh mmap
    and unmaps it on free, so each forward pass page-faults its large activations back in, zero-filled. ONNX
    Runtime keeps an arena and never pays that; measured on ResNet-50 b16 (Xeon, 2 threads) the faults took 28%
    of BN-folded fp32's time (23.8 -> 32.9 img/s without them) and 24% of bf16's (93.0 -> 122.3). Here malloc
    stops using mmap and keeps up to 1 GiB of freed heap, so the process holds on to its peak memory, as ORT's
    arena does. Once per process; glibc on Linux only (elsewhere False); DEEPRES_KEEP_FREED_MEMORY=0 turns it off.
    Blocks freed by a thread with an arena of its own are unmapped all the same (core.malloc.one_arena).
    """
    global _HEAP_KEPT
    if _HEAP_KEPT is None:
        _HEAP_KEPT = os.environ.get(KEEP_FREED_MEMORY, "1") != "0" and glibc_mallopt(
            (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30))
    return _HEAP_KEPT


def cpu_mhz() -> float | None:
    """The clock /proc/cpuinfo reports (MHz; a VM's nominal clock, turbo not included), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((float(line.split(":", 1)[1]) for line in f if line.startswith("cpu MHz")), None)
    except (OSError, ValueError):
        return None


def fp32_peak_gflops(cores: int | None = None) -> float | None:
    """fp32 FMA peak of `cores` cores (default: available_cores) at cpu_mhz(): 2 FMA units x vector lanes x 2
    FLOP per cycle: 32 FLOP/cycle with AVX2 (and AMD's AVX-512, which Zen 4 runs on 256-bit units), 64 with Intel's
    AVX-512; None where the clock is unknown. A benchmark divides achieved GFLOP/s by it."""
    mhz = cpu_mhz()
    if mhz is None:
        return None
    flags = cpu_flags()
    per_cycle = 64 if "avx512f" in flags and "AMD" not in cpu_model_name() else 32 if "avx2" in flags else 16
    return (cores or available_cores()) * mhz / 1000 * per_cycle


# The ISA flags benchmarks report: what the bf16 / int8 / fp32 kernels use
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_isa() -> list[str]:
    """This CPU's ISA_FLAGS, in that order."""
    return [flag for flag in ISA_FLAGS if flag in cpu_flags()]


def machine_summary() -> dict:
    """What a benchmark prints and stores next to its figures: CPU model, its ISA flags that matter to the kernels,
    available cores, torch's threads and version, and the load warning (None when the machine is quiet)."""
    return {"cpu": cpu_model_name() or "unknown CPU", "isa": cpu_isa(), "cpu_class": cpu_class_label(),
            "available_cores": available_cores(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_warning": load_warning()}


def cpu_class_label() -> str:
    """The CPU class, and how it was had: 'amx', or 'avx2 (restricted by DEEPRES_CPU_ISA from amx)'."""
    real, limit = cpu_class(_proc_cpu_flags()), _isa_override()
    if limit is None or cpu_class() == real:
        return real
    env = {name: os.environ[name] for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if name in os.environ}
    kernels = ", ".join(f"{k}={v}" for k, v in env.items()) or "kernels NOT restricted"
    return f"{cpu_class()} (restricted from {real}: {CPU_ISA_ENV}={limit}, {kernels})"


def machine_line(machine: dict) -> str:
    return (f"CPU: {machine['cpu']}, class {machine.get('cpu_class', '?')} ({machine['available_cores']} available "
            f"cores, {machine['torch_threads']} torch threads; ISA flags: {', '.join(machine['isa']) or 'none'}); "
            f"torch {machine['torch']}")


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
