"""CPU training speed: deepres's training step against a plain eager fp32 PyTorch loop, side by side in one run.

Rows (issue 15), each images/s of full training steps (forward, loss, backward, SGD step) after warm-up:
  plain eager fp32   the shortest correct loop: the model in fp32 NCHW, batches already in memory as normalised
                     float tensors, no augmentation, SGD with momentum (the baseline)
  deepres train      deepres.train.train_one_epoch as `deepres train` runs it: the recipe's precision, memory
                     format and torch.compile setting, its in-memory loader with the recipe's augmentation on uint8
                     batches; the first (warm-up) epoch, which holds any compile, is reported apart as "cold s"
Cases: ResNet-20 on Fashion-MNIST, batch 128 (recipe fashion_mnist/resnet20; the real images when installed, else
synthetic ones of the same shape), and ResNet-50 at 224x224 for a few steps (synthetic images, 1000 classes, bf16 +
channels_last where the CPU computes bf16 natively). Prints the CPU model, its ISA flags, the cores and threads,
a warning when the load average exceeds the cores (figures are then slower than the machine idle), and a table.

    python benchmarks/train_speed.py                 # the measurement, on an idle machine
    python benchmarks/train_speed.py --quick         # a few seconds: checks that it runs, figures meaningless
    python benchmarks/train_speed.py --isa avx2      # as an AVX2-only CPU would run (kernels and deepres's rules)

Each row also gives the achieved GFLOP/s (torch.utils.flop_counter's count of one forward + backward per image,
times images/s) and its share of what this machine's fp32 units reach: a 2048x2048 fp32 matrix product timed in the
same run (the best any kernel does here; bf16 on AMX can exceed it). The nominal peak (core.device.fp32_peak_gflops:
cores x the clock /proc/cpuinfo reports x 32 FLOP/cycle for AVX2, 64 for Intel AVX-512) is printed beside it; a VM
reports its base clock, and turbo lets kernels pass that figure.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.core.config import Config, load_config  # noqa: E402
from deepres.core.device import (CPU_CLASSES, fp32_peak_gflops, limit_compute_threads,  # noqa: E402
                                 load_warning, machine_line, machine_summary, reexec_as_cpu_class, resolve_amp)
from deepres.models import create_model  # noqa: E402
from deepres.train.loop import train_one_epoch  # noqa: E402
from deepres.train.run import setup_run  # noqa: E402

def fashion_config(args) -> Config:
    """The shipped demo recipe, on `steps` batches per epoch (real Fashion-MNIST, or synthetic with --synthetic)."""
    overrides = [f"data.batch_size={args.batch}", f"data.limit_train={args.steps * args.batch}",
                 "data.limit_val=1", "train.progress=false", "train.log_every_iters=1000000"]
    if args.synthetic:
        overrides += ["data.name=synthetic", "data.in_chans=1", "data.num_classes=10",
                      f"data.synthetic_size=[{args.steps * args.batch},1]", "data.synthetic_image_size=28"]
    cfg = load_config("fashion_mnist/resnet20", overrides)
    if args.compile != "recipe":
        cfg.train.compile = args.compile == "on"
    if args.amp != "recipe":
        cfg.train.amp = args.amp
    cfg.train.inductor_bn = args.inductor_bn == "on"
    return cfg


def resnet50_config(args) -> Config:
    """deepres's defaults for ResNet-50 with the fast CPU settings (train.amp=auto, channels_last)."""
    cfg = Config()
    cfg.model.name = "resnet50"
    d = cfg.data
    d.name, d.num_classes, d.in_chans, d.image_size = "synthetic", 1000, 3, args.r50_size
    d.synthetic_size, d.synthetic_image_size = (args.r50_steps * args.r50_batch, 1), args.r50_size
    d.batch_size, d.limit_val = args.r50_batch, 1
    t = cfg.train
    t.amp = "auto" if args.amp == "recipe" else args.amp
    t.channels_last, t.compile, t.inductor_bn = True, args.compile == "on", args.inductor_bn == "on"
    t.progress, t.log_every_iters = False, 10**6
    return cfg


def deepres_speed(cfg: Config, out_dir: str) -> tuple[float, float, int]:
    """(images/s of a timed epoch, seconds of the cold first epoch, images per epoch) with deepres's own loop."""
    cfg.run.out_dir, cfg.run.name = out_dir, f"{cfg.model.name}-{time.monotonic_ns()}"
    cfg.train.epochs = 2  # the schedule spans the warm-up and the timed epoch
    run = setup_run(cfg, device=torch.device("cpu"), log=lambda line: None)
    images = len(run.train_loader) * cfg.data.batch_size
    start = time.perf_counter()
    run.train_loader.set_epoch(0)
    train_one_epoch(run)
    cold = time.perf_counter() - start
    run.train_loader.set_epoch(1)
    start = time.perf_counter()
    train_one_epoch(run)
    return images / (time.perf_counter() - start), cold, images


def plain_speed(model_name: str, *, num_classes: int, in_chans: int, size: int, batch: int, steps: int) -> float:
    """images/s of the plain eager fp32 loop over `steps` in-memory batches, after one warm-up step."""
    model = create_model(model_name, num_classes=num_classes, in_chans=in_chans).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    pool = [(torch.randn(batch, in_chans, size, size), torch.randint(0, num_classes, (batch,)))
            for _ in range(min(steps, 8))]  # already normalised floats in memory; at most 8 distinct batches

    def step(images, labels):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(*pool[0])  # warm-up: allocator and oneDNN primitive caches
    start = time.perf_counter()
    for i in range(steps):
        step(*pool[i % len(pool)])
    return batch * steps / (time.perf_counter() - start)


