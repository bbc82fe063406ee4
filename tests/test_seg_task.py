"""The segmentation task row: losses, test-time modes (whole, sliding window, multi-scale + flip, shift-and-stitch),
whole-dataset scoring, and the training pieces it brought (poly schedule, per-group lr, frozen BN)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepres.core.config import Config, EvalConfig, OptimConfig, ScheduleConfig, TrainConfig, validate_config
from deepres.models.bn import freeze_bn_stats
from deepres.tasks import TASKS, get_task
from deepres.tasks.segmentation import (IGNORE_INDEX, SegmentationTask, SegViews, bootstrapped_cross_entropy,
                                        evaluate_segmentation, segment, segmentation_loss)
from deepres.train.optim import create_optimizer
from deepres.train.schedules import lr_at


class Pointwise(nn.Module):
    """A 1x1 conv: every pixel's logits depend on that pixel only, so any tiling or shift gives the same map."""

    def __init__(self, num_classes=3, kernel=1):
        super().__init__()
        self.num_classes, self.output_stride = num_classes, 8
        self.conv = nn.Conv2d(3, num_classes, kernel, padding=kernel // 2)

    def forward(self, x):
        return self.conv(x)


def test_segmentation_is_a_task_row():
    assert TASKS["segmentation"] is SegmentationTask and get_task("segmentation").best_metric == "miou"


def test_bootstrapped_loss_keeps_hard_pixels_and_at_least_min_kept():
    # 4 pixels, 2 classes; p(target) of each pixel from the logit gap
    gaps = torch.tensor([3.0, 0.0, -1.0, 2.0])  # logit(target) - logit(other)
    logits = torch.stack([gaps, torch.zeros(4)]).view(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    nll = F.softplus(-gaps)  # -log sigmoid(gap)
    p = torch.sigmoid(gaps)
    hard = p <= 0.6  # pixels 1 (p=0.5) and 2 (p=0.27)
    got = bootstrapped_cross_entropy(logits, target, threshold=0.6, min_kept=1)
    assert torch.isclose(got, nll[hard].mean())
    # min_kept larger than the hard set: the 3 hardest
    got = bootstrapped_cross_entropy(logits, target, threshold=0.6, min_kept=3)
    assert torch.isclose(got, nll.sort(descending=True).values[:3].mean())
    # ignored pixels never count
    target[0, 1, 0] = IGNORE_INDEX  # pixel 2 (the hardest)
    got = bootstrapped_cross_entropy(logits, target, threshold=0.6, min_kept=1)
    assert torch.isclose(got, nll[1])


def test_loss_adds_the_weighted_aux_loss_and_ignores_255():
    torch.manual_seed(0)
    out, aux = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5), dtype=torch.uint8)
    target[0, :2] = IGNORE_INDEX
    t = TrainConfig(aux_weight=0.4)
    expected = (F.cross_entropy(out, target.long(), ignore_index=255)
                + 0.4 * F.cross_entropy(aux, target.long(), ignore_index=255))
    assert torch.isclose(segmentation_loss({"out": out, "aux": aux}, target, t), expected)
    assert torch.isclose(segmentation_loss(out, target, t), F.cross_entropy(out, target.long(), ignore_index=255))
    with pytest.raises(ValueError, match="bce"):
        segmentation_loss(out, target, TrainConfig(loss="bce"))


def test_slide_equals_whole_when_the_window_covers_the_image_or_the_model_is_pointwise():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 13, 17)
    context = Pointwise(kernel=3).eval()
    with torch.inference_mode():
        whole = segment(context, x)
        covering = segment(context, x, mode=SegViews(mode="slide", crop=32))
        assert torch.allclose(whole, covering, atol=1e-6)
        pointwise = Pointwise().eval()
        tiled = segment(pointwise, x, mode=SegViews(mode="slide", crop=5, stride=3))
        assert torch.allclose(segment(pointwise, x), tiled, atol=1e-6)
        assert torch.allclose(whole.sum(1), torch.ones(2, 13, 17))


def test_slide_averages_overlapping_window_logits():
    from deepres.tasks.segmentation import slide_logits

    class Count(nn.Module):  # logits = 1 everywhere in the window; the window's size on channel 1
        num_classes = 2

        def forward(self, x):
            n, _, h, w = x.shape
            return torch.stack([torch.ones(n, h, w), torch.full((n, h, w), float(h * w))], 1)

    out = slide_logits(Count(), torch.zeros(1, 3, 10, 10), crop=6, stride=4, num_classes=2)
    assert torch.equal(out[:, 0], torch.ones(1, 10, 10))  # averaged, not summed, where windows overlap
    assert torch.equal(out[:, 1], torch.full((1, 10, 10), 36.0))  # every window is a full 6x6 one


def test_flip_and_scales_average_view_probabilities():
    torch.manual_seed(0)
    model = Pointwise(kernel=3).eval()
    x = torch.randn(1, 3, 8, 12)
    with torch.inference_mode():
        got = segment(model, x, mode=SegViews(flip=True, scale_ratios=(1.0, 0.5)))
        views = []
        for r in (1.0, 0.5):
            v = x if r == 1.0 else F.interpolate(x, size=(4, 6), mode="bilinear", align_corners=False)
            for flipped in (False, True):
                logits = model(v.flip(-1) if flipped else v)
                logits = logits.flip(-1) if flipped else logits
                logits = F.interpolate(logits, size=(8, 12), mode="bilinear", align_corners=False)
                views.append(logits.softmax(1))
        assert torch.allclose(got, torch.stack(views).mean(0), atol=1e-6)


