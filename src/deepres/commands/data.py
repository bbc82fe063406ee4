"""`deepres data get NAME`, `deepres data verify DIR`, `deepres data pack SRC OUT`, `deepres data make ...` and
`deepres data make-corrupted SRC OUT`."""
import argparse
from dataclasses import replace
from pathlib import Path

from deepres.core.config import Config, DataConfig, apply_overrides

from deepres.data.corruptions import parse_corruptions, parse_severities
from deepres.data.datasets import build_eval_dataset
from deepres.data.fetch import DATASETS, canonical_name, find_local, get_dataset
from deepres.data.readers.formats import read_mnist
from deepres.data.corruptions.imagenet_c import write_imagenet_c
from deepres.data.images import DEFAULT_MAX_PIXELS
from deepres.data.packing.pack import PackOptions, pack_dataset, parse_byte_size
from deepres.data.packing.packed_reader import ENCODINGS, SPLITS
from deepres.data.registry import list_formats
from deepres.data.scenes import RECORD_FILE, SCENE_CLASSES, SCENES_VERSION, SCENES_VERSIONS, make_fashion_mnist_scenes
from deepres.data.verify import verify_images, write_manifest


def _byte_size(text: str) -> int:
    try:
        return parse_byte_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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

    pack = actions.add_parser(
        "pack", help="rewrite a folder/list/imagenet dataset as a few large shard files of pre-resized images",
        description="Decode every image of SRC (read as --dataset, with data.* --set options), resize its shorter "
                    "side down to --size, and write the images back to back into shard files plus an index, "
                    "as OUT/train and OUT/val. Train from it with data.name=packed data.root=OUT. OUT is "
                    "written in a temporary folder and renamed into place when complete.")
    pack.add_argument("src", type=Path, help="the dataset root (data.root)")
    pack.add_argument("out", type=Path, help="output folder (must not exist, or be a pack and --force)")
    pack.add_argument("--dataset", choices=list_formats(packable=True), default="folder",
                      help="data.name of SRC (default folder)")
    pack.add_argument("--split", action="append", choices=SPLITS, default=None,
                      help="split to pack (repeatable; default both): train = data.train_split, val = data.val_split")
    pack.add_argument("--size", type=int, default=160,
                      help="shorter side, pixels: larger images are resized down to it, smaller kept (0 = keep all). "
                           "Choose at least the largest size training or evaluation resizes to (256 for crop224_resize256)")
    pack.add_argument("--val-size", type=int, default=None,
                      help="the val split's shorter side when it should differ from --size (e.g. train at 160, "
                           "evaluate with the crop224_resize256 preset: --val-size 256)")
    pack.add_argument("--format", choices=ENCODINGS, default="jpeg",
                      help="jpeg: re-encoded at --quality; raw: uint8 pixels, exact (small images)")
    pack.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95 (default 90)")
    pack.add_argument("--shard-size", type=_byte_size, default="256MB", metavar="SIZE",
                      help="largest shard file, e.g. 256MB (default), 1GB, 64MiB")
    pack.add_argument("--workers", type=int, default=0, help="encoding processes (0 = this process)")
    pack.add_argument("--on-bad-image", choices=("error", "skip"), default="error",
                      help="an undecodable source image stops the pack (error) or is left out and listed in "
                           "OUT/SPLIT/skipped.txt (skip)")
    pack.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="how to read SRC, any data.* key: e.g. --set val_split=test --set class_depth=2 "
                           "--set val_ground_truth=LOC_val_solution.csv --set limit_train=1000")
    pack.add_argument("--force", action="store_true", help="replace OUT if it is an existing pack")
    pack.add_argument("--quiet", action="store_true", help="no progress bars")

    corrupted = actions.add_parser(
        "make-corrupted", help="write a corrupted copy of a dataset's evaluation split in the ImageNet-C layout",
        description="Read SRC's evaluation split (as --dataset, with data.* --set options), centre-crop it when "
                    "asked, and write every image under every corruption and severity as "
                    "OUT/<corruption>/<severity>/<class>/<name>.JPEG (quality 85, as Hendrycks' ImageNet-C), seeded "
                    "by image index: the images `deepres robustness` makes on the fly, for other tools.")
    corrupted.add_argument("src", type=Path, help="the dataset root (data.root); '-' for the format's default")
    corrupted.add_argument("out", type=Path, help="output folder (must not exist)")
    corrupted.add_argument("--dataset", choices=list_formats(task="classification"), default="folder",
                           help="data.name of SRC (default folder)")
    corrupted.add_argument("--format", choices=["imagenet-c"], default="imagenet-c", help="the layout written")
    corrupted.add_argument("--corruptions", default="standard",
                           help="standard (the 15), extra (the 4 held-out), all, or names a,b,c")
    corrupted.add_argument("--severities", default="1-5", help="1-5, or severities a,b,c")
    corrupted.add_argument("--resize", type=int, default=0,
                           help="resize the shorter side to this first (ImageNet-C: 256; default: as stored)")
    corrupted.add_argument("--crop", type=int, default=0, help="then centre-crop to this (ImageNet-C: 224)")
    corrupted.add_argument("--scale", default="auto", choices=("auto", "imagenet", "cifar"),
                           help="the corruption parameter table: by image size (auto), ImageNet's or CIFAR's")
    corrupted.add_argument("--seed", type=int, default=0, help="corruption seed")
    corrupted.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="how to read SRC, any data.* key: e.g. --set val_split=test")
    corrupted.add_argument("--quiet", action="store_true", help="no progress bar")

    make = actions.add_parser("make", help="generate a dataset from real images: fashion-mnist-scenes",
                              description="fashion-mnist-scenes: 64x64 canvases with 2-4 Fashion-MNIST items each at "
                                          "random positions and scales 0.75-1.5x, later ones occluding earlier ones, "
                                          "and their masks (0 background, 1 + garment class: 11 classes); train "
                                          "scenes from the training split, test scenes from the test split, fixed "
                                          "seeds. Written as OUT/{train,test}/{images,masks}/NNNNNN.png + "
                                          f"OUT/classes.txt + OUT/{RECORD_FILE} (the generator version). The default "
                                          "50000/10000 scenes take a few minutes.")
    make.add_argument("dataset", choices=["fashion-mnist-scenes"], help="what to make")
    make.add_argument("out", type=Path, help="output folder (must be empty or not exist)")
    make.add_argument("--source", type=Path, default=None,
                      help="the Fashion-MNIST IDX files (default: Debian's copy; `deepres data get fashion-mnist`)")
    make.add_argument("--train", type=int, default=50_000, help="training scenes (default 50000)")
    make.add_argument("--test", type=int, default=10_000, help="test scenes (default 10000)")
    make.add_argument("--size", type=int, default=64, help="canvas side, pixels (default 64)")
    make.add_argument("--scenes-version", type=int, choices=SCENES_VERSIONS, default=SCENES_VERSION,
                      help=f"generator version (default {SCENES_VERSION}): 2 = each item's mask is its filled "
                           "silhouette; 1 = its non-zero pixels (sandals and dark regions have holes), the scenes "
                           "of the first published results, reproduced bit for bit")
    make.add_argument("--force", action="store_true", help="rewrite a scenes folder made before")
    make.add_argument("--quiet", action="store_true", help="no progress bars")


