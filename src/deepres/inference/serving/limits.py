"""What one server accepts and how it batches (the `deepres serve` options), and the error a refused request gets."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_batch: int = 32  # images per model call
    max_wait_ms: float = 5.0  # how long a batch waits for more images after its first, ms
    workers: int = 1  # model copies, each with its own queue and batcher
    max_upload_mb: float = 16.0  # request body, MiB
    max_images: int = 32  # images per request
    max_pixels: int = 40_000_000  # width x height of one image, checked before decoding (decompression bombs)

    def __post_init__(self):
        for name in ("max_batch", "workers", "max_images", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.max_upload_mb <= 0:
            raise ValueError(f"--max-wait-ms must be >= 0 and --max-upload-mb > 0, got {self.max_wait_ms} and "
                             f"{self.max_upload_mb}")


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, a machine-readable `kind` and a sentence naming the problem."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
