"""The reference numbers of tests/test_cityscapes_metrics.py, from cityscapesScripts' own evaluator.

Run outside deepres' environment (cityscapesscripts is no dependency of deepres):

    python3 -m venv /tmp/csvenv && /tmp/csvenv/bin/pip install cityscapesscripts==2.3.0 "numpy<2"
    .venv/bin/python tests/test_cityscapes_metrics.py /tmp/cs_fixture     # writes the fixture (dataset + predictions)
    /tmp/csvenv/bin/python tests/data/cityscapes_reference/reference.py /tmp/cs_fixture

It evaluates the label-id predictions (PRED/label_ids) and the train-id ones mapped back to label ids with 255 ->
0 (PRED/train_ids, what `deepres score --pred-ids train` reads: 255 names no class) against gtFine/val with
evalPixelLevelSemanticLabeling.evaluateImgLists, quietly, and prints the four means in % (9 decimals), which the
test stores as CITYSCAPESSCRIPTS_*. (numpy < 2: the evaluator calls np.in1d, which numpy 2.4 removed; the numbers
were produced with numpy 1.26.4, Pillow 13.0.0, without the Cython confusion-matrix extension.)
"""
import glob
import os
import sys
import tempfile

import numpy as np
from PIL import Image

from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs
from cityscapesscripts.helpers.labels import trainId2label


def evaluate(root, predictions):
    gts = sorted(glob.glob(os.path.join(root, "gtFine", "val", "*", "*_gtFine_labelIds.png")))
    cs.args.predictionPath, cs.args.predictionWalk = predictions, None
    preds = [cs.getPrediction(cs.args, gt) for gt in gts]
    cs.args.quiet, cs.args.JSONOutput = True, False
    result = cs.evaluateImgLists(preds, gts, cs.args)
    return {key: 100 * result[key] for key in ("averageScoreClasses", "averageScoreInstClasses",
                                                "averageScoreCategories", "averageScoreInstCategories")}


def main(root):
    label_ids = os.path.join(root, "predictions", "label_ids")
    print("label ids:", {k: f"{v:.9f}" for k, v in evaluate(root, label_ids).items()})
    with tempfile.TemporaryDirectory() as mapped:
        to_label = np.zeros(256, np.uint8)  # 255 (no class) -> 0 (unlabeled: no evaluated class, like theirs)
        for train_id in range(19):
            to_label[train_id] = trainId2label[train_id].id
        for path in glob.glob(os.path.join(root, "predictions", "train_ids", "*.png")):
            Image.fromarray(to_label[np.array(Image.open(path))]).save(os.path.join(mapped, os.path.basename(path)))
        print("train ids:", {k: f"{v:.9f}" for k, v in evaluate(root, mapped).items()})


if __name__ == "__main__":
    main(sys.argv[1])
