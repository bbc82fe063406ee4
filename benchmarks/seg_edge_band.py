"""Edge bias of a segmentation model on Fashion-MNIST scenes: of the ground-truth background pixels in the 3-pixel
band along each side of the test scenes, the share the model labels as some garment. A model trained on crops
padded at the bottom and right only (ignored pixels there) learned a band of "Ankle boot" along those two edges;
crops padded on every side should leave all four rows alike.

    python benchmarks/seg_edge_band.py runs/fashion_mnist_scenes-fcn_resnet20 data/fashion_mnist_scenes
    python benchmarks/seg_edge_band.py RUN_OR_CHECKPOINT SCENES --scenes 2000 --band 2 --precision bf16

MODEL is anything deepres predict takes as --model: a run directory, a deepres checkpoint, a recipe or model name
(random weights). The model runs through deepres's Predictor (its preprocessing, the whole image, one view); the
first --scenes test scenes (sorted names) are scored. Prints a markdown table, one row per side.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.inference.api import init_model  # noqa: E402
from deepres.inference.plan import PRECISIONS  # noqa: E402
from deepres.data.scenes import read_scenes_version  # noqa: E402

BACKGROUND = 0  # mask value of the scenes' background (deepres.data.scenes.SCENE_CLASSES[0])


def band_masks(height: int, width: int, band: int) -> dict[str, np.ndarray]:
    """Boolean (height, width) masks of the `band` outermost rows/columns, one per side, in report order."""
    sides = {}
    for side, rows, cols in (("bottom", slice(height - band, None), slice(None)), ("right", slice(None), slice(
            width - band, None)), ("top", slice(0, band), slice(None)), ("left", slice(None), slice(0, band))):
        where = np.zeros((height, width), bool)
        where[rows, cols] = True
        sides[side] = where
    return sides


def edge_band(predictor, scenes: Path, count: int, band: int = 3) -> tuple[list[dict], int]:
    """(rows, scenes scored): per side, the ground truth's background pixels in the band, how many of them the model
    calls a garment, and the garment class it names most there."""
    if count < 1 or band < 1:
        raise ValueError(f"--scenes and --band must be >= 1, got {count} and {band}")
    images = sorted((scenes / "test" / "images").glob("*.png"))[:count]
    if not images:
        raise FileNotFoundError(f"no test scenes in {scenes / 'test' / 'images'} (deepres data make "
                                f"fashion-mnist-scenes {scenes})")
    num_classes = len(predictor.class_names)
    rows = {}
    for result in predictor.iter_segmentations(images, probabilities=False):
        path = Path(result["path"])
        truth = np.asarray(Image.open(scenes / "test" / "masks" / path.name))
        predicted = np.asarray(result["class_map"])
        for side, where in band_masks(*truth.shape, band).items():
            background = where & (truth == BACKGROUND)
            wrong = predicted[background]
            row = rows.setdefault(side, {"side": side, "background": 0, "wrong": 0,
                                         "classes": np.zeros(num_classes, np.int64)})
            row["background"] += int(background.sum())
            row["wrong"] += int((wrong != BACKGROUND).sum())
            row["classes"] += np.bincount(wrong, minlength=num_classes)[:num_classes]
    for row in rows.values():
        classes = row.pop("classes")
        classes[BACKGROUND] = 0
        top = int(classes.argmax())
        row["share"] = row["wrong"] / max(row["background"], 1)
        row["top_class"] = predictor.class_names[top] if classes[top] else "-"
        row["top_share"] = classes[top] / max(row["background"], 1)
    return list(rows.values()), len(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="run directory, deepres checkpoint, recipe or model name")
    parser.add_argument("scenes", type=Path, help="a fashion-mnist-scenes folder (its test split is read)")
    parser.add_argument("--scenes", dest="count", type=int, default=500, help="test scenes to score (default 500)")
    parser.add_argument("--band", type=int, default=3, help="band width, pixels (default 3)")
    parser.add_argument("--precision", choices=PRECISIONS, default="eager",
                        help="the Predictor's path (default eager: the fp32 model as it is)")
    args = parser.parse_args(argv)
    predictor = init_model(args.model, precision=args.precision)
    rows, scored = edge_band(predictor, args.scenes, args.count, args.band)
    print(f"model: {args.model}; scenes: {args.scenes} (version {read_scenes_version(args.scenes)}), {scored} test "
          f"scenes; band: {args.band} px")
    print("| side | background px | predicted non-background | share | most predicted class (share) |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['side']} | {row['background']} | {row['wrong']} | {100 * row['share']:.2f}% | "
              f"{row['top_class']} ({100 * row['top_share']:.2f}%) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
