"""Multi-process training under torchrun: process group set-up, rank helpers and errors that stop every rank.

`torchrun --nproc-per-node N -m deepres train RECIPE` starts N processes with RANK, WORLD_SIZE and LOCAL_RANK
in their environment; `process_group` reads them, initialises NCCL (CUDA, one device per process: LOCAL_RANK)
or gloo (CPU), and destroys the group when training ends or fails. A process group that the caller already
initialised (tests, notebooks) is used as it is and left alone.

Any collective that one rank skips leaves the others waiting forever, so every step that can fail on one rank
only (reading a checkpoint, building the data, writing a checkpoint) ends in `raise_if_any_failed`: all ranks
exchange their error, if any, and all raise together.
"""
from __future__ import annotations

import builtins
import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import NonFiniteLossError  # the one non-builtin error every rank must recognise

# torchrun's variables; WORLD_SIZE alone decides whether this is a distributed run
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# How long a collective may wait for a rank before failing, minutes. Long enough for rank 0 to write a large
# checkpoint while the others wait; torchrun also stops every rank when one of them dies.
COLLECTIVE_TIMEOUT_MIN = 30


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0  # this process among all processes, 0..world_size-1
    world_size: int = 1  # processes in all (nodes x processes per node)
    local_rank: int = 0  # this process on its node; picks the CUDA device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, records and writes checkpoints."""
        return self.rank == 0


def torchrun_env() -> DistInfo | None:
    """RANK / WORLD_SIZE / LOCAL_RANK from the environment (set by torchrun), or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    values = {}
    for name in TORCHRUN_VARIABLES:
        text = os.environ.get(name, "0" if name == "LOCAL_RANK" else None)
        if text is None or not text.strip().isdigit():
            raise ValueError(f"environment variable {name}={text!r}: expected a non-negative integer "
                             f"(torchrun sets {', '.join(TORCHRUN_VARIABLES)})")
        values[name] = int(text)
    info = DistInfo(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])
    if info.world_size < 1 or info.rank >= info.world_size:
        raise ValueError(f"environment: RANK={info.rank} is not below WORLD_SIZE={info.world_size}")
    return info


def is_main_process() -> bool:
    """False in torchrun's processes other than rank 0 (which alone print results); True otherwise."""
    rank = os.environ.get("RANK", "0").strip()
    return not rank.isdigit() or int(rank) == 0


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device_for(device: torch.device, local_rank: int) -> torch.device:
    """cuda -> cuda:LOCAL_RANK (one GPU per process); an explicit index or a CPU device stays as given."""
    if device.type != "cuda" or device.index is not None:
        return device
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)  # the launcher gave each process its own GPU (CUDA_VISIBLE_DEVICES)
    if local_rank >= count:
        raise ValueError(f"LOCAL_RANK={local_rank} but only {count} CUDA device(s) are visible; start at most "
                         f"{count} processes per node (torchrun --nproc-per-node {count})")
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[DistInfo, torch.device]]:
    """Yield (rank info, this process's device); initialises from torchrun's variables and cleans up after."""
    if dist.is_available() and dist.is_initialized():  # set up by the caller: use it, leave it
        env = torchrun_env()
        rank = dist.get_rank()
        info = DistInfo(rank, dist.get_world_size(), env.local_rank if env is not None else rank)
        device = _device_for(device, info.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        yield info, device
        return
    info = torchrun_env()
    if info is None or not info.enabled:
        yield DistInfo(), device
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    device = _device_for(device, info.local_rank)
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds NCCL to this device at once
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank,
                            world_size=info.world_size, timeout=datetime.timedelta(minutes=COLLECTIVE_TIMEOUT_MIN),
                            **kwargs)
    try:
        yield info, device
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- helpers


def raise_if_any_failed(error: BaseException | None) -> None:
    """Collective: if any rank passes an error, every rank raises (its own error, or the first rank's).

    Also a barrier: no rank returns before every rank has called it."""
    if not is_distributed():
        if error is not None:
            raise error
        return
    # Only the type name and message travel: any exception's text pickles, not every exception does.
    mine = None if error is None else (type(error).__name__, _message(error))
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if error is not None:
        raise error
    failed = [(rank, item) for rank, item in enumerate(gathered) if item is not None]
    if failed:
        rank, (type_name, message) = failed[0]
        raise _rebuild(type_name, f"{message} (on rank {rank})")


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)


def _rebuild(type_name: str, message: str) -> BaseException:
    """The same builtin exception type (so the CLI prints it as a user error), else a RuntimeError."""
    known = {"NonFiniteLossError": NonFiniteLossError}
    cls = known.get(type_name) or getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # an exception type with another constructor
            pass
    return RuntimeError(f"{type_name}: {message}")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (no-op in a single process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step each rank's
    statistics include its own last batch; before evaluating or saving, all ranks take rank 0's."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def same_on_all_ranks(value: int, what: str, hint: str = "every rank must run the same number of steps") -> None:
    """Raise on every rank unless `value` is equal on all of them (e.g. batches per epoch); `hint` ends the message."""
    if not is_distributed():
        return
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, int(value))
    if len(set(gathered)) > 1:
        listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(gathered))
        raise ValueError(f"{what} differs between ranks ({listed}); {hint}")


def find_ddp(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DistributedDataParallel wrapper in `model` (possibly under torch.compile), or None."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return model
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
