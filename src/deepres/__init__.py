"""deepres: deep residual networks for image recognition.

The package is layered (LAYERS below, bottom first; docs/architecture.md says what each package owns): a module
imports only its own package and packages of lower layers, at the top of the file (tests/test_architecture.py).
`import deepres` itself imports nothing heavy: the public names below load their module on first use.
"""
import importlib

__version__ = "0.1.0"

# core: config engine and schema, checkpoint format, devices, distributed, run records, files
# models | data: model registry and weights records | dataset-format registry, readers, loaders
# tasks: a config or checkpoint -> the model; each task row: loss, metrics, eval transform, predictor, JSON, files
# train | eval: the training loop | evaluation, robustness, scoring;  inference | studies: predictor, precision
# path, export, bench, serving | multi-seed studies;  commands: one module per subcommand (the only argparse);
# cli: deepres/__init__.py, __main__.py, cli.py
LAYERS = (("core",), ("models", "data"), ("tasks",), ("train", "eval"), ("inference", "studies"), ("commands",),
          ("cli",))

# public name -> the module that defines it (PEP 562: imported on first attribute access)
_LAZY = {
    "create_model": "deepres.models", "list_models": "deepres.models", "register_model": "deepres.models",
    "list_pretrained": "deepres.models.pretrained", "load_pretrained_weights": "deepres.models.pretrained",
    "init_model": "deepres.inference", "inference_model": "deepres.inference", "extract_feat": "deepres.inference",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepres' has no attribute {name!r}")
