"""Wall-clock seconds for a recipe to first reach a test accuracy: deepres.train.fit end to end (data loading,
compile, training, evaluation), timed from the call of fit to the epoch record that first meets the target, per
seed, with the mean ± std over seeds. Prints the CPU (model, ISA flags, cores, threads) or GPU it ran on and a
warning when the load average exceeds the cores (then the figures are slower than the machine idle).

    python benchmarks/time_to_accuracy.py fashion_mnist/resnet20_fast --target 94 --seeds 0 1 2     # CPU
    python benchmarks/time_to_accuracy.py fashion_mnist/resnet20_gpu --target 94 --seeds 0 1
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.core.runs import read_metrics  # noqa: E402
from deepres.core.config import load_config  # noqa: E402
from deepres.core.device import load_warning, machine_line, machine_summary  # noqa: E402
from deepres.train.loop import fit  # noqa: E402


def time_to_accuracy(recipe, overrides, target, seed, out_dir):
    cfg = load_config(recipe, [*overrides, f"train.seed={seed}", f"run.out_dir={out_dir}", f"run.name=seed{seed}"])
    start = time.time()
    result = fit(cfg, log=lambda line: print(f"  [seed {seed}] {line}", flush=True))
    total = time.time() - start
    _, epochs = read_metrics(Path(out_dir) / f"seed{seed}")
    hit = next((e for e in epochs if e.get("top1", 0) >= target), None)
    return {"seed": seed, "seconds_to_target": hit["time"] - start if hit else None,
            "epoch_reached": hit["epoch"] if hit else None, "final_top1": result.get("top1"),
            "total_seconds": total, "epochs": len(epochs)}


def mean_std(values, digits: int = 1) -> str:
    values = list(values)
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--target", type=float, default=94.0, help="test top-1 accuracy (%%) to reach")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="time_to_accuracy.json")
    parser.add_argument("--runs", metavar="DIR", help="keep the run directories here (default: a temporary one)")
    args = parser.parse_args()
    before = machine_summary()  # the load warning before any run of ours
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows.append(time_to_accuracy(args.recipe, args.overrides, args.target, seed, args.runs or tmp))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    for warning in dict.fromkeys(w for w in (before["load_warning"], load_warning()) if w):
        print(warning)  # other processes shared the machine: every figure below is slower than idle
    print(f"\n{args.recipe} {' '.join(args.overrides)} | target top-1 {args.target}% | {device}")
    print(machine_line(before))
    print("| seed | seconds to target | epoch reached | final top-1 | total seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        sec = f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] is not None else "not reached"
        print(f"| {r['seed']} | {sec} | {r['epoch_reached'] or '-'} | {r['final_top1']:.2f} | "
              f"{r['total_seconds']:.1f} |")
    reached = [r["seconds_to_target"] for r in rows if r["seconds_to_target"] is not None]
    print(f"| mean ± std ({len(rows)} seeds, {len(reached)} reached) | {mean_std(reached)} | | "
          f"{mean_std((r['final_top1'] for r in rows), 2)} | {mean_std(r['total_seconds'] for r in rows)} |")
    Path(args.out).write_text(json.dumps({"recipe": args.recipe, "overrides": args.overrides, "target": args.target,
                                          "device": device, "machine": before, "command": " ".join(sys.argv),
                                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
