"""Evaluation of a trained checkpoint (`deepres eval`) and of any tool's segmentation predictions (`deepres score`):
the metrics come from the task (deepres.tasks.evaluate, deepres.tasks.segmentation); this package adds the commands
and the confusion-matrix files."""
from deepres.tasks.evaluate import evaluate

from .confusion import write_confusion_matrix

__all__ = ["evaluate", "write_confusion_matrix"]
