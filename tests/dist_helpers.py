"""A pool of spawned processes forming one gloo process group on CPU, for distributed tests.

Starting processes and importing torch costs seconds, so one pool serves a whole test module: `RankPool.run(fn,
*args)` runs fn(rank, world_size, *args) on every rank at once and returns each rank's (ok, value or error text).
A call that does not finish in time kills the pool and fails, so a hang shows up as a failure, never as a stuck
test run. Task functions must live at module level in an importable module (spawned processes import them
by name), e.g. the test module itself.
"""
from __future__ import annotations

import datetime
import os
import queue
import socket
import time
import traceback

import torch
import torch.multiprocessing as mp
import torch.nn as nn

from deepres.models import list_models, register_model

NOBN_MODEL = "_test_nobn_dist"


class NoBNNet(nn.Module):
    """conv-ReLU, global pool, linear: no BatchNorm, so a per-rank batch sees no batch statistics."""

    def __init__(self, num_classes=4, in_chans=3, width=8, **_):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv1(x)).mean(dim=(2, 3)))


if NOBN_MODEL not in list_models():
    @register_model(input_size=(3, 8, 8))
    def _test_nobn_dist(num_classes=4, in_chans=3, **kwargs):
        return NoBNNet(num_classes, in_chans, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank: int, world_size: int, port: int, tasks, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks on a shared 2-core machine
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size,
                                         timeout=datetime.timedelta(seconds=60))
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            results.put((rank, True, fn(rank, world_size, *args)))
        except BaseException as e:  # reported to the test, which decides
            results.put((rank, False, (type(e).__name__, str(e), traceback.format_exc())))
    torch.distributed.destroy_process_group()


class RankPool:
    def __init__(self, world_size: int = 2):
        ctx = mp.get_context("spawn")
        self.world_size = world_size
        self.tasks = [ctx.Queue() for _ in range(world_size)]
        self.results = ctx.Queue()
        port = free_port()
        self.processes = [ctx.Process(target=_serve, args=(rank, world_size, port, self.tasks[rank], self.results),
                                      daemon=True) for rank in range(world_size)]
        for p in self.processes:
            p.start()
        self.broken = False

    def run(self, fn, *args, timeout: float = 60.0) -> list[tuple[bool, object]]:
        """fn(rank, world_size, *args) on every rank; [(ok, result or (type, message, traceback))] by rank."""
        assert not self.broken, "the pool was killed by an earlier timeout"
        for q in self.tasks:
            q.put((fn, args))
        out = {}
        deadline = time.monotonic() + timeout
        while len(out) < self.world_size:
            try:
                rank, ok, value = self.results.get(timeout=1.0)
                out[rank] = (ok, value)
                continue
            except queue.Empty:
                pass
            dead = [r for r, p in enumerate(self.processes) if not p.is_alive()]
            if dead or time.monotonic() > deadline:
                self.kill()
                why = f"rank(s) {dead} died" if dead else f"no answer within {timeout:.0f} s (hang?)"
                raise TimeoutError(f"{fn.__name__}: {why}; finished ranks: {sorted(out)}")
        return [out[r] for r in range(self.world_size)]

    def kill(self) -> None:
        self.broken = True
        for p in self.processes:
            if p.is_alive():
                p.kill()
            p.join(5)

    def close(self) -> None:
        if self.broken:
            return
        for q in self.tasks:
            q.put(None)
        deadline = time.monotonic() + 2.0  # a graceful exit, else a kill: nothing is left to save
        for p in self.processes:
            p.join(max(deadline - time.monotonic(), 0.0))
        self.kill()
