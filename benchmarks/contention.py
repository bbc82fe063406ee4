"""CPU inference under contention: `deepres bench`'s measurement of each path (deepres's eager fp32, fast paths and
ONNX Runtime fp32), first on the machine as it is, then while busy processes that this script starts (and stops)
compete for the cores, side by side in one run.

Each path is built once (random weights, as `deepres bench`), then timed idle and loaded with the same runner and
batch; the table gives images/s both ways and the slowdown (idle / loaded). A torch path whose threads wait for
each other at every parallel region collapses when one of its cores is taken; ONNX Runtime's slowdown is the
reference (issue 15: deepres should slow no more than it). The load average is checked before the idle
measurement: a machine that is already busy makes both columns wrong.

    python benchmarks/contention.py                          # resnet20:32:64 and resnet50:224:16, 1 busy process
    python benchmarks/contention.py --busy 2 --case resnet50:224:1
    python benchmarks/contention.py --quick                  # seconds: checks that it runs, figures meaningless
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.core.device import limit_compute_threads, machine_line, machine_summary  # noqa: E402
from deepres.inference.bench import DEFAULT_PATHS, PATHS, build_path, time_calls  # noqa: E402
from deepres.commands.bench import parse_case  # noqa: E402
from deepres.models import create_model  # noqa: E402

BUSY_LOOP = "while True:\n    pass\n"  # one core's worth of pure-Python work per process


def start_load(processes: int) -> list[subprocess.Popen]:
    """`processes` busy Python processes (each keeps one core busy until stopped)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(processes)]


def stop_load(load: list[subprocess.Popen]) -> None:
    for process in load:
        process.terminate()
    for process in load:
        process.wait(timeout=10)


def build_runners(cases, paths, workdir: Path) -> list[dict]:
    """One entry per (case, path): the runner, its batch and labels for the table."""
    entries = []
    for name, size, batch in cases:
        torch.manual_seed(0)
        model = create_model(name).eval()
        input_size = (3, size, size)
        images = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0))
        for path in paths:
            folder = workdir / f"{name}-{size}-{batch}-{path}"  # an ONNX file per case
            folder.mkdir()
            runner, _, _ = build_path(path, model, input_size, workdir=folder, batch_size=batch)
            entries.append({"model": name, "image_size": size, "batch_size": batch, "path": path,
                            "runner": runner, "batch": images})
    return entries


def measure(entries: list[dict], key: str, timing: dict) -> None:
    for entry in entries:
        times = time_calls(entry["runner"], entry["batch"], **timing)
        times.sort()
        entry[key] = entry["batch_size"] / times[len(times) // 2]  # median call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", metavar="MODEL:SIZE:BATCH",
                        help="repeatable (default: resnet20:32:64 and resnet50:224:16)")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                        help=f"comma-separated, from {', '.join(PATHS)} (default: %(default)s)")
    parser.add_argument("--busy", type=int, default=1, help="busy processes started for the loaded run (default 1)")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's, at most the "
                                                    "available cores)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time each path about this long (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny case, short timings (a check that the script works; figures meaningless)")
    parser.add_argument("--out", metavar="FILE", help="also write the rows and the machine as JSON")
    args = parser.parse_args(argv)
    cases = [parse_case(c) for c in args.case] if args.case else [("resnet20", 32, 64), ("resnet50", 224, 16)]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    timing = dict(warmup=args.warmup, seconds=args.seconds, min_iterations=5, max_iterations=500)
    if args.quick:
        cases, timing = [("resnet20", 16, 2)], dict(warmup=1, seconds=0.0, min_iterations=2, max_iterations=2)
    if args.busy < 1:
        raise ValueError(f"--busy must be >= 1, got {args.busy}")
    limit_compute_threads(args.threads)
    machine = {**machine_summary(), "busy_processes": args.busy}  # the load warning before any load of ours
    warning = machine["load_warning"]
    with tempfile.TemporaryDirectory(prefix="contention-") as workdir:
        print(f"building {len(cases) * len(paths)} runners ...", file=sys.stderr, flush=True)
        entries = build_runners(cases, paths, Path(workdir))
        print("timing on the machine as it is ...", file=sys.stderr, flush=True)
        measure(entries, "idle", timing)
        load = start_load(args.busy)
        try:
            time.sleep(0.5)  # the busy processes are running before the first timed call
            print(f"timing with {args.busy} busy process(es) ...", file=sys.stderr, flush=True)
            measure(entries, "loaded", timing)
        finally:
            stop_load(load)
    if warning:
        print(warning)
    print(f"{machine_line(machine)}; loaded = {args.busy} busy Python process(es) started by this script")
    print("| model | size | batch | path | idle img/s | loaded img/s | slowdown |")
    print("|---|---|---|---|---|---|---|")
    rows = [{k: v for k, v in e.items() if k not in ("runner", "batch")} for e in entries]
    for r in rows:
        print(f"| {r['model']} | {r['image_size']} | {r['batch_size']} | {r['path']} | {r['idle']:.1f} | "
              f"{r['loaded']:.1f} | {r['idle'] / r['loaded']:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "command": " ".join(sys.argv), "rows": rows},
                                             indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
