"""What every task's inference side shares: the options one prediction call takes (`PredictOptions`). The task rows
themselves (classification.py, segmentation.py) say what a prediction is, how it reads as JSON and as a line of
text, and which files it is written to (a writer with `add(result)` and `close() -> line or None`)."""
from dataclasses import dataclass, field

from .segmentation import SegViews


@dataclass(frozen=True)
class PredictOptions:
    """How one call predicts. top_k: classes kept per image (classification); views: the test-time views
    (segmentation: sliding windows, scales, flip, shift-and-stitch); probabilities: keep the per-pixel class
    probabilities (segmentation); images: keep the decoded input image in each result (for an overlay);
    class_map: a segmentation class map at each image's size ("image") or at the size the model saw ("model");
    max_map_pixels: a class map in JSON (to_json) larger than this is scaled down to fit, aspect kept (0: no cap)."""

    top_k: int = 5
    views: SegViews = field(default_factory=SegViews)
    probabilities: bool = True
    images: bool = False
    class_map: str = "image"
    max_map_pixels: int = 0  # width x height

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.class_map not in ("image", "model"):
            raise ValueError(f"class_map must be image or model, got {self.class_map!r}")
        if self.max_map_pixels < 0:
            raise ValueError(f"max_map_pixels must be >= 0 (0: no cap), got {self.max_map_pixels}")
