"""Segmentation metrics from one confusion matrix (mmseg / Cityscapes / ADE20K definition), against hand-computed
values with ignored pixels, a class absent from everything and a class only ever predicted."""
import math

import pytest
import torch

from deepres.tasks.segmentation import ConfusionMatrix


def scored(batches, num_classes=4):
    matrix = ConfusionMatrix(num_classes)
    for prediction, target in batches:
        matrix.update(torch.tensor(prediction), torch.tensor(target))
    return matrix


# 6 scored pixels, 2 ignored: (target, prediction) = (0,0) (0,1) (1,1) (2,2) (2,0) (0,0)
BATCH_1 = ([[[0, 1, 1, 2], [2, 0, 0, 1]]], [[[0, 0, 1, 255], [2, 2, 0, 255]]])
BATCH_2 = ([[[3]]], [[[1]]])  # class 3 predicted where the ground truth is 1; class 3 never in the ground truth


def test_confusion_matrix_counts_and_scores_by_hand():
    matrix = scored([BATCH_1, BATCH_2])
    assert matrix.counts.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = matrix.scores()
    # IoU = TP / (labelled + predicted - TP): 2/(3+3-2), 1/(2+2-1), 1/(2+1-1), 0/(0+1-0)
    assert s["per_class_iou"] == pytest.approx([50.0, 100 / 3, 50.0, 0.0])
    assert s["miou"] == pytest.approx((50 + 100 / 3 + 50 + 0) / 4)
    assert s["pixel_acc"] == pytest.approx(100 * 4 / 7) and s["pixels"] == 7  # the 2 ignored pixels count nowhere
    # accuracy over ground-truth pixels: class 3 has none, so it is left out of the mean
    assert s["per_class_acc"][:3] == pytest.approx([200 / 3, 50.0, 50.0]) and math.isnan(s["per_class_acc"][3])
    assert s["mean_acc"] == pytest.approx((200 / 3 + 50 + 50) / 3)


def test_a_class_absent_from_prediction_and_ground_truth_is_left_out_of_the_mean():
    s = scored([BATCH_1]).scores()
    assert s["per_class_iou"][:3] == pytest.approx([50.0, 50.0, 50.0]) and math.isnan(s["per_class_iou"][3])
    assert s["miou"] == pytest.approx(50.0) and s["pixel_acc"] == pytest.approx(100 * 4 / 6)


def test_logits_batches_and_shards_add_up_to_one_pass():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 5, 6, 7), torch.randint(0, 5, (4, 6, 7))
    target[0, :2] = 255
    whole = ConfusionMatrix(5)
    whole.update(logits, target)  # scores: the argmax is taken
    shards = [ConfusionMatrix(5) for _ in range(2)]
    for i, shard in enumerate(shards):  # two "ranks", each its own images; all_reduce sums what they counted
        shard.update(logits[i::2].argmax(1), target[i::2])
    assert torch.equal(shards[0].counts + shards[1].counts, whole.counts)
    assert whole.scores()["pixels"] == 4 * 6 * 7 - 14


def test_bad_targets_and_shapes_are_errors():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [255, 1]]]))
    with pytest.raises(ValueError, match="1 target pixels are outside \\[0, 2\\] and not 255"):
        matrix.scores()
    with pytest.raises(ValueError, match="differ in shape"):
        matrix.update(torch.zeros(1, 2, 2), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(1)
