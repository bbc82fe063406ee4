"""Assemble-ResNet's training pieces in the classification task: per-sample mixup and knowledge distillation
(online: a frozen teacher run on every mixed batch), against hand computations and through a tiny fit."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_fakes import TINY_MODEL, tiny_loaders

from deepres.core.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig, validate_config
from deepres.tasks.classification import ClassificationTask, distillation_loss, mixup_cutmix
from deepres.train.loop import fit


def test_per_sample_mixup_draws_one_lambda_per_image():
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, targets, lam, mode = mixup_cutmix(images, labels, num_classes=3, mixup_alpha=0.2, per_sample=True,
                                             rng=np.random.default_rng(0))
    rng = np.random.default_rng(0)
    rng.random()  # mix_prob draw
    lams = torch.tensor(rng.beta(0.2, 0.2, size=6), dtype=torch.float32)
    expected = images * lams.view(6, 1, 1, 1) + images.flip(0) * (1 - lams.view(6, 1, 1, 1))
    assert mode == "mixup" and torch.allclose(mixed, expected)
    assert len(set(lams.tolist())) == 6 and lam == pytest.approx(float(lams.mean()))
    assert torch.allclose(targets.sum(1), torch.ones(6))
    onehot = F.one_hot(labels, 3).float()
    assert torch.allclose(targets, onehot * lams[:, None] + onehot.flip(0) * (1 - lams[:, None]))


def test_distillation_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0]])
    t = 2.0
    p = torch.exp(teacher / t) / torch.exp(teacher / t).sum()
    log_q = student / t - torch.log(torch.exp(student / t).sum())
    expected = -(p * log_q).sum() * t * t
    assert torch.isclose(distillation_loss(student, teacher, t), expected)


def test_task_with_a_teacher_mixes_its_logits_into_the_loss():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    train = TrainConfig(label_smoothing=0.1, kd_temperature=2.0, kd_weight=0.5, kd_ce_weight=0.8)
    task = ClassificationTask(3, train, Config().eval, teacher=teacher)
    images, labels = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    mixed, (targets, teacher_logits) = task.mix(images, labels, np.random.default_rng(0))
    assert torch.equal(mixed, images) and torch.equal(targets, labels)  # no mixing asked
    assert torch.allclose(teacher_logits, teacher(images))
    logits = torch.randn(5, 3)
    expected = (0.8 * F.cross_entropy(logits, labels, label_smoothing=0.1)
                + 0.5 * distillation_loss(logits, teacher_logits, 2.0))
    assert torch.isclose(task.loss(logits, (targets, teacher_logits)), expected)


def test_fit_distills_from_a_teacher_checkpoint(tmp_path):
    base = dict(model=ModelConfig(name=TINY_MODEL), data=DataConfig(name="synthetic", batch_size=16))
    teacher = Config(**base, train=TrainConfig(epochs=1, progress=False), run=RunConfig(out_dir=str(tmp_path),
                                                                                       name="teacher"))
    fit(teacher, loaders=tiny_loaders(), device="cpu", log=lambda _: None)
    student = Config(**base, train=TrainConfig(epochs=1, progress=False, kd_teacher=str(tmp_path / "teacher"),
                                               kd_temperature=4.0, mixup_alpha=0.2, mixup_per_sample=True),
                     run=RunConfig(out_dir=str(tmp_path), name="student"))
    lines = []
    result = fit(student, loaders=tiny_loaders(), device="cpu", log=lines.append)
    assert result["finished"] and 0 <= result["top1"] <= 100
    bad = Config(**base, train=TrainConfig(kd_temperature=0.0))
    with pytest.raises(ValueError, match="kd_temperature"):
        validate_config(bad)
