"""CLI start-up: wall time of `deepres --help`, `import deepres` and a subcommand's help, against the bare Python
interpreter and `import torch` measured in the same run.

Each command runs --repeats times as a fresh process (after one untimed run, so files are in the page cache);
the table shows the median and the fastest run. Run it on an otherwise idle machine: the load average before and
after is printed, and a second busy process on 2 cores slows every row.

    .venv/bin/python benchmarks/cli_startup.py --repeats 15 [--baseline-src OLD_CHECKOUT/src]

--baseline-src times `python -m deepres --help` from another source tree as well (e.g. a `git worktree` of an
older commit), in the same run.
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.core.device import cpu_class_label, cpu_flags, cpu_model_name, load_warning  # noqa: E402


def commands(baseline_src: str | None) -> list[tuple[str, list[str], dict | None]]:
    python = sys.executable
    deepres = shutil.which("deepres", path=str(Path(python).parent)) or "deepres"
    rows = [
        ("python -c pass (baseline)", [python, "-c", "pass"]),
        ("python -c 'import torch' (baseline)", [python, "-c", "import torch"]),
        ("python -c 'import deepres'", [python, "-c", "import deepres"]),
        ("deepres --help", [deepres, "--help"]),
        ("deepres train --help", [deepres, "train", "--help"]),
        ("deepres predict --help", [deepres, "predict", "--help"]),
    ]
    rows = [(label, argv, None) for label, argv in rows]
    if baseline_src:
        env = {**os.environ, "PYTHONPATH": str(Path(baseline_src).resolve())}
        rows.insert(2, (f"python -m deepres --help from {baseline_src} (baseline)", [python, "-m", "deepres", "--help"],
                        env))
    return rows


def time_command(argv: list[str], repeats: int, env: dict | None) -> list[float]:
    subprocess.run(argv, capture_output=True, check=True, env=env)  # untimed: warms the page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per command (default 15)")
    parser.add_argument("--baseline-src", metavar="DIR", help="also time `python -m deepres --help` from this src/")
    args = parser.parse_args()
    isa = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"})
    warning = load_warning()  # a busy machine makes every figure below slower
    if warning:
        print(warning)
    print(f"CPU: {cpu_model_name() or platform.processor()}, class {cpu_class_label()} ({os.cpu_count()} cores; "
          f"ISA flags: {', '.join(isa)}); "
          f"Python {platform.python_version()}; load average before {os.getloadavg()[0]:.2f}")
    print("| command | median s | fastest s |\n|---|---|---|")
    for label, argv, env in commands(args.baseline_src):
        times = time_command(argv, args.repeats, env)
        print(f"| {label} | {statistics.median(times):.3f} | {min(times):.3f} |")
    print(f"load average after {os.getloadavg()[0]:.2f}; {args.repeats} runs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
