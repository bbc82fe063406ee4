"""`deepres data get`: MNIST / Fashion-MNIST from a local package copy or a checksum-verified download.

Checksums are the md5s the datasets publish for their .gz files (Fashion-MNIST README; MNIST as listed by
torchvision for the ossci mirror). Debian's dataset-fashion-mnist package ships the same IDX data re-gzipped
(no file name in the gzip header, new timestamp), so its .gz md5s differ from the published ones; those files
are checked against the package's own manifest (/var/lib/dpkg/info/dataset-fashion-mnist.md5sums) instead.
"""
import http.client
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from deepres.core.download import download_verified, file_hash
from deepres.core.errors import ChecksumError, DownloadError
from deepres.core.files import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    mirrors: tuple[str, ...]  # base URLs, tried in order; a file's URL is base + file name
    files: dict[str, str]  # file name -> published md5 of the .gz
    local_dirs: tuple[str, ...] = ()  # package copies searched before downloading
    package_manifest: str = ""  # dpkg md5sums file listing the package copy's files


DATASETS = {
    "fashion-mnist": Source(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        local_dirs=("/usr/share/datasets/fashion-mnist",),
        package_manifest="/var/lib/dpkg/info/dataset-fashion-mnist.md5sums",
    ),
    "mnist": Source(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}




def canonical_name(name: str) -> str:
    """"fashion_mnist" / "Fashion-MNIST" -> "fashion-mnist"; KeyError for an unknown dataset."""
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; `deepres data get` knows {', '.join(DATASETS)}")
    return key


def md5sum(path) -> str:
    """Hex md5 of a file."""
    return file_hash(path, "md5")


def package_md5s(source: Source) -> dict[str, str]:
    """File name -> md5 of the package copy, from the dpkg manifest (empty if there is none)."""
    manifest = Path(source.package_manifest) if source.package_manifest else None
    if manifest is None or not manifest.is_file():
        return {}
    found = {}
    for line in manifest.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and Path(fields[1]).name in source.files:
            found[Path(fields[1]).name] = fields[0]
    return found


def check_file(path, source: Source, manifest: dict[str, str] | None = None) -> str:
    """Check one file against the published md5 or the package manifest; returns which one matched.

    manifest: package_md5s(source), when the caller checks several files (read here when needed otherwise)."""
    path = Path(path)
    actual = md5sum(path)
    if actual == source.files[path.name]:
        return "published md5"
    if actual == (package_md5s(source) if manifest is None else manifest).get(path.name):
        return "package manifest md5"
    raise ChecksumError(f"{path}: md5 {actual} matches neither the published md5 {source.files[path.name]} "
                        "nor a package manifest")


def find_local(name: str) -> Path | None:
    """The first package copy (e.g. Debian's /usr/share/datasets/fashion-mnist) holding every file, or None.

    A copy that is present but fails its checksum raises ChecksumError rather than being passed over."""
    source = DATASETS[canonical_name(name)]
    for directory in map(Path, source.local_dirs):
        if all((directory / f).is_file() for f in source.files):
            manifest = package_md5s(source)
            for f in source.files:
                check_file(directory / f, source, manifest)
            return directory
    return None


def download(url: str, path, md5: str, *, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download `url` to `path` through a temporary file in the same folder, renamed once its md5 matches;
    on any failure the partial file is deleted."""
    def verify(actual: str) -> None:
        if actual != md5:
            raise ChecksumError(f"checksum mismatch for {url}: md5 {actual}, expected {md5}; "
                                "the partial download was deleted")

    return download_verified(url, path, "md5", verify, timeout=timeout, progress=progress)


def _fetch_one(name: str, source: Source, target: Path, mirrors, progress: bool) -> None:
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        try:
            download(url, target, source.files[name], progress=progress)
            log.info("downloaded %s", url)
            return
        except (OSError, ChecksumError, http.client.HTTPException) as e:
            errors.append(f"{url}: {e}")
    raise DownloadError(f"could not get {name}: " + "; ".join(errors))


def _copy(src: Path, target: Path) -> None:
    def copy(out) -> None:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, out)

    atomic_write(target, copy, suffix=".partial")


def get_dataset(name: str, dest=None, *, mirrors=None, force: bool = False, progress: bool = True) -> Path:
    """Make the dataset's files available and verified; returns the folder to use as data.root.

    Without `dest`, a verified package copy is used in place; otherwise files go to `dest` (default
    data/<name>), copied from the package copy or downloaded. Existing files are kept when their checksum
    matches and never replaced otherwise unless `force`."""
    key = canonical_name(name)
    source = DATASETS[key]
    local = find_local(key)
    if dest is None and local is not None:
        return local
    dest = Path(dest) if dest is not None else Path("data") / key
    dest.mkdir(parents=True, exist_ok=True)
    manifest = package_md5s(source)
    for file_name in source.files:
        target = dest / file_name
        if target.exists():
            try:
                check_file(target, source, manifest)
                continue
            except ChecksumError:
                if not force:
                    raise ChecksumError(f"{target} exists but fails its checksum; pass --force to replace it "
                                        "with a fresh copy") from None
        if local is not None:
            _copy(local / file_name, target)
        else:
            _fetch_one(file_name, source, target, mirrors or source.mirrors, progress)
    return dest
