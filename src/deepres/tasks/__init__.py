"""Tasks: what turns a config into a model, and everything task-specific over a model's whole life, from recipe to
HTTP response: classification and semantic segmentation.

A task is a row in TASKS. The training loop, `deepres eval`, the Predictor (and through it `predict`, `serve`,
calibration) ask the row for everything task-specific (`Task` below) and mention no metric, label format or output
file themselves, so another task is one more row, not a branch in each of them."""
import torch.nn as nn

from deepres.core.config import DataConfig
from deepres.data import get_format

from .classification import ClassificationTask
from .inference import PredictOptions
from .segmentation import SegmentationTask


# What the loop asks of a task (ClassificationTask is the example): `best_metric` (class attribute: the key of
# evaluate()'s dict that picks checkpoints/best, higher is better); `from_config(cfg)` (cfg resolved against the
# data); `mix(images, labels, rng, indices=None) -> (images, targets)` (the batch as trained on;
# indices: the batch's training-image indices, for stored per-image targets); `loss(logits, targets)` (a
# float32 mean); `evaluate(model, loader, *, ema_model=None) -> dict` (summed over ranks); `record(metrics)` (the
# epoch record's fields in metrics.jsonl); `summary(metrics)` (text for the epoch line); `eval_transform(data,
# in_chans)` (class method: the Preprocess a model trained on that data expects at inference); `needs_indices`
# (whether mix takes the batch's training-image indices).
# What evaluation and inference ask of a row (class attributes and class methods): `name`; `labels_images` (one
# label per image: Grad-CAM, mCE, int8 agreement, distillation apply); `eval_config` / `evaluate_checkpoint` /
# `eval_report` / `write_eval_files` (`deepres eval`); `predict(forward, inputs, sizes, *, model, class_names,
# options) -> list[dict]` (the batch predictor the Predictor runs); `card` (its part of the model card); `to_json`
# (a result as the JSON API gives it); `line` (a result as `deepres predict` prints it); `predict_flags` and
# `prediction_writer` (the files `deepres predict --out` writes).
Task = ClassificationTask | SegmentationTask
TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "segmentation": SegmentationTask}


def get_task(name: str) -> type[Task]:
    """The registered task `name`; build it for a run with .from_config(cfg)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(TASKS)}")
    return TASKS[name]


def task_of(data: DataConfig) -> type[Task]:
    """The task a data config serves: its dataset format's (deepres.data's registry)."""
    return get_task(get_format(data.name).task)


def task_of_model(model: nn.Module) -> type[Task]:
    """The task a model serves: its `task` attribute (deepres's segmentation models say "segmentation"), else
    classification."""
    return get_task(getattr(model, "task", "classification"))
