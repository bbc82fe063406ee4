"""`deepres train RECIPE [--set k=v ...] [--resume] [--out DIR] [--max-epochs N]`: fit, then (rank 0, a finished
run with train.calibrate_int8) the int8 calibration stored with the checkpoint."""
import argparse

from deepres.core.config import load_config
from deepres.core.distributed import is_main_process
from deepres.core.errors import NonFiniteLossError, TrainingInterrupted

from deepres.inference.calibrate import calibrate_after_training
from deepres.tasks import task_of
from deepres.train.loop import fit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file, or a name under recipes/ (e.g. fashion_mnist/resnet20)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.05 --set train.amp=bf16 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT/run.name exactly from checkpoints/last; one stopped before its "
                             "first checkpoint (or not started at all) starts, with the same config")
    parser.add_argument("--out", metavar="DIR", help="parent directory of the run directory (run.out_dir)")
    parser.add_argument("--max-epochs", type=int, metavar="N",
                        help="stop once N epochs are complete; the schedule still spans the whole recipe, so "
                             "--resume continues it (to shorten training itself: --set train.epochs=N)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    if args.out:
        cfg.run.out_dir = args.out
    if args.max_epochs is not None and args.max_epochs < 1:
        raise ValueError(f"--max-epochs must be >= 1, got {args.max_epochs}")
    # Under torchrun every rank gets the same result or error; rank 0 alone prints it.
    main = is_main_process()
    try:
        result = fit(cfg, resume=args.resume, stop_after_epochs=args.max_epochs)
    except TrainingInterrupted as e:
        return e.exit_code  # fit logged where it stopped and how to resume
    except (NonFiniteLossError, FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        if main:
            raise  # deepres.cli prints it in one line, with its exit code
        return 1 if isinstance(e, NonFiniteLossError) else 2
    if not main:
        return 0
    if result["finished"]:  # every rank has left the process group: rank 0 calibrates alone
        calibrate_after_training(cfg, result["run_dir"], log=lambda line: print(line, flush=True))
    state = "finished" if result["finished"] else f"stopped after epoch {result['epoch']} (continue with --resume)"
    task = task_of(cfg.data)
    if task.best_metric not in result:
        print(f"run {result['run_dir']}: {state}; no evaluation yet")
        return 0
    best, final = task.final_lines(result)
    print(f"run {result['run_dir']}: {state}; {best}")
    print(final)
    return 0
