"""Evaluation of a trained checkpoint (`deepres eval`): the metrics come from the task (deepres.tasks.evaluate);
this package adds the command and the confusion-matrix files."""
from deepres.tasks.evaluate import evaluate

from .confusion import write_confusion_matrix

__all__ = ["evaluate", "write_confusion_matrix"]
