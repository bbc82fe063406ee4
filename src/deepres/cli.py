"""deepres: train, evaluate, run, export and study deep residual networks for image recognition.

Each subcommand is one module of deepres.commands, the only package with argparse, which provides
`add_arguments(parser)` and `run(args) -> int`; this file only lists them and imports the one that runs.

Exit codes, the same for every subcommand: 0 success; 2 a usage or user error (a bad option, path, key or value, an
output that exists without --force: argparse's own code for a bad option too), printed as one line; 1 a run that
failed on valid input (a non-finite loss, a failed export check, a download that failed, `data verify` finding
bad images)."""
import argparse
import importlib
import sys

from deepres.core.errors import DownloadError, RunFailedError  # plain exception classes: no torch import

# name -> (module in deepres.commands, one-line help)
SUBCOMMANDS = {
    "models": ("models", "list registered models with params and GMACs"),
    "train": ("train", "train a model from a recipe (YAML) with --set overrides; --resume continues"),
    "teacher-logits": ("teacher_logits", "store a teacher's logits on every training image of a recipe, for offline "
                                         "distillation (train.kd_logits)"),
    "eval": ("eval", "evaluate a checkpoint on a dataset (multi-scale and flip testing optional)"),
    "robustness": ("robustness", "corruption error (mCE) and flip rate (mFR) of a classifier: corruptions made on the "
                                 "fly, or an ImageNet-C folder"),
    "score": ("score", "score a folder of prediction PNGs from any tool against a segmentation dataset's ground truth"),
    "data": ("data", "datasets: get MNIST / Fashion-MNIST, verify that every image decodes, pack one into shards, "
                     "make fashion-mnist-scenes, make-corrupted (a corrupted copy in the ImageNet-C layout)"),
    "study": ("study", "train every (variant, seed) of a study file, resumably; report mean ± std"),
    "compare": ("compare", "compare finished runs: table (mean ± std over seeds) and curves"),
    "predict": ("predict", "classify or segment images or folders with a trained or published model: top classes "
                           "(CSV) or class maps (PNG)"),
    "export": ("export", "export a checkpoint to ONNX, TorchScript, torch.export or a Triton model repository, "
                         "checked against PyTorch"),
    "serve": ("serve", "serve a model over HTTP: JSON API, Grad-CAM, dynamic batching, a browser page, Prometheus "
                       "metrics"),
    "calibrate": ("calibrate", "store an int8 calibration and its agreement with fp32 in a checkpoint: predict then "
                               "runs int8 by default where it is safe"),
    "bench": ("bench", "CPU inference speed: eager, deepres precision paths and ONNX Runtime side by side"),
    "convert": ("convert", "convert a foreign checkpoint (ademxapp MXNet .params) to a deepres safetensors state dict"),
}


def _command(name: str):
    """(add_arguments, run) of a subcommand. Imported here, not at the top: a subcommand's module pulls in torch and
    its packages (seconds), and `deepres --help` or a typo must not pay for every command."""
    module = importlib.import_module(f"deepres.commands.{SUBCOMMANDS[name][0]}")
    return module.add_arguments, module.run


def build_parser(chosen: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's; only `chosen` gets its arguments (and its module imported)."""
    parser = argparse.ArgumentParser(prog="deepres", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, (_, help_text) in SUBCOMMANDS.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _command(name)[0](parsers[name])
    return parser, parsers


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # only the command being run (the first word that names one) gets its arguments, and its module imported
    chosen = next((word for word in argv if not word.startswith("-")), None)
    parser, parsers = build_parser(chosen)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # parse_args would print the top level's usage; the subcommand's is the one that helps
        parsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    runner = _command(args.command)[1]
    try:
        return runner(args) or 0
    except (RunFailedError, DownloadError) as e:
        print(f"deepres {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        # User errors (bad path, key, value, an output in the way) get one clear line, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"deepres {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
