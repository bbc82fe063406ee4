"""Tasks: what turns a config into a model, and what a task supplies to the shared loop and evaluator (its
loss, its metrics, its eval transform). Classification is the task deepres has today.

A task is a row in TASKS: the training loop asks it for everything task-specific (`Task` below) and mentions
no metric or label format itself, so another task (segmentation) is one more row, not a fork of the loop."""
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.nn as nn

from deepres.core.config import Config

from .classification import ClassificationTask


class Task(Protocol):
    best_metric: ClassVar[str]  # the key of evaluate()'s dict that picks checkpoints/best; higher is better

    @classmethod
    def from_config(cls, cfg: Config) -> "Task": ...  # cfg resolved against the data (tasks.build.resolve_config)

    def mix(self, images: torch.Tensor, labels: torch.Tensor,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...  # the batch as trained on, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...  # float32 scalar, a mean

    def evaluate(self, model: nn.Module, loader, *, ema_model: nn.Module | None = None) -> dict[str, float]: ...

    def record(self, metrics: dict[str, float]) -> dict[str, float]: ...  # the epoch record's fields (metrics.jsonl)

    def summary(self, metrics: dict[str, float]) -> str: ...  # for the epoch line


TASKS: dict[str, type[Task]] = {"classification": ClassificationTask}


def get_task(name: str) -> type[Task]:
    """The registered task `name`; build it for a run with .from_config(cfg)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(TASKS)}")
    return TASKS[name]
