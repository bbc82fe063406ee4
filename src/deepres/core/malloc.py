"""glibc's malloc settings (mallopt through ctypes), importable before torch: what core.device.keep_freed_memory
sets, and one_arena, which only works before the process's threads first allocate."""
import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # mallopt parameters (malloc.h)
KEEP_FREED_MEMORY = "DEEPRES_KEEP_FREED_MEMORY"  # "0": none of deepres's malloc settings


def glibc_mallopt(*settings: tuple[int, int]) -> bool:
    """mallopt(param, value) for each setting; True when glibc took them all (False on musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - AttributeError on musl, macOS and Windows: not glibc
        return all(libc.mallopt(param, value) == 1 for param, value in settings)
    except (AttributeError, OSError):
        return False


def one_arena() -> bool:
    """Every thread allocates from the main heap (one malloc arena), where keep_freed_memory keeps freed blocks for
    reuse; True when glibc took it. A thread's own arena is a string of 64 MB heaps that glibc unmaps as soon as
    they are free, so a model run on a thread other than the main one page-faulted its large activations in again at
    every call: ResNet-50 b32 bf16 on a worker thread took 340-380 ms against 280-300 ms on the main thread, and
    316-339 ms with this (2-core Xeon). glibc fixes a thread's arena at its first allocation and keeps the arenas
    made before, so this is called before torch loads (`deepres serve` does, its model on a worker thread);
    DEEPRES_KEEP_FREED_MEMORY=0 turns it off."""
    return os.environ.get(KEEP_FREED_MEMORY, "1") != "0" and glibc_mallopt((M_ARENA_MAX, 1))
