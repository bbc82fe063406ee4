"""The Assemble-ResNet ablation's architecture steps side by side: params, GMACs and CPU images/s (eager fp32 and
deepres's default fast path) at the paper's eval size, and the throughput ratio to ResNet-50 (the paper, Table 2:
536 -> 312 img/s on a P40 for the full assembly, 0.58x). Random weights, one process, batch 16 by default.

    python benchmarks/assemble_ablation.py                       # the steps below, 256x256, batch 16
    python benchmarks/assemble_ablation.py --models resnet50 assemble_resnet50 --size 224 --batch 8
    python benchmarks/assemble_ablation.py --study assemble_tricks --data fashion_mnist --batch 128   # each variant

Prints the CPU model and ISA capability first; time it with nothing else running on the machine.
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.core.device import auto_dtype, cpu_class_label, cpu_model_name, load_warning  # noqa: E402
from deepres.inference.bench import build_path, time_calls  # noqa: E402
from deepres.models import create_model, list_models  # noqa: E402
from deepres.models.complexity import model_complexity  # noqa: E402
from deepres.studies import load_study, plan_study, with_selection  # noqa: E402

# R50 -> R50D -> +SE -> SK instead of SE -> +BL -> +AA (the full assembly), as the paper's Table 2 adds them
STEPS = ("resnet50", "resnet50d", "assemble_r50d_se", "assemble_r50d_sk", "assemble_r50_bl_sk", "assemble_resnet50")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(STEPS))
    parser.add_argument("--size", type=int, default=256, help="image side, pixels (the paper evaluates at 256)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="time each path for about this long")
    parser.add_argument("--study", metavar="NAME", help="time each variant's model of this study file instead "
                        "(its model.name and model.kwargs, at the --data preset's image size, channels and classes)")
    parser.add_argument("--data", default="fashion_mnist", help="with --study: the study's --data preset")
    args = parser.parse_args()
    if args.study:
        study = with_selection(load_study(args.study), data=args.data, seeds=[0])
        models = {run.variant: run.config for run in plan_study(study, Path("/nonexistent-study-dir"))}
        builds = {name: (cfg.model.name, dict(cfg.model.kwargs), cfg.data.in_chans or 3, cfg.data.image_size)
                  for name, cfg in models.items()}
    else:
        missing = [m for m in args.models if m not in list_models()]
        if missing:
            raise SystemExit(f"not registered: {', '.join(missing)} (see `deepres models`)")
        builds = {name: (name, {}, 3, args.size) for name in args.models}
    fast = auto_dtype(torch.device("cpu"))
    warning = load_warning()  # a busy machine makes every figure below slower
    if warning:
        print(warning)
    sides = sorted({size for *_, size in builds.values()})
    print(f"CPU: {cpu_model_name()}, class {cpu_class_label()}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; batch {args.batch}, "
          f"{'/'.join(f'{side}x{side}' for side in sides)}, fast path = {fast}")
    rows = []
    names = list(builds)
    # The first model is timed first and again last: the machine's speed drifts over a run (measured: resnet50's
    # bf16 path 41 img/s first, 58 img/s last), and the ratios use the mean of its two timings.
    for name in [*names, names[0]]:
        arch, kwargs, chans, size = builds[name]
        classes = 10 if args.study else 1000
        stats = model_complexity(arch, num_classes=classes, input_size=(chans, size, size), **kwargs)
        model = create_model(arch, num_classes=classes, in_chans=chans, **kwargs).eval()
        x = torch.randn(args.batch, chans, size, size, generator=torch.Generator().manual_seed(0))
        speeds = []
        for path in ("eager_fp32", fast):
            runner, _, _ = build_path(path, model, (chans, size, size), batch_size=args.batch)
            times = time_calls(runner, x, warmup=1, seconds=args.seconds, min_iterations=3, max_iterations=50)
            speeds.append(args.batch / statistics.median(times))
        rows.append((name, stats["params"] / 1e6, stats["gmacs"], *speeds))
        print(f"{name}: {speeds[0]:.1f} / {speeds[1]:.1f} img/s", file=sys.stderr)
    base = [(rows[0][i] + rows[-1][i]) / 2 for i in (3, 4)]
    side = builds[names[0]][3]
    print(f"| model | params (M) | GMACs at {side} | eager fp32 img/s | {fast} fast path img/s | "
          f"ratio to {names[0]} (eager / fast; its mean of both timings) |")
    print("|---|---|---|---|---|---|")
    for i, (name, params, gmacs, eager, fast_speed) in enumerate(rows):
        label = f"{name} (again)" if i == len(rows) - 1 else name
        print(f"| {label} | {params:.2f} | {gmacs:.2f} | {eager:.1f} | {fast_speed:.1f} | {eager / base[0]:.2f}x / "
              f"{fast_speed / base[1]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
