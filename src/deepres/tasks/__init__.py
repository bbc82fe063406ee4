"""Tasks: what turns a config into a model, and what a task supplies to the shared loop and evaluator (its
loss, its metrics, its eval transform): classification and semantic segmentation.

A task is a row in TASKS: the training loop asks it for everything task-specific (`Task` below) and mentions
no metric or label format itself, so another task (segmentation) is one more row, not a fork of the loop."""
from deepres.core.config import DataConfig
from deepres.data import get_format

from .classification import ClassificationTask
from .segmentation import SegmentationTask


# What the loop asks of a task (ClassificationTask is the example): `best_metric` (class attribute: the key of
# evaluate()'s dict that picks checkpoints/best, higher is better); `from_config(cfg)` (cfg resolved against the
# data); `mix(images, labels, rng, indices=None) -> (images, targets)` (the batch as trained on;
# indices: the batch's training-image indices, for stored per-image targets); `loss(logits, targets)` (a
# float32 mean); `evaluate(model, loader, *, ema_model=None) -> dict` (summed over ranks); `record(metrics)` (the
# epoch record's fields in metrics.jsonl); `summary(metrics)` (text for the epoch line); `eval_transform(data,
# in_chans)` (class method: the Preprocess a model trained on that data expects at inference).
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
