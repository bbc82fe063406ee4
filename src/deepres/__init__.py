"""deepres: deep residual networks for image recognition.

The package is layered; a module imports only from its own layer's package or from layers below it:

    core                      typed config, checkpoint format, devices, distributed, run records, files
    models | data             the model registry and weights records | the dataset-format registry and loaders
    tasks                     building a model from a config or checkpoint; a task's loss, metrics, eval transform
    train | eval              the training loop | `deepres eval`
    inference | studies       predictor, fast path, export, bench | multi-seed studies and reports
    cli                       the `deepres` command

`import deepres` itself imports nothing heavy: the names below load their module on first use.
"""
import importlib

__version__ = "0.1.0"

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
