"""Loader throughput: images/s of the training loader alone, from a plain folder of JPEGs vs packed shards.

The script writes N photo-like JPEGs (default 2000 at 500x375, quality 90, ~100 kB each like an ImageNet
photo: smooth random colour fields plus a random crop of a shared two-scale noise texture) in 10 class
folders, packs them as `deepres data pack SRC OUT --size 160` would (JPEG quality 90, and raw uint8), then
iterates deepres' training Loader over each source exactly as training does: decode, random-resized crop to
--image-size, flip, uint8 -> normalised float batch. Each (source, workers) runs --repeats epochs, taking
turns with the other sources, and its best epoch counts (less noise from other processes); each epoch is
timed from its first batch, so worker start-up and queue filling are not counted. All files sit in the page
cache (just written), so this measures CPU cost per image; reading many small files from a cold disk or a
network filesystem, the other half of what packing saves, is not measured.

    python benchmarks/loader_throughput.py --images 2000 --workers 1 2 --out loader_throughput.json

Prints a table and writes JSON. On a shared machine other processes take CPU time too: the load average
before and after is part of the output.
"""
import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.core.device import load_warning  # noqa: E402
from deepres.data import DataConfig, PackOptions, build_loaders, pack_dataset  # noqa: E402

WIDTH, HEIGHT = 500, 375  # pixels, ImageNet's most common photo size
CLASSES = 10


def texture(rng: np.random.Generator, scale: int, amplitude: float) -> np.ndarray:
    """Noise at 1/scale resolution, upsampled bicubically to twice the photo size, centred on 0 (int16)."""
    small = rng.normal(0, 1, (2 * HEIGHT // scale + 2, 2 * WIDTH // scale + 2, 3))
    small = ((small - small.min()) / (small.max() - small.min()) * 255).astype(np.uint8)
    big = Image.fromarray(small).resize((2 * WIDTH, 2 * HEIGHT), Image.BICUBIC)
    return ((np.asarray(big, np.float32) - 128) * amplitude).astype(np.int16)


def write_photos(root: Path, count: int, seed: int = 0) -> float:
    """count JPEGs (quality 90) in root/<class>/; returns their mean size in kB."""
    rng = np.random.default_rng(seed)
    detail = texture(rng, 4, 0.8) + texture(rng, 1, 0.8)  # coarse + fine grain: ~100 kB per photo at q90
    total = 0
    for i in range(count):
        coarse = rng.integers(0, 256, (rng.integers(3, 8), rng.integers(3, 8), 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC), dtype=np.int16)
        top, left = rng.integers(0, HEIGHT), rng.integers(0, WIDTH)
        photo = np.clip(base + detail[top:top + HEIGHT, left:left + WIDTH], 0, 255).astype(np.uint8)
        path = root / f"class_{i % CLASSES}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
        path.write_bytes(buffer.getvalue())
        total += len(buffer.getvalue())
    return total / count / 1e3


def epoch_rate(train, epoch: int) -> tuple[float, int]:
    """(images/s, images) of one training epoch, timed from its first batch (workers already busy)."""
    train.set_epoch(epoch)
    batches = iter(train)
    next(batches)  # (re)fills the workers' prefetch queue: not timed
    start, images = time.perf_counter(), 0
    for x, _ in batches:
        images += len(x)
    return images / (time.perf_counter() - start), images


def best_rates(configs: dict[str, DataConfig], repeats: int) -> dict[str, tuple[float, int]]:
    """Best epoch throughput per configuration. The configurations take turns, epoch by epoch, so a change in
    what else runs on the machine hits them alike rather than whichever happens to run at that moment."""
    loaders = {name: build_loaders(cfg, "cpu", seed=0)[0] for name, cfg in configs.items()}
    best = {name: (0.0, 0) for name in configs}
    for epoch in range(repeats):
        for name, train in loaders.items():
            best[name] = max(best[name], epoch_rate(train, epoch))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="training photos to write")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers to try")
    parser.add_argument("--size", type=int, default=160, help="pack size: shorter side, pixels")
    parser.add_argument("--image-size", type=int, default=128, help="training crop, pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per configuration; the best one counts")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--out", type=Path, default=Path("loader_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only moves batches; workers decode
    work = args.dir or Path(tempfile.mkdtemp(prefix="deepres-loader-bench-"))
    load_before = os.getloadavg()
    try:
        t = time.perf_counter()
        source_kb = write_photos(work / "folder" / "train", args.images)
        write_photos(work / "folder" / "val", CLASSES * 2, seed=1)
        print(f"wrote {args.images} JPEGs {WIDTH}x{HEIGHT} q90, {source_kb:.0f} kB each on average, "
              f"in {time.perf_counter() - t:.0f} s")
        source = DataConfig(name="folder", root=str(work / "folder"))
        stored = {"folder": dict(kind=f"{WIDTH}x{HEIGHT} JPEG q90", kb_per_image=source_kb)}
        for encoding in ("jpeg", "raw"):
            options = PackOptions(size=args.size, encoding=encoding, quality=90)
            t = time.perf_counter()
            report = pack_dataset(source, work / f"packed-{encoding}", options=options, workers=2, progress=False)[0]
            stored[f"packed {encoding}"] = dict(kind=f"{args.size} px shorter side, {encoding}",
                                                kb_per_image=report.bytes / report.images / 1e3,
                                                shards=report.shards, pack_s=time.perf_counter() - t)
            print(f"packed {encoding}: {report.summary()}")
        common = dict(image_size=args.image_size, random_resized_crop=True, hflip=True, batch_size=args.batch_size,
                      eval_batch_size=args.batch_size)
        rows = []
        for workers in args.workers:
            configs = {"folder": DataConfig(name="folder", root=str(work / "folder"), workers=workers, **common)}
            for encoding in ("jpeg", "raw"):
                configs[f"packed {encoding}"] = DataConfig(name="packed", root=str(work / f"packed-{encoding}"),
                                                           workers=workers, **common)
            for name, (rate, images) in best_rates(configs, args.repeats).items():
                rows.append(dict(source=name, workers=workers, images_per_s=rate, per_worker=rate / workers,
                                 images=images, **stored[name]))
                print(f"  {name:12s} workers={workers}: {rate:7.0f} images/s")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    folder_rate = {r["workers"]: r["images_per_s"] for r in rows if r["source"] == "folder"}
    warning = load_warning()  # a busy machine makes every figure below slower
    if warning:
        print(warning)
    print(f"\nloader throughput: random-resized crop to {args.image_size} + flip, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after")
    print("| source | stored as | kB/image | workers | images/s | per worker | vs folder |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = r["images_per_s"] / folder_rate[r["workers"]]
        print(f"| {r['source']} | {r['kind']} | {r['kb_per_image']:.0f} | {r['workers']} | {r['images_per_s']:.0f} | "
              f"{r['per_worker']:.0f} | {r['speedup']:.2f}x |")
    result = dict(rows=rows, images=args.images, repeats=args.repeats, source_size=[WIDTH, HEIGHT], pack_size=args.size,
                  image_size=args.image_size, batch_size=args.batch_size, cpus=os.cpu_count(),
                  load_average_before=load_before, load_average_after=load_after, torch=torch.__version__,
                  pillow=PIL.__version__, python=platform.python_version(), machine=platform.processor())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
