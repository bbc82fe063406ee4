"""The `deepres` command. Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`; this file only lists them."""
import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "models": ("deepres.models.cli", "list registered models with params and GFLOPs"),
    "train": ("deepres.train.cli", "train a model from a recipe (YAML) with --set overrides; --resume continues"),
    "eval": ("deepres.eval.cli", "evaluate a checkpoint on a dataset (multi-scale and flip testing optional)"),
    "data": ("deepres.data.cli", "get MNIST / Fashion-MNIST, or verify that every image in a folder decodes"),
    "study": ("deepres.studies.cli", "train every (variant, seed) of a study file, resumably; report mean ± std"),
    "compare": ("deepres.studies.compare", "compare finished runs: table (mean ± std over seeds) and curves"),
    "predict": ("deepres.inference.cli", "classify images or folders with a trained or published model; CSV out"),
    "export": ("deepres.export", "export a checkpoint to ONNX, TorchScript or torch.export, checked against PyTorch"),
    "bench": ("deepres.bench", "CPU inference speed: eager, deepres fast paths and ONNX Runtime side by side"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="deepres", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        modules[name] = module
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args) or 0
    except (FileNotFoundError, KeyError, ValueError) as e:
        # User errors (bad path, key, value) get one clear line, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"deepres {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
