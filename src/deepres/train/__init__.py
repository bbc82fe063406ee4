"""Training: typed config and recipes, schedules, optimizers, checkpoints and the loop (`fit`)."""
from .config import Config, config_from_dict, config_to_dict, list_recipes, load_config
from .schedules import lr_at

__all__ = ["Config", "config_from_dict", "config_to_dict", "fit", "list_recipes", "load_config", "lr_at",
           "train_one_epoch"]


def __getattr__(name):
    # The loop pulls in deepres.eval (torchmetrics) and deepres.runs: imported on first use only, so that
    # `deepres models` and config tools start fast.
    if name in ("fit", "train_one_epoch"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'deepres.train' has no attribute {name!r}")
