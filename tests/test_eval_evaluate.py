"""evaluate(): accuracies, loss, per-class accuracy and confusion against hand-computed values."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepres.eval import evaluate
from deepres.tasks.evaluate import make_views


class FixedLogits(nn.Module):
    """Returns row i of `table` for an image whose pixels all equal i (so outputs are known in advance)."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))

    def forward(self, x):
        index = x[:, 0, 0, 0].round().long()
        return self.table[index]


def batches(labels, batch_size, size=4):
    """Images whose pixel value is their index into the logit table."""
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    labels = torch.as_tensor(labels)
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, n, batch_size)]


# 6 classes, 5 images. Ranking of each row (best first) written next to it.
TABLE = [
    [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # 0 1 2 3 4 5
    [0.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # 1 2 3 4 5 0
    [1.0, 0.0, 5.0, 4.0, 3.0, 2.0],  # 2 3 4 5 0 1
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # 5 4 3 2 1 0
    [9.0, 0.0, 0.0, 0.1, 0.2, 0.3],  # 0 5 4 3 ...
]
LABELS = [0, 2, 3, 0, 0]
# image 0: top1 hit. image 1 (label 2): rank 2 -> top5 hit. image 2 (label 3): rank 2 -> top5 hit.
# image 3 (label 0): rank 6 -> miss. image 4 (label 0): top1 hit.


def test_top1_top5_loss_per_class_confusion():
    model = FixedLogits(TABLE)
    result = evaluate(model, batches(LABELS, batch_size=2), num_classes=6)
    assert result["n"] == 5
    assert result["top1"] == pytest.approx(100 * 2 / 5)
    assert result["top5"] == pytest.approx(100 * 4 / 5)
    assert result["top5_k"] == 5
    expected_loss = F.cross_entropy(torch.tensor(TABLE), torch.tensor(LABELS)).item()
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
    expected = torch.zeros(6, 6, dtype=torch.int64)
    for true, pred in zip(LABELS, [0, 1, 2, 5, 0]):
        expected[true, pred] += 1
    assert result["confusion"].dtype == torch.int64
    assert torch.equal(result["confusion"], expected)
    per_class = result["per_class"]
    assert per_class[0] == pytest.approx(100 * 2 / 3)
    assert per_class[2] == 0.0 and per_class[3] == 0.0
    assert all(math.isnan(per_class[c]) for c in (1, 4, 5))
    assert result["class_names"] == ["0", "1", "2", "3", "4", "5"]


def test_top5_with_fewer_than_five_classes_is_top_all():
    table = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [0.0, 5.0, 1.0]]
    labels = [2, 2, 0]  # top1: miss, hit, miss; top-3 always hits
    result = evaluate(FixedLogits(table), batches(labels, 3), num_classes=3, class_names=["a", "b", "c"])
    assert result["top5_k"] == 3
    assert result["top1"] == pytest.approx(100 / 3)
    assert result["top5"] == pytest.approx(100.0)
    assert result["class_names"] == ["a", "b", "c"]


def test_max_batches_limits_images():
    result = evaluate(FixedLogits(TABLE), batches(LABELS, batch_size=2), num_classes=6, max_batches=1)
    assert result["n"] == 2
    assert result["top1"] == pytest.approx(50.0)


class ViewTableModel(nn.Module):
    """Logits chosen by the input's size and orientation (is the left edge brighter than the right?)."""

    LOGITS = {  # (height, left edge brighter) -> logits for 3 classes
        (8, True): [2.0, 0.0, 0.0],
        (8, False): [0.0, 2.0, 0.0],
        (16, True): [0.0, 0.0, 10.0],
        (16, False): [0.0, 1.0, 0.0],
    }

    def forward(self, x):
        left_brighter = (x[:, 0, 0, 0] > x[:, 0, 0, -1]).tolist()
        return torch.tensor([self.LOGITS[(x.shape[-2], b)] for b in left_brighter])


def test_multiscale_flip_averages_softmax_probabilities():
    images = torch.zeros(2, 3, 8, 8)
    images[..., :4] = 1.0  # left half bright; a flip makes the right half bright
    labels = torch.tensor([1, 2])
    result = evaluate(ViewTableModel(), [(images, labels)], num_classes=3, scales=(8, 16), flip=True)

    # By hand: mean of the four views' softmax probabilities.
    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    views = [softmax(row) for row in ViewTableModel.LOGITS.values()]
    mean = [sum(p[c] for p in views) / 4 for c in range(3)]
    assert max(range(3), key=mean.__getitem__) == 1  # averaging logits would pick class 2 instead
    assert result["top1"] == pytest.approx(50.0)
    assert result["loss"] == pytest.approx((-math.log(mean[1]) - math.log(mean[2])) / 2, rel=1e-6)
    assert result["confusion"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 0]]

    single = evaluate(ViewTableModel(), [(images, labels)], num_classes=3)  # the (8, True) view alone
    assert single["confusion"].tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 0]]
    large_only = evaluate(ViewTableModel(), [(images, labels)], num_classes=3, scales=(16,), flip=True)
    assert large_only["confusion"][:, 2].tolist() == [0, 1, 1]


