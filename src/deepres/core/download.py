"""One download routine for everything deepres fetches (datasets, published weights): stream to a temporary file
beside the target while hashing, let the caller accept or refuse the hash, and only then rename into place."""
import hashlib
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .files import atomic_write


def file_hash(path, algorithm: str) -> str:
    """Hex digest of a file with `algorithm` (a hashlib name: "md5", "sha256", ...)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def download_verified(url: str, path, algorithm: str, verify: Callable[[str], None], *, timeout: float = 60.0,
                      progress: bool = True) -> Path:
    """Download `url` to `path`, hashing with `algorithm` (a hashlib name) as it streams. `verify(hexdigest)`
    raises to refuse the file; a refused, interrupted or failed download leaves nothing behind (the partial
    temporary file is deleted) and an existing `path` is only ever replaced by a verified file."""
    path = Path(path)

    def stream(out) -> None:
        digest = hashlib.new(algorithm)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        verify(digest.hexdigest())  # raising here deletes the temporary file

    atomic_write(path, stream, suffix=".partial")
    return path
