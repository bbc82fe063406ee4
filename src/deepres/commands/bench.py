"""`deepres bench`: CPU inference speed of deepres's precision paths beside ONNX Runtime fp32 and static int8, on
random weights or a trained checkpoint's real test images (deepres.inference.bench); prints a table."""
import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from deepres.core.device import CPU_CLASSES, limit_compute_threads, load_warning, reexec_as_cpu_class
from deepres.inference.bench import (DEFAULT_CASES, DEFAULT_PATHS, PATHS, agreement_table, benchmark,
                                     checkpoint_agreement, environment, markdown_table)
from deepres.models import list_models


def parse_case(text: str) -> tuple[str, int, int]:
    parts = text.split(":")
    try:
        name, size, batch = parts[0], int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise ValueError(f"--case {text!r}: expected MODEL:SIZE:BATCH, e.g. resnet50:224:16") from None
    if name not in list_models():
        raise ValueError(f"--case {text!r}: unknown model {name!r} (see `deepres models`)")
    if size < 1 or batch < 1:
        raise ValueError(f"--case {text!r}: size and batch must be positive")
    return name, size, batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", action="append", metavar="MODEL:SIZE:BATCH",
                        help="a case to time, repeatable (default: resnet50:224:1, resnet50:224:16, resnet20:32:1, "
                             "resnet20:32:128); `none`: only --agreement-checkpoint")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                        help=f"comma-separated paths from {', '.join(PATHS)} (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="also time fp32_compile and bf16_compile "
                        "(torch.compile, inductor with freezing; compile time reported apart)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time each path and batch for about this long, s "
                        "(default 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every path and batch of the --case models in this many interleaved rounds of "
                             "--seconds each, the median over all of them reported: a machine whose speed drifts "
                             "then slows every path alike (default 1; the --agreement-checkpoint timing is one "
                             "pass per path)")
    parser.add_argument("--min-iterations", type=int, default=5, help="timed calls at least (default 5)")
    parser.add_argument("--max-iterations", type=int, default=200, help="timed calls at most (default 200)")
    parser.add_argument("--agreement-images", type=int, default=32,
                        help="random images per model for the agreement column, rounded up to a multiple of the "
                             "model's largest batch (default 32)")
    parser.add_argument("--agreement-checkpoint", metavar="RUN_DIR",
                        help="also measure top-1 and agreement of each path on the test set of this trained model")
    parser.add_argument("--agreement-limit", type=int, default=0, metavar="N",
                        help="use only the first N test images for --agreement-checkpoint (default 0: all)")
    parser.add_argument("--checkpoint-batch", type=int, default=0, metavar="N",
                        help="also time each path on --agreement-checkpoint's model with batches of N real test "
                             "images, plus `default` (what predict runs for it: int8 from its stored calibration "
                             "where that clears the bar); 0 = no timing (default)")
    parser.add_argument("--threads", type=int, help="torch (and ONNX Runtime) intra-op threads (default: torch's; "
                                                    "at most the available cores)")
    parser.add_argument("--isa", choices=CPU_CLASSES,
                        help="run as a CPU of this class would: torch's kernels (oneDNN, ATen, inductor, fbgemm, "
                             "MKL) and deepres's choice rules restricted to it; ONNX Runtime keeps the real CPU's")
    parser.add_argument("--out", metavar="FILE", help="write the rows and environment as JSON here")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args: argparse.Namespace) -> int:
    reexec_as_cpu_class(args.isa)  # a new process: torch reads the restriction when it loads
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise ValueError(f"--out {out} already exists; choose another file or pass --force")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for name in ("fp32", "bf16") if args.compile else ():  # each compiled path right after its eager one
        if f"{name}_compile" not in paths:
            paths.insert(paths.index(name) + 1 if name in paths else len(paths), f"{name}_compile")
    if args.checkpoint_batch < 0:
        raise ValueError("--checkpoint-batch must be >= 0")
    if args.case == ["none"]:
        if not args.agreement_checkpoint:
            raise ValueError("--case none leaves nothing to measure without --agreement-checkpoint")
        cases = []
    else:
        cases = [parse_case(c) for c in args.case] if args.case else list(DEFAULT_CASES)
    limit_compute_threads(args.threads)  # never more threads than this process may use (core.device)
    for name in ("warmup", "min_iterations", "max_iterations", "agreement_images", "rounds"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else '>= 1'}")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731  progress to stderr, table to stdout
    started = time.perf_counter()
    rows = benchmark(cases, paths, warmup=args.warmup, seconds=args.seconds, min_iterations=args.min_iterations,
                     max_iterations=args.max_iterations, agreement_images=args.agreement_images, rounds=args.rounds,
                     log=log)
    checkpoint_paths = (["default", *paths] if args.checkpoint_batch else paths)
    results = (checkpoint_agreement(args.agreement_checkpoint, checkpoint_paths, limit=args.agreement_limit,
                                    timing_batch=args.checkpoint_batch, seconds=args.seconds, log=log)
               if args.agreement_checkpoint else [])
    env = environment()
    warning = load_warning()
    if warning:
        print(warning)
    print(f"CPU inference, {env.get('cpu', '?')}, class {env['cpu_class']} (ISA flags: "
          f"{', '.join(env['isa']) or 'none'}), {env['threads']} "
          f"threads, torch {env['torch']}, onnxruntime {env.get('onnxruntime', '-')}; warm-up {args.warmup} calls "
          f"excluded")
    if rows:
        print(f"Random weights, {args.rounds} interleaved round(s) of about {args.seconds:g} s per path and batch; "
              f"agreement = top-1 agreement with eager fp32 on random images")
        print(markdown_table(rows))
    if results:
        print(f"\nOn real data: {results[0]['model']} {results[0]['checkpoint']}, test set")
        print(agreement_table(results))
    if out is not None:
        report = {"environment": env, "command": " ".join(sys.argv), "seconds": time.perf_counter() - started,
                  "rows": [asdict(r) for r in rows], "checkpoint_agreement": results}
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return 0