def train_flops_per_image(model_name: str, *, num_classes: int, in_chans: int, size: int) -> float:
    """FLOPs of one training step's forward + backward per image (torch.utils.flop_counter, batch 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(model_name, num_classes=num_classes, in_chans=in_chans).train()
    images, labels = torch.randn(2, in_chans, size, size), torch.randint(0, num_classes, (2,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / 2


def sgemm_gflops(size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an fp32 size x size matrix product: the rate this machine's fp32 units reach in practice."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="ResNet-20 timed steps (default %(default)s)")
    parser.add_argument("--batch", type=int, default=128, help="ResNet-20 batch size (default %(default)s)")
    parser.add_argument("--r50-steps", type=int, default=5, help="ResNet-50 timed steps (default %(default)s)")
    parser.add_argument("--r50-batch", type=int, default=16, help="ResNet-50 batch size (default %(default)s)")
    parser.add_argument("--r50-size", type=int, default=224, help="ResNet-50 image side (default %(default)s)")
    parser.add_argument("--synthetic", action="store_true",
                        help="synthetic images in place of Fashion-MNIST (same shape; for machines without it)")
    parser.add_argument("--compile", choices=("recipe", "on", "off"), default="recipe",
                        help="train.compile for deepres's rows: as the recipe says (default), on or off")
    parser.add_argument("--inductor-bn", choices=("on", "off"), default="on",
                        help="train.inductor_bn for deepres's rows (applies with compile on the CPU; default on)")
    parser.add_argument("--amp", choices=("recipe", "auto", "none", "bf16"), default="recipe",
                        help="train.amp for deepres's rows (default: the recipe's, auto)")
    parser.add_argument("--isa", choices=CPU_CLASSES, help="run as a CPU of this class: kernels (oneDNN, ATen, "
                        "inductor, fbgemm, MKL) and deepres's choice rules restricted to it (core.device)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes that run in seconds (a check that the script works; figures meaningless)")
    parser.add_argument("--out", metavar="FILE", help="also write the rows and the machine as JSON")
    args = parser.parse_args(argv)
    reexec_as_cpu_class(args.isa)
    if args.quick:
        args.steps, args.batch, args.r50_steps, args.r50_batch, args.r50_size = 2, 8, 1, 2, 32
        args.synthetic, args.compile = True, "off"
    limit_compute_threads()
    machine = machine_summary()
    rows = []
    with tempfile.TemporaryDirectory(prefix="train_speed-") as out_dir:
        cases = [("resnet20 fashion-mnist", fashion_config(args), dict(num_classes=10, in_chans=1, size=28),
                  args.batch, args.steps),
                 (f"resnet50 {args.r50_size}px", resnet50_config(args),
                  dict(num_classes=1000, in_chans=3, size=args.r50_size), args.r50_batch, args.r50_steps)]
        # Every plain loop runs before any deepres step: deepres's training keeps freed memory in the heap
        # (core.device.keep_freed_memory), process-wide, which a plain PyTorch script does not have.
        plain = {}
        for label, cfg, shape, batch, steps in cases:
            print(f"{label}: plain eager fp32 loop, {steps} steps of batch {batch} ...", file=sys.stderr, flush=True)
            plain[label] = plain_speed(cfg.model.name, batch=batch, steps=steps, **shape)
        for label, cfg, shape, batch, steps in cases:
            print(f"{label}: deepres train step (amp={cfg.train.amp}, channels_last={cfg.train.channels_last}, "
                  f"compile={cfg.train.compile}) ...", file=sys.stderr, flush=True)
            fast, cold, images = deepres_speed(cfg, out_dir)
            amp = resolve_amp(cfg.train.amp, torch.device("cpu")).amp
            setup = (f"amp={cfg.train.amp} -> {amp}, channels_last={cfg.train.channels_last}, "
                     f"compile={cfg.train.compile}")
            if cfg.train.compile:
                setup += f", inductor_bn={cfg.train.inductor_bn}"
            flops = train_flops_per_image(cfg.model.name, **shape)
            rows.append({"case": label, "batch": batch, "plain_images_per_s": plain[label],
                         "gflop_per_image": flops / 1e9, "plain_gflops": plain[label] * flops / 1e9,
                         "deepres_gflops": fast * flops / 1e9,
                         "deepres_images_per_s": fast, "speedup": fast / plain[label], "deepres_cold_epoch_s": cold,
                         "deepres_images": images, "deepres_setup": setup, "data": cfg.data.name})
    warning = load_warning()  # measured again: a load that started during the run counts too
    if warning:
        print(warning)
    print(machine_line(machine))
    nominal = machine["fp32_peak_gflops"] = fp32_peak_gflops(machine["torch_threads"])
    peak = machine["sgemm_gflops"] = sgemm_gflops()
    print(f"fp32 on {machine['torch_threads']} thread(s): 2048^2 sgemm {peak:.0f} GFLOP/s measured (the 'of peak' "
          f"base); nominal FMA peak " + (f"{nominal:.0f} GFLOP/s at the reported clock" if nominal else "unknown"))

    def gflops(value: float) -> str:
        return f"{value:.0f} ({value / peak:.0%})"

    print("| case | batch | plain eager fp32 img/s | deepres train img/s | speed-up | plain GFLOP/s (of peak) | "
          "deepres GFLOP/s (of peak) | deepres cold epoch s | deepres setup | data |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['batch']} | {r['plain_images_per_s']:.1f} | {r['deepres_images_per_s']:.1f} | "
              f"{r['speedup']:.2f}x | {gflops(r['plain_gflops'])} | {gflops(r['deepres_gflops'])} | "
              f"{r['deepres_cold_epoch_s']:.1f} | {r['deepres_setup']} | {r['data']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "command": " ".join(sys.argv), "rows": rows},
                                             indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
