"""Evaluation beyond the task's own metrics: a classifier's robustness (mCE, mFR: robustness.py the measures and
report, robustness_measure.py running a model on corrupted images) and any tool's segmentation predictions scored
against a dataset's ground truth (score.py). The metrics of a checkpoint come from its task (deepres.tasks)."""
from deepres.tasks.evaluate import evaluate
from deepres.tasks.reports import write_confusion_matrix

__all__ = ["evaluate", "write_confusion_matrix"]
