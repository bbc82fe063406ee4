"""Evaluation: accuracy, loss, per-class accuracy and confusion matrix, with optional multi-scale/flip testing."""
from .confusion import write_confusion_matrix
from .evaluator import evaluate

__all__ = ["evaluate", "write_confusion_matrix"]
