"""GPU training throughput: ResNet-50 at 224x224 on synthetic data, full training steps (forward, backward, SGD).

Rows, all in one process on one GPU, same batch and data:
  plain eager fp32 NCHW   a minimal PyTorch loop (the baseline the issue asks for), deepres resnet50
  plain + timm resnet50   timm's resnet50 in that same loop, if timm is importable
  plain + torchvision     torchvision's resnet50 in that same loop, if torchvision is importable
  plain bf16+CL           the same minimal loop with bf16 autocast and channels_last (what a careful user gets)
  deepres eager / compile deepres.train.train_one_epoch (the real training loop) with bf16 + channels_last,
                          without and with torch.compile
Images/s of full training steps, timed with CUDA events after warm-up steps; peak memory from
torch.cuda.max_memory_allocated. Prints a table and writes JSON.

    python benchmarks/train_throughput.py --batch-size 256 --steps 30 --out train_throughput.json
"""
import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.models import create_model  # noqa: E402
from deepres.core.config import Config  # noqa: E402
from deepres.core.device import load_warning  # noqa: E402
from deepres.tasks import get_task  # noqa: E402
from deepres.train.loop import train_one_epoch  # noqa: E402
from deepres.train.run import Run  # noqa: E402


class RepeatedBatch:
    """A loader yielding the same device-resident batch `steps` times (the data pipeline is not measured here)."""

    def __init__(self, images, labels, steps):
        self.images, self.labels, self.steps = images, labels, steps
        self.batch_size, self.dataset_size = len(labels), len(labels) * steps

    def __len__(self):
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.images, self.labels

    def set_epoch(self, epoch):
        pass


def time_cuda(fn, warmup_steps, steps, batch_size):
    """Run fn(n_steps) once to warm up, then time fn(steps) with CUDA events; returns (images/s, peak GiB)."""
    fn(warmup_steps)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(steps)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    return batch_size * steps / seconds, torch.cuda.max_memory_allocated() / 2**30


def plain_loop(model, images, labels, *, bf16=False, channels_last=False):
    """The baseline: the shortest correct PyTorch training loop."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()

    def run(steps):
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def deepres_loop(images, labels, *, compile_model):
    """deepres's own training loop (train_one_epoch) with the settings its GPU recipes use."""
    cfg = Config()
    cfg.model.name, cfg.model.num_classes = "resnet50", 1000
    cfg.train.amp, cfg.train.channels_last, cfg.train.compile = "bf16", True, compile_model
    cfg.train.log_every_iters = 10**9
    cfg.train.max_iters = 10**9  # no end of schedule: each call runs exactly its loader's steps
    cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.name = 0.1, 1e-4, "constant"
    model = create_model("resnet50", num_classes=1000).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    training = Run(cfg, torch.device("cuda"), model, optimizer, get_task("classification").from_config(cfg),
                   train_loader=None, train_model=torch.compile(model) if compile_model else model)

    def run(steps):
        training.train_loader = RepeatedBatch(images, labels, steps)
        train_one_epoch(training)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per row (compile happens here)")
    parser.add_argument("--out", default="train_throughput.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_throughput.py needs a CUDA GPU; none is visible")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 1000, (args.batch_size,), device="cuda")

    rows = {}
    def bench(name, make):
        torch.cuda.empty_cache()
        rows[name] = time_cuda(make(), args.warmup, args.steps, args.batch_size)
        print(f"  {name}: {rows[name][0]:.0f} img/s", flush=True)

    bench("plain eager fp32 NCHW (deepres resnet50)",
          lambda: plain_loop(create_model("resnet50").cuda(), images, labels))
    try:
        import timm
        bench("plain eager fp32 NCHW (timm resnet50)",
              lambda: plain_loop(timm.create_model("resnet50").cuda(), images, labels))
        bench("plain bf16+CL (timm resnet50)",
              lambda: plain_loop(timm.create_model("resnet50").cuda(), images, labels, bf16=True, channels_last=True))
    except ImportError:
        print("  timm not importable: its rows are skipped")
    try:
        import torchvision
        bench("plain eager fp32 NCHW (torchvision resnet50)",
              lambda: plain_loop(torchvision.models.resnet50().cuda(), images, labels))
    except ImportError:
        print("  torchvision not importable: its row is skipped")
    bench("plain bf16+CL (deepres resnet50)",
          lambda: plain_loop(create_model("resnet50").cuda(), images, labels, bf16=True, channels_last=True))
    bench("deepres train loop, bf16+CL, eager", lambda: deepres_loop(images, labels, compile_model=False))
    bench("deepres train loop, bf16+CL, torch.compile", lambda: deepres_loop(images, labels, compile_model=True))

    peers = {k: v for k, v in rows.items() if k.startswith("plain")}
    best_peer = max(peers, key=lambda k: peers[k][0])
    best_deepres = max((k for k in rows if k.startswith("deepres")), key=lambda k: rows[k][0])
    baseline = rows["plain eager fp32 NCHW (deepres resnet50)"][0]
    device = torch.cuda.get_device_name()
    print(f"\nResNet-50, 224x224, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{device}, torch {torch.__version__}")
    warning = load_warning()  # a busy machine makes every figure below slower
    if warning:
        print(warning)
    print(f"| {'setup':<46} | {'img/s':>7} | {'vs fp32 eager':>13} | {'peak GiB':>8} |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 15}|{'-' * 10}|")
    for name, (ips, mem) in rows.items():
        print(f"| {name:<46} | {ips:>7.0f} | {ips / baseline:>12.2f}x | {mem:>8.1f} |")
    ratio = rows[best_deepres][0] / rows[best_peer][0]
    print(f"\nbest deepres ({best_deepres}) / best peer ({best_peer}) = {ratio:.2f}x")
    result = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
              "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
              "rows": {k: {"images_per_s": v[0], "peak_gib": v[1]} for k, v in rows.items()},
              "best_deepres": best_deepres, "best_peer": best_peer, "ratio": ratio}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
