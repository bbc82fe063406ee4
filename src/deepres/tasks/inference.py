"""What every task's inference side shares: the options one prediction call takes (`PredictOptions`) and the
writer interface the `deepres predict` command fills (`PredictionWriter`). The task rows themselves
(classification.py, segmentation.py) say what a prediction is, how it reads as JSON and as a line of text, and
which files it is written to."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .segmentation import SegViews


@dataclass(frozen=True)
class PredictOptions:
    """How one call predicts. top_k: classes kept per image (classification); views: the test-time views
    (segmentation: sliding windows, scales, flip, shift-and-stitch); probabilities: keep the per-pixel class
    probabilities (segmentation); images: keep the decoded input image in each result (for an overlay)."""

    top_k: int = 5
    views: SegViews = field(default_factory=SegViews)
    probabilities: bool = True
    images: bool = False

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


class PredictionWriter(Protocol):
    """Where `deepres predict` puts a task's results: `add` one result (in input order), `close` -> the line that
    says what was written (None: nothing)."""

    out: Path | None

    def add(self, result: dict) -> None: ...

    def close(self) -> str | None: ...
