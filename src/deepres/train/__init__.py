"""Training: the loop (`fit`, `train_one_epoch`), the run it trains (`Run`, `setup_run`), optimizers, lr schedules
and the EMA of weights. The config it reads lives in deepres.core.config (re-exported here for convenience)."""
from deepres.core.config import Config, config_from_dict, config_to_dict, list_recipes, load_config

from .loop import fit, train_one_epoch
from .run import Run, setup_run
from .schedules import lr_at

__all__ = ["Config", "Run", "config_from_dict", "config_to_dict", "fit", "list_recipes", "load_config", "lr_at",
           "setup_run", "train_one_epoch"]