def _get(args) -> int:
    name = canonical_name(args.dataset)
    root = get_dataset(name, args.dest, mirrors=args.mirror, force=args.force, progress=not args.quiet)
    train, test = read_mnist(root, "train"), read_mnist(root, "test")
    shape = "x".join(map(str, train.images.shape[1:]))
    print(f"{name}: {root} (checksums verified): train {len(train)} x {shape}, test {len(test)} x {shape}")
    print(f"use it with data.name={list_formats(fetch=name)[0]} data.root={root}")
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


def _source_config(args):
    """The DataConfig that reads SRC: --dataset, root=SRC, then the --set overrides, type-checked."""
    cfg = Config(data=DataConfig(name=args.dataset, root=str(args.src)))
    keys = [item if item.startswith("data.") else f"data.{item}" for item in args.overrides]
    return apply_overrides(cfg, keys).data


def _pack(args) -> int:
    options = PackOptions(size=args.size, encoding=args.format, quality=args.quality, shard_bytes=args.shard_size)
    reports = pack_dataset(_source_config(args), args.out, splits=args.split or SPLITS, options=options,
                           val_size=args.val_size, workers=args.workers, skip_bad=args.on_bad_image == "skip",
                           force=args.force, progress=not args.quiet)
    for report in reports:
        print(report.summary())
        for path, reason in report.skipped:
            print(f"skipped: {path}: {reason}")
    print(f"packed into {args.out}; train from it with data.name=packed data.root={args.out}")
    return 0


def _make_corrupted(args) -> int:
    cfg = _source_config(args)
    if str(args.src) == "-":
        cfg = replace(cfg, root="")
    corruptions = parse_corruptions(args.corruptions)
    severities = parse_severities(args.severities)
    dataset = build_eval_dataset(cfg)
    written = write_imagenet_c(dataset, args.out, corruptions, severities, resize=args.resize, crop=args.crop,
                               seed=args.seed, scale=args.scale, progress=not args.quiet)
    print(f"wrote {written} images ({len(dataset)} x {len(corruptions)} corruptions x {len(severities)} severities) "
          f"to {args.out}; evaluate with `deepres robustness CHECKPOINT --imagenet-c {args.out}`")
    return 0


def _make(args) -> int:
    source = args.source or find_local("fashion-mnist")
    if source is None:
        raise FileNotFoundError("no Fashion-MNIST copy found: pass --source DIR (`deepres data get fashion-mnist "
                                "--dest DIR` fetches one)")
    if args.size < 28:
        raise ValueError(f"--size must be >= 28 pixels (one Fashion-MNIST item), got {args.size}")
    out = make_fashion_mnist_scenes(source, args.out, train=args.train, test=args.test, size=args.size,
                                    version=args.scenes_version, force=args.force, progress=not args.quiet)
    print(f"wrote {args.train} train and {args.test} test scenes ({args.size}x{args.size}, "
          f"{len(SCENE_CLASSES)} classes, scenes version {args.scenes_version}) to {out}")
    return 0


def run(args) -> int:
    commands = {"get": _get, "verify": _verify, "pack": _pack, "make": _make, "make-corrupted": _make_corrupted}
    return commands[args.data_command](args)
