"""The README's segmentation picture: test scenes, their ground truth and a trained model's prediction, side by side.

    .venv/bin/python docs/results/seg_predictions.py runs/fashion_mnist_scenes-fcn_resnet20 \
        data/fashion_mnist_scenes docs/results/fashion_mnist_scenes_predictions.png
"""
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from deepres.data.readers.seg_labels import palette_for, read_mask_png  # noqa: E402
from deepres.inference import init_model  # noqa: E402


def main(run: str, scenes: str, out: str, count: int = 6) -> None:
    predictor = init_model(run, precision="eager")
    names = predictor.class_names
    palette = palette_for("pairs", len(names))
    images = sorted((Path(scenes) / "test" / "images").glob("*.png"))[:count]
    fig = Figure(figsize=(2.0 * count, 6.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, count)
    for column, path in enumerate(images):
        truth = read_mask_png(Path(scenes) / "test" / "masks" / path.name)
        prediction = predictor.predict(str(path))["class_map"].numpy()
        picture = np.array(Image.open(path))
        for row, (title, shown) in enumerate((("scene", picture), ("ground truth", palette[truth]),
                                              ("prediction", palette[prediction]))):
            ax = axes[row, column]
            ax.imshow(shown, cmap="gray" if row == 0 else None, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(title)
    fig.legend(handles=[Patch(color=palette[i] / 255, label=name) for i, name in enumerate(names)],
               loc="lower center", ncol=6, fontsize=8)
    fig.suptitle(f"Fashion-MNIST scenes, test split: {Path(run).name}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
