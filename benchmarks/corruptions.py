"""Corruption throughput: images/s of deepres.data.corruptions.corrupt per corruption at severity 3, for CIFAR-sized
(32 px, batch 64) and ImageNet-sized (224 px, batch 16) random uint8 batches, on the CPU and on CUDA when present.

    python benchmarks/corruptions.py            # all 19 corruptions, 32 and 224 px, CPU (+ CUDA)
    python benchmarks/corruptions.py --quick    # 3 corruptions, one batch of 4 at 32 px: a smoke test

Each cell is the best of --repeats timed calls after one warm-up call (the first call also builds cached frost
textures). Prints the CPU model and its ISA flags first: on a shared machine the numbers move with the load.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.core.device import cpu_class_label, cpu_flags, cpu_model_name, load_warning  # noqa: E402
from deepres.data.corruptions import ALL_CORRUPTIONS, corrupt  # noqa: E402

ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
QUICK = ("gaussian_noise", "motion_blur", "jpeg_compression")


def images_per_second(images: torch.Tensor, name: str, repeats: int) -> float:
    corrupt(images, name, 3)
    best = float("inf")
    for repeat in range(repeats):
        if images.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        corrupt(images, name, 3, seed=repeat)
        if images.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return images.shape[0] / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 corruptions, one batch of 4 at 32 px, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (the best counts)")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when it is available")
    args = parser.parse_args(argv)
    names = QUICK if args.quick else ALL_CORRUPTIONS
    sizes = ((32, 4),) if args.quick else ((32, 64), (224, 16))  # (side px, batch)
    repeats = 1 if args.quick else args.repeats
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only and not args.quick else [])
    isa = sorted(cpu_flags() & set(ISA))
    warning = load_warning()  # a busy machine makes every figure below slower
    if warning:
        print(warning)
    print(f"CPU: {cpu_model_name() or 'unknown'}, class {cpu_class_label()} ({os.cpu_count()} cores; "
          f"ISA flags: {', '.join(isa) or 'none'}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name()}")
    columns = [f"{device} {side}px x{batch}" for device in devices for side, batch in sizes]
    print("\nimages/s at severity 3\n")
    print("| corruption | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    generator = torch.Generator().manual_seed(0)
    batches = {(side, batch): torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=generator)
               for side, batch in sizes}
    for name in names:
        cells = [f"{images_per_second(batches[key].to(device), name, repeats):.1f}"
                 for device in devices for key in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
