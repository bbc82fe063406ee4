"""`deepres data get NAME` and `deepres data verify DIR`."""
import argparse
import sys
from pathlib import Path

from .fetch import DATASETS, DownloadError, canonical_name, get_dataset
from .formats import read_mnist
from .images import DEFAULT_MAX_PIXELS
from .verify import verify_images, write_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    get = actions.add_parser("get", help="find or download MNIST / Fashion-MNIST, verified by checksum",
                             description="Use the installed package copy (Debian dataset-fashion-mnist) if "
                                         "present, otherwise download from the official source. Downloads are "
                                         "checked against the published md5s, a package copy against its "
                                         "package's manifest (Debian re-gzipped the files).")
    get.add_argument("dataset", choices=sorted(DATASETS), help="dataset to get")
    get.add_argument("--dest", type=Path, default=None,
                     help="folder to put the files in (default: use the package copy in place, else data/NAME)")
    get.add_argument("--mirror", action="append", default=None, metavar="URL",
                     help="base URL to download from instead of the official ones (repeatable)")
    get.add_argument("--force", action="store_true", help="replace files in --dest that fail their checksum")
    get.add_argument("--quiet", action="store_true", help="no progress bars")

    verify = actions.add_parser("verify", help="decode every image under DIR and list the bad ones",
                                description="Exit status 1 if any image fails to decode.")
    verify.add_argument("dir", type=Path, help="folder to scan recursively")
    verify.add_argument("--manifest", type=Path, default=None, metavar="OUT.csv",
                        help="write the bad files as CSV (path, reason)")
    verify.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    verify.add_argument("--workers", type=int, default=0, help="decoding processes (0 = this process)")
    verify.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="images with more pixels (width*height) count as bad")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")


def _get(args) -> int:
    name = canonical_name(args.dataset)
    root = get_dataset(name, args.dest, mirrors=args.mirror, force=args.force, progress=not args.quiet)
    train, test = read_mnist(root, "train"), read_mnist(root, "test")
    shape = "x".join(map(str, train.images.shape[1:]))
    print(f"{name}: {root} (checksums verified): train {len(train)} x {shape}, test {len(test)} x {shape}")
    print(f"use it with data.name={name.replace('-', '_')} data.root={root}")
    return 0


def _verify(args) -> int:
    if args.manifest is not None and args.manifest.exists() and not args.force:
        # Checked before decoding, which can take hours on a large folder.
        raise FileExistsError(f"manifest {args.manifest} already exists; pass --force to overwrite it")
    report = verify_images(args.dir, workers=args.workers, max_pixels=args.max_pixels, progress=not args.quiet)
    for path, reason in report.bad:
        print(f"bad: {path}: {reason}")
    if args.manifest is not None:
        write_manifest(args.manifest, report.bad, force=args.force)
        print(f"manifest: {args.manifest}")
    print(report.summary())
    return 1 if report.bad else 0


def run(args) -> int:
    try:
        return _get(args) if args.data_command == "get" else _verify(args)
    except (DownloadError, FileExistsError) as e:
        print(f"deepres data {args.data_command}: error: {e}", file=sys.stderr)
        return 1
