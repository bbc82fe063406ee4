"""`deepres data verify`: decode every image under a folder and list the ones that fail."""
import csv
import io
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from deepres.core.files import atomic_write

from .images import DEFAULT_MAX_PIXELS, BadImageError, load_image
from .readers.folders import list_image_files


@dataclass
class VerifyReport:
    root: Path
    total: int = 0  # image files decoded
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), in path order

    def summary(self) -> str:
        return f"{self.root}: {self.total} images, {self.total - len(self.bad)} good, {len(self.bad)} bad"


def _check(path: Path, *, exif_rotate: bool, max_pixels: int) -> tuple[str, str | None]:
    try:
        load_image(path, exif_rotate=exif_rotate, max_pixels=max_pixels)
        return str(path), None
    except BadImageError as e:
        return str(path), e.reason


def verify_images(root, *, workers: int = 0, exif_rotate: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                  progress: bool = True) -> VerifyReport:
    """Decode every image file under `root` (as the datasets would) and collect the bad ones."""
    files = list_image_files(root)
    report = VerifyReport(Path(root), total=len(files))
    check = partial(_check, exif_rotate=exif_rotate, max_pixels=max_pixels)
    bar = dict(total=len(files), unit="img", desc="verify", disable=not progress)
    if workers > 0:
        with Pool(workers) as pool:
            results = list(tqdm(pool.imap(check, files, chunksize=64), **bar))
    else:
        results = [check(f) for f in tqdm(files, **bar)]
    report.bad = [(path, reason) for path, reason in results if reason is not None]
    return report


def write_manifest(path, bad: list[tuple[str, str]], *, force: bool = False) -> Path:
    """CSV (path, reason) of bad files, written to a temporary file and renamed; never replaces an existing
    file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"manifest {path} already exists; pass --force to overwrite it")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "reason"])
    writer.writerows(bad)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()), suffix=".partial")
    return path
