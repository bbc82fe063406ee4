"""`deepres train RECIPE [--set k=v ...] [--resume] [--out DIR] [--max-epochs N]` or `deepres train --resume RUN_DIR
[--set k=v ...]`: fit, then (rank 0, a finished run with train.calibrate_int8) the int8 calibration stored with the
checkpoint."""
import argparse
import os
from pathlib import Path

from deepres.core.config import Config, apply_overrides, load_config, resolve_recipe
from deepres.core.distributed import is_main_process
from deepres.core.errors import NonFiniteLossError, TrainingInterrupted
from deepres.core.runs import CONFIG_FILE

from deepres.inference.calibrate import calibrate_after_training
from deepres.tasks import task_of
from deepres.train.loop import fit, resume_command
from deepres.train.run import stored_run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file, or a name under recipes/ (e.g. fashion_mnist/resnet20); with "
                                       "--resume also a run directory, continued with the config it stored")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.05 --set train.amp=bf16 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT/run.name (or RUN_DIR) exactly from checkpoints/last; one stopped "
                             "before its first checkpoint (or not started at all) starts, with the same config")
    parser.add_argument("--out", metavar="DIR", help="parent directory of the run directory (run.out_dir)")
    parser.add_argument("--max-epochs", type=int, metavar="N",
                        help="stop once N epochs are complete; the schedule still spans the whole recipe, so "
                             "--resume continues it (to shorten training itself: --set train.epochs=N)")


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
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
    state = ("finished" if result["finished"] else
             f"stopped after epoch {result['epoch']} (continue with `{resume_command(result['run_dir'])}`)")
    task = task_of(cfg.data)
    if task.best_metric not in result:
        print(f"run {result['run_dir']}: {state}; no evaluation yet")
        return 0
    best, final = task.final_lines(result)
    print(f"run {result['run_dir']}: {state}; {best}")
    print(final)
    return 0


def _config(args: argparse.Namespace) -> Config:
    """The recipe with --set and --out applied; or, for `--resume RUN_DIR`, the config that run stored, with --set."""
    run_dir = Path(args.recipe)
    if not (run_dir / CONFIG_FILE).is_file():  # a recipe
        cfg = load_config(args.recipe, args.overrides)
        if args.out:
            cfg.run.out_dir = args.out
        return cfg
    if not args.resume:
        raise ValueError(f"{run_dir} is a run directory, not a recipe: continue it with `{resume_command(run_dir)}`")
    if not args.recipe.endswith(os.sep):  # `RUN_DIR/` names the directory alone
        try:
            recipe = resolve_recipe(args.recipe)
        except FileNotFoundError:
            recipe = None
        if recipe is not None:
            raise ValueError(f"{args.recipe} names both a run directory and a recipe ({recipe}): give the recipe "
                             f"as {recipe}, or the run directory as {args.recipe}{os.sep}")
    if args.out:
        raise ValueError(f"--out goes with a recipe; {run_dir} is the run directory itself")
    moved = sorted({item.split("=", 1)[0].strip() for item in args.overrides} & {"run.out_dir", "run.name"})
    if moved:
        raise ValueError(f"--set {moved[0]}: {run_dir} is the run directory itself, so its run.out_dir and run.name "
                         f"are given")
    cfg = stored_run_config(run_dir)
    return apply_overrides(cfg, args.overrides) if args.overrides else cfg
