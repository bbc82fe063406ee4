"""Learning-rate schedules at their boundary steps."""
import math

import pytest

from deepres.core.config import ScheduleConfig
from deepres.train.schedules import lr_at


def test_cifar_paper_multistep_boundaries():
    cfg = ScheduleConfig(name="multistep", unit="iter", milestones=[32000, 48000], gamma=0.1)
    lr = lambda s: lr_at(s, cfg, 0.1, iters_per_epoch=391, total_iters=64000)
    assert lr(0) == 0.1 and lr(31999) == 0.1
    assert lr(32000) == pytest.approx(0.01) and lr(47999) == pytest.approx(0.01)
    assert lr(48000) == pytest.approx(0.001) and lr(63999) == pytest.approx(0.001)


def test_resnet110_warm_start_then_base_lr():
    cfg = ScheduleConfig(name="multistep", milestones=[32000, 48000], warm_start_lr=0.01, warm_start_iters=400)
    lr = lambda s: lr_at(s, cfg, 0.1, 391, 64000)
    assert lr(0) == 0.01 and lr(399) == 0.01
    assert lr(400) == 0.1 and lr(31999) == 0.1 and lr(32000) == pytest.approx(0.01)


def test_imagenet_epoch_milestones_change_only_at_epoch_boundaries():
    cfg = ScheduleConfig(name="multistep", unit="epoch", milestones=[30, 60, 80])
    ipe = 5005  # 1281167 images / 256
    lr = lambda s: lr_at(s, cfg, 0.1, ipe, 90 * ipe)
    assert lr(30 * ipe - 1) == 0.1 and lr(30 * ipe) == pytest.approx(0.01)
    assert lr(60 * ipe - 1) == pytest.approx(0.01) and lr(60 * ipe) == pytest.approx(0.001)
    assert lr(80 * ipe) == pytest.approx(1e-4) and lr(90 * ipe - 1) == pytest.approx(1e-4)


def test_step_schedule_every_step_size():
    cfg = ScheduleConfig(name="step", unit="epoch", step_size=2, gamma=0.5)
    assert [lr_at(e * 10, cfg, 1.0, 10, 100) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_linear_warmup_endpoints():
    cfg = ScheduleConfig(name="constant", warmup_iters=100, warmup_start_factor=0.1)
    assert lr_at(0, cfg, 0.4, 10, 1000) == pytest.approx(0.04)
    assert lr_at(50, cfg, 0.4, 10, 1000) == pytest.approx(0.22)
    assert lr_at(100, cfg, 0.4, 10, 1000) == 0.4 and lr_at(99, cfg, 0.4, 10, 1000) < 0.4


def test_cosine_endpoints_and_midpoint_after_warmup():
    cfg = ScheduleConfig(name="cosine", warmup_iters=100, warmup_start_factor=0.0, min_lr=0.001)
    lr = lambda s: lr_at(s, cfg, 0.1, 10, 1100)
    assert lr(0) == 0.0 and lr(100) == pytest.approx(0.1)
    assert lr(600) == pytest.approx(0.001 + 0.099 * 0.5)
    assert lr(1100) == pytest.approx(0.001) and lr(1099) > 0.001
    assert all(lr(s) >= lr(s + 1) for s in range(100, 1100))


def test_linear_decay_and_constant():
    cfg = ScheduleConfig(name="linear", min_lr=0.0)
    assert [lr_at(s, cfg, 1.0, 10, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_at(12345, ScheduleConfig(name="constant"), 0.3, 10, 100) == 0.3
    assert math.isclose(lr_at(0, ScheduleConfig(name="multistep", milestones=[]), 0.3, 10, 100), 0.3)
