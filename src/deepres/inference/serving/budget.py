"""The server-wide bound on memory held for requests in flight (--max-inflight-mb). Each request holds a Ticket on
the MemoryBudget and counts on it what it makes the server keep: its body as read, each image while it decodes (its
pixels as stored, known from the header before any is decoded) and once decoded (its pixels and its model input, until
the answer is sent), and the answer. A request that would go over the budget is refused at once: 503 with Retry-After
when other requests hold the room, 413 when it alone needs more than the whole budget. Thread-safe: images decode in
threads."""
import contextlib
import threading

from .limits import MIB, RequestError

RETRY_AFTER_S = 1  # what a 503 tells the client to wait, s: requests in flight finish in about that time


def mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f}"


class MemoryBudget:
    """`limit` bytes shared by every request in flight; `used` now, `peak` since start."""

    def __init__(self, limit: int, option: str = "--max-inflight-mb"):
        self.limit, self.option = limit, option
        self.used = self.peak = 0
        self._lock = threading.Lock()

    def ticket(self) -> "Ticket":
        return Ticket(self)


class Ticket:
    """One request's share of a MemoryBudget. `close` gives all of it back (when the answer has been sent); after it,
    `hold` refuses, so a thread still decoding for a request that has gone stops."""

    def __init__(self, budget: MemoryBudget):
        self.budget, self.held, self.closed = budget, 0, False

    def hold(self, nbytes: int, what: str, *, refuse: bool = True) -> int:
        """Count `nbytes` more for `what` (named in the refusal); refuse=False counts them whatever the total (an
        answer already made). Returns nbytes, to give back with `release`."""
        budget = self.budget
        with budget._lock:
            if self.closed:
                raise RequestError(503, "shutting_down", "the request ended while it was being read")
            if refuse and budget.used + nbytes > budget.limit:
                limit = f"{budget.option} {budget.limit / MIB:g}"
                if self.held + nbytes > budget.limit:
                    raise RequestError(413, "over_memory_budget",
                                       f"{what} needs {mib(nbytes)} MiB, and this request "
                                       f"{mib(self.held + nbytes)} MiB in all, more than the whole {limit} MiB the "
                                       f"server holds for requests")
                raise RequestError(503, "server_busy",
                                   f"requests in flight hold {mib(budget.used)} MiB and {what} needs {mib(nbytes)} MiB "
                                   f"more than {limit} MiB allow; retry in {RETRY_AFTER_S} s",
                                   headers={"Retry-After": str(RETRY_AFTER_S)})
            budget.used += nbytes
            budget.peak = max(budget.peak, budget.used)
            self.held += nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        with self.budget._lock:
            nbytes = min(nbytes, self.held)  # after close: nothing left to give back
            self.held -= nbytes
            self.budget.used -= nbytes

    @contextlib.contextmanager
    def holding(self, nbytes: int, what: str):
        held = self.hold(nbytes, what)
        try:
            yield
        finally:
            self.release(held)

    def close(self) -> None:
        with self.budget._lock:
            self.budget.used -= self.held
            self.held, self.closed = 0, True