def test_shift_and_stitch_realigns_its_shifted_passes():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 9, 11)
    with torch.inference_mode():
        model = Pointwise().eval()
        assert torch.allclose(segment(model, x, mode=SegViews(test_steps=2)), segment(model, x), atol=1e-6)
        context = Pointwise(kernel=3).eval()  # with context, the shifted passes differ but stay aligned
        shifted = segment(context, x, mode=SegViews(test_steps=2))
        assert shifted.shape == (1, 3, 9, 11) and not torch.allclose(shifted, segment(context, x))


class Fixed(nn.Module):
    """Predicts the class stored in channel 0 of the input (one-hot logits), whatever the size."""
    num_classes = 3

    def forward(self, x):
        return F.one_hot(x[:, 0].round().long().clamp(0, 2), 3).permute(0, 3, 1, 2).float() * 20


def test_evaluate_scores_one_matrix_over_ragged_batches_and_rescales_to_the_mask():
    pred_a = torch.tensor([[0, 1], [1, 2]])
    mask_a = torch.tensor([[0, 1], [2, 255]], dtype=torch.uint8)
    pred_b = torch.tensor([[2, 2, 2]])
    mask_b = torch.tensor([[2, 2, 0]], dtype=torch.uint8)
    image = lambda p: p.float()[None, None].expand(1, 3, *p.shape).clone()
    loader = [([image(pred_a), image(pred_b)], [mask_a[None], mask_b[None]])]
    result = evaluate_segmentation(Fixed(), loader, num_classes=3)
    # by hand: pixels (gt, pred): (0,0) (1,1) (2,1) | (2,2) (2,2) (0,2); the 255 pixel is not scored
    # IoU0 = 1/(2+1-1) = 0.5; IoU1 = 1/(1+2-1) = 0.5; IoU2 = 2/(3+3-2) = 0.5
    assert result["pixels"] == 6 and result["n"] == 2
    assert result["per_class_iou"] == pytest.approx([50.0, 50.0, 50.0])
    assert result["miou"] == pytest.approx(50.0) and result["pixel_acc"] == pytest.approx(400 / 6)
    # a batch of test-size images scored at the stored mask size (nearest class map upsampled)
    big = torch.zeros(1, 3, 4, 4)
    result = evaluate_segmentation(Fixed(), [(big, torch.zeros(1, 8, 8, dtype=torch.uint8))], num_classes=3)
    assert result["pixels"] == 64 and result["miou"] == 100.0


def test_task_rejects_label_mixing_and_reports_miou():
    cfg = Config()
    cfg.model.num_classes = 3
    task = SegmentationTask.from_config(cfg)
    metrics = {"miou": 60.0, "pixel_acc": 90.0, "mean_acc": 70.0, "test_loss": 0.5}
    assert task.record(metrics)["test_error"] == 40.0 and "mIoU 60.00%" in task.summary(metrics)
    cfg.train.mixup_alpha = 0.2
    with pytest.raises(ValueError, match="mixup"):
        SegmentationTask.from_config(cfg)


def test_poly_schedule():
    s = ScheduleConfig(name="poly", power=0.9, min_lr=1e-4)
    assert lr_at(0, s, 0.01, 10, 100) == pytest.approx(0.01)
    assert lr_at(50, s, 0.01, 10, 100) == pytest.approx(1e-4 + (0.01 - 1e-4) * 0.5 ** 0.9)
    assert lr_at(100, s, 0.01, 10, 100) == pytest.approx(1e-4)


def test_head_and_bias_multipliers_make_groups_the_loop_scales():
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)))
    model.add_module("classifier", nn.Conv2d(4, 2, 1, bias=True))
    cfg = OptimConfig(lr=0.1, weight_decay=1e-4, head_lr_mult=10.0, bias_lr_mult=2.0, bias_decay_mult=0.0)
    groups = {(g["lr_mult"], g["weight_decay"]): {id(p) for p in g["params"]}
              for g in create_optimizer(model, cfg).param_groups}
    bb, head = model.backbone, model.classifier
    assert groups == {(1.0, 1e-4): {id(bb[0].weight), id(bb[1].weight), id(bb[1].bias)},
                      (10.0, 1e-4): {id(head.weight)}, (20.0, 0.0): {id(head.bias)}}


def test_frozen_bn_keeps_running_statistics():
    bn = nn.BatchNorm2d(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), bn).train()
    freeze_bn_stats(model)
    model(torch.randn(4, 1, 3, 3))
    assert torch.equal(bn.running_mean, torch.zeros(2)) and not bn.training and model[0].training


def test_config_checks_segmentation_keys():
    for key, value in (("eval", EvalConfig(test_steps=0)), ("eval", EvalConfig(scale_ratios=[0.0]))):
        cfg = Config()
        setattr(cfg, key, value)
        with pytest.raises(ValueError, match="eval"):
            validate_config(cfg)
    cfg = Config()
    cfg.data.scale_range = (2.0, 0.5)
    with pytest.raises(ValueError, match="scale_range"):
        validate_config(cfg)
    assert math.isclose(Config().train.aux_weight, 0.5)