def test_views_native_size_is_unresized_and_flip_mirrors():
    images = torch.rand(2, 3, 6, 6)
    views = make_views(images, scales=(6, 9), flip=True)
    assert len(views) == 4
    assert views[0] is images
    assert torch.equal(views[1], images.flip(-1))
    assert views[2].shape == (2, 3, 9, 9)
    assert torch.equal(views[3], views[2].flip(-1))
    assert make_views(images) == [images]


def test_mode_restored_per_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    model.train()
    model[1].eval()  # a deliberately frozen BN stays frozen
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    data = [(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))]
    evaluate(model, data, num_classes=3)
    assert seen == [False]
    assert model.training and model[0].training and not model[1].training
    model.eval()
    evaluate(model, data, num_classes=3)
    assert not any(m.training for m in model.modules())


def test_mode_restored_when_model_fails():
    model = FixedLogits(TABLE).train()
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        evaluate(model, batches(LABELS, 2), num_classes=3)  # model gives 6 logits
    assert model.training


def test_eval_mode_helper_restores_each_flag_also_on_error():
    from deepres.models.base import eval_mode

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    model[1].eval()
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training and model[0].training and not model[1].training


def test_amp_dtype_runs_under_autocast():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    dtypes = []
    model[1].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    data = [(torch.rand(5, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1]))]
    result = evaluate(model, data, num_classes=3, amp_dtype=torch.bfloat16)
    assert dtypes == [torch.bfloat16]
    assert math.isfinite(result["loss"]) and result["n"] == 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=1), "num_classes"),
    (dict(num_classes=6, scales=(0,)), "scales"),
    (dict(num_classes=6, class_names=["a"]), "class_names"),
    (dict(num_classes=6, max_batches=-1), "max_batches"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate(FixedLogits(TABLE), batches(LABELS, 2), **kwargs)


def test_labels_out_of_range_and_empty_loader():
    with pytest.raises(ValueError, match="labels outside"):
        evaluate(FixedLogits(TABLE), batches([0, 1, 6, 0, 0], 2), num_classes=6)
    with pytest.raises(ValueError, match="no images"):
        evaluate(FixedLogits(TABLE), [], num_classes=6)


class DroppingLoader(list):
    """Batches from a loader that dropped `skipped` bad images (as the eval Loader reports after a pass)."""
    skipped = 3


def test_skipped_images_are_reported_not_counted():
    from deepres.core.config import EvalConfig, TrainConfig
    from deepres.tasks.classification import ClassificationTask

    model = FixedLogits([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [0, 0, 9.0]])
    loader = DroppingLoader(batches([0, 1, 2, 2], batch_size=3))
    result = evaluate(model, loader, num_classes=3)
    assert result["n"] == 4 and result["skipped"] == 3 and result["top1"] == 100.0
    assert evaluate(model, batches([0, 1], batch_size=2), num_classes=3)["skipped"] == 0  # any iterable
    metrics = ClassificationTask(3, TrainConfig(), EvalConfig()).evaluate(model, loader)
    assert metrics["test_skipped"] == 3
