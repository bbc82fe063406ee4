"""SIGINT (Ctrl-C) and SIGTERM (kill, SLURM's time limit or preemption) during training: the handler only asks
the loop to stop; the loop stops at the next optimizer step, saves checkpoints/last there (mid-epoch included)
and raises deepres.core.errors.TrainingInterrupted."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by the signal handler (or a caller); the loop reads `signum` once per optimizer step."""

    def __init__(self) -> None:
        self.signum = 0  # 0 = keep training

    def request(self, signum: int) -> None:
        self.signum = int(signum)


@contextmanager
def stop_on_signals(stop: StopRequest):
    """While the block runs, SIGINT and SIGTERM set `stop`; a second one interrupts at once (KeyboardInterrupt).

    Handlers are installed only in the main thread (Python runs them there and refuses them elsewhere: fit
    may run in a worker thread), and the previous handlers are put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum, _frame):
        if stop.signum:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        stop.request(signum)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python
