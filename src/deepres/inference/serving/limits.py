"""What one server accepts and how it batches (the `deepres serve` options), and the error a refused request gets.

Memory: every byte a request makes the server hold is bounded, by the request's own limits (body, images, pixels at
the model's size, class-map size) and, over all requests at once, by --max-inflight-mb (serving/budget.py). Open
connections and the time a client may take to send its request are bounded too, so a slow or half-sent request
cannot hold a connection for ever."""
import os
from dataclasses import dataclass

MIB = 2**20


@dataclass(frozen=True)
class Limits:
    max_batch: int = 32  # images per model call
    max_wait_ms: float = 5.0  # how long a batch waits for more images after its first, ms
    workers: int = 1  # model copies, each with its own queue and batcher
    max_upload_mb: float = 16.0  # request body, MiB
    max_images: int = 32  # images per request
    max_pixels: int = 40_000_000  # width x height of one image as stored, checked before decoding (decompression bombs)
    # width x height of a request's images at the size the model's preprocessing resizes them to (before any crop),
    # summed; images are decoded straight to that size, so it is what the request holds decoded
    max_request_pixels: int = 32_000_000
    max_inflight_mb: float = 1024.0  # MiB held for all requests at once: bodies, images decoding and decoded, answers
    max_output_pixels: int = 4_194_304  # width x height of a segmentation class map in a JSON answer (2048 x 2048)
    max_connections: int = 256  # open connections; more are answered 503 and closed
    header_timeout_s: float = 10.0  # from connecting (or the last answer) to the end of the request's headers, s
    body_timeout_s: float = 60.0  # from the headers to the end of the request body, s (16 MiB: 2.2 Mbit/s)
    shutdown_timeout_s: float = 20.0  # SIGTERM: time requests in flight get to finish; then 503 shutting_down, s

    def __post_init__(self):
        for name in ("max_batch", "workers", "max_images", "max_pixels", "max_request_pixels", "max_output_pixels",
                     "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{option(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("max_upload_mb", "max_inflight_mb", "header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{option(name)} must be > 0, got {getattr(self, name)}")
        for name in ("max_wait_ms", "shutdown_timeout_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{option(name)} must be >= 0, got {getattr(self, name)}")

    @property
    def inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * MIB)


def option(field: str) -> str:
    """The `deepres serve` option of a Limits field: max_wait_ms -> --max-wait-ms."""
    return f"--{field.replace('_', '-')}"


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, a machine-readable `kind` and a sentence naming the problem;
    `headers` go with the answer (Retry-After)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, dict(headers or {})


def machine_memory() -> tuple[int, int] | None:
    """(total, available) bytes of memory on this machine (Linux /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:  # elsewhere: the physical memory, no figure for what is free
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            return total, total
        except (OSError, ValueError, AttributeError):
            return None
