"""Optimizer groups, mixup/cutmix, losses, EMA and BatchNorm momentum."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepres.models.bn import reset_bn_running_stats, set_bn_momentum
from deepres.core.config import Config, OptimConfig, TrainConfig
from deepres.core.config import DataConfig
from deepres.core.preprocess import Preprocess
from deepres.tasks import get_task, task_of
from deepres.train.ema import ModelEMA
from deepres.tasks.classification import classification_loss, cutmix_box, mixup_cutmix, soft_target_cross_entropy
from deepres.train.optim import create_optimizer


def small_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamw"])
def test_every_optimizer_builds_and_steps(name):
    torch.manual_seed(0)
    model = small_net()
    opt = create_optimizer(model, OptimConfig(name=name, lr=0.01, nesterov=False))
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(torch.randn(2, 1, 6, 6)), torch.tensor([0, 1])).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_bn_and_bias_excluded_from_weight_decay():
    model = small_net()
    opt = create_optimizer(model, OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4, wd_exclude_bn_bias=True,
                                              nesterov=True))
    decay, no_decay = opt.param_groups
    ids = lambda ps: {id(p) for p in ps}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == {id(model[0].weight), id(model[4].weight)}
    assert ids(no_decay["params"]) == {id(model[1].weight), id(model[1].bias), id(model[4].bias)}
    assert opt.defaults["nesterov"] is True
    one = create_optimizer(model, OptimConfig(weight_decay=5e-4))
    assert len(one.param_groups) == 1 and len(one.param_groups[0]["params"]) == 5


def test_mixup_mixes_images_and_labels_with_the_same_lambda():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets, lam, mode = mixup_cutmix(images, labels, num_classes=4, mixup_alpha=0.4,
                                             rng=np.random.default_rng(0))
    assert mode == "mixup" and 0 < lam < 1
    assert torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[3])
    assert torch.allclose(targets[0], torch.tensor([lam, 0, 0, 1 - lam]))
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_cutmix_lambda_is_the_kept_area_after_clipping():
    images = torch.zeros(2, 1, 10, 10)
    images[1] = 1.0
    labels = torch.tensor([0, 1])
    for seed in range(20):
        mixed, targets, lam, mode = mixup_cutmix(images, labels, num_classes=2, cutmix_alpha=1.0,
                                                 rng=np.random.default_rng(seed))
        assert mode == "cutmix"
        pasted = mixed[0].mean().item()  # image 0 is zeros, its partner ones: the pasted share of pixels
        assert lam == pytest.approx(1 - pasted) and targets[0].tolist() == pytest.approx([lam, 1 - lam])


def test_cutmix_box_is_clipped_at_the_border():
    class CornerRng:  # box centre at (0, 0): three quarters of the box fall outside the image
        def integers(self, high):
            return 0

    y0, y1, x0, x1 = cutmix_box(10, 10, lam=0.36, rng=CornerRng())  # uncut box would be 8x8 = 64% area
    assert (y0, y1, x0, x1) == (0, 4, 0, 4)  # only 16% is pasted, so the corrected lambda is 0.84


def test_mix_prob_zero_and_no_alpha_leave_the_batch_alone():
    images, labels = torch.randn(4, 1, 3, 3), torch.tensor([0, 1, 0, 1])
    for kwargs in ({"mixup_alpha": 1.0, "mix_prob": 0.0}, {}):
        out, targets, lam, mode = mixup_cutmix(images, labels, num_classes=2, rng=np.random.default_rng(0),
                                               **kwargs)
        assert mode == "none" and out is images and targets is labels and lam == 1.0


def test_losses_with_hard_soft_and_smoothed_targets():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    soft = F.one_hot(labels, 4).float()
    assert classification_loss(logits, labels) == pytest.approx(soft_target_cross_entropy(logits, soft).item(),
                                                               rel=1e-6)
    smoothed = soft * 0.9 + 0.1 / 4
    assert classification_loss(logits, labels, label_smoothing=0.1).item() == pytest.approx(
        soft_target_cross_entropy(logits, smoothed).item(), rel=1e-6)
    assert classification_loss(logits, soft, label_smoothing=0.1).item() == pytest.approx(
        soft_target_cross_entropy(logits, smoothed).item(), rel=1e-6)
    bce = classification_loss(logits, labels, kind="bce")
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, soft).item())
    assert classification_loss(logits.bfloat16(), labels).dtype == torch.float32


def test_the_classification_task_row_mixes_and_scores_as_its_functions_do():
    cfg = Config(train=TrainConfig(mixup_alpha=0.4, label_smoothing=0.1, loss="bce"))
    cfg.model.num_classes = 4
    task = get_task("classification").from_config(cfg)
    images, labels = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 3])
    mixed, targets = task.mix(images, labels, np.random.default_rng(0))
    expected, soft, _, _ = mixup_cutmix(images, labels, num_classes=4, mixup_alpha=0.4, rng=np.random.default_rng(0))
    assert torch.equal(mixed, expected) and torch.equal(targets, soft)
    logits = torch.randn(4, 4)
    assert torch.equal(task.loss(logits, targets), classification_loss(logits, soft, kind="bce", label_smoothing=0.1))
    assert task.record({"top1": 75.0, "top5": 100.0}) == {"test_error": 25.0, "top1": 75.0, "top5": 100.0}
    with pytest.raises(ValueError, match="unknown task .detection.*classification, segmentation"):
        get_task("detection")
    # the task of a run comes from its dataset format; it also gives the inference transform
    data = DataConfig(name="fashion_mnist", mean=(0.286,), std=(0.353,))
    assert task_of(data) is type(task)
    assert task_of(data).eval_transform(data, 1) == Preprocess(resize=28, crop_size=28, mean=(0.286,),
                                                              std=(0.353,), in_chans=1)


def test_ema_tracks_weights_and_buffers():
    model = small_net()
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 1, 6, 6))  # moves BN running stats and num_batches_tracked
    ema.update(model)
    now, live = ema.state_dict(), model.state_dict()
    for k in now:
        if now[k].is_floating_point():
            assert torch.allclose(now[k], 0.9 * start[k] + 0.1 * live[k]), k
        else:
            assert torch.equal(now[k], live[k]), k
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    compiled = torch.compile(model, backend="eager")  # the EMA holds the bare model, never the wrapper
    assert type(ModelEMA(compiled, 0.5).module) is nn.Sequential


def _reference_ema_update(ema_state: dict, model_state: dict, decay: float) -> None:
    """The EMA step as first written: lerp over the float entries of fresh state_dicts, copy the others."""
    floats = [k for k, v in ema_state.items() if v.is_floating_point()]
    torch._foreach_lerp_([ema_state[k] for k in floats], [model_state[k] for k in floats], 1.0 - decay)
    for k, v in ema_state.items():
        if not v.is_floating_point():
            v.copy_(model_state[k])


def test_ema_update_is_bit_identical_to_the_state_dict_formula_also_after_load_and_under_a_wrapper():
    torch.manual_seed(0)
    model = small_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEMA(model, decay=0.999)
    reference = {k: v.clone() for k, v in ema.state_dict().items()}
    wrapped = torch.compile(model, backend="eager")  # update unwraps it to the same bare model

    def step(target):
        model.train()
        optimizer.zero_grad()
        model(torch.randn(8, 1, 6, 6)).square().mean().backward()
        optimizer.step()
        ema.update(target)
        with torch.no_grad():
            _reference_ema_update(reference, model.state_dict(), ema.decay)
        for k, v in ema.state_dict().items():
            assert torch.equal(v, reference[k]), k

    for target in (model, wrapped, model):
        step(target)
    # resume: load_state_dict copies in place, so later updates still reach the module's own tensors
    saved = {k: v.clone() for k, v in ema.state_dict().items()}
    step(model)
    ema.load_state_dict(saved)
    reference = {k: v.clone() for k, v in saved.items()}
    step(wrapped)
    step(model)
    # a fresh EMA loaded from the checkpointed state (a resumed run) takes the same next step
    again = ModelEMA(small_net(), decay=0.999)
    again.load_state_dict(ema.state_dict())
    step(model)
    again.update(model)
    for k, v in again.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert int(reference["1.num_batches_tracked"]) == int(model.state_dict()["1.num_batches_tracked"]) > 0


def test_ema_follows_a_model_cast_after_its_first_update():
    """.to()/.double() replace a model's buffers: the EMA must update from the new ones, not the old."""
    torch.manual_seed(0)
    model = small_net()
    ema = ModelEMA(model, decay=0.5)
    ema.update(model)
    model.double()
    ema.module.double()
    model.train()(torch.randn(8, 1, 6, 6, dtype=torch.float64))  # moves the new buffers only
    ema.update(model)
    live = model.state_dict()
    assert int(ema.state_dict()["1.num_batches_tracked"]) == int(live["1.num_batches_tracked"]) == 1
    assert not torch.equal(ema.state_dict()["1.running_mean"], torch.zeros_like(live["1.running_mean"]))


def test_dynamic_bn_momentum_is_the_cumulative_average_of_batch_stats():
    bn = nn.BatchNorm2d(3)
    set_bn_momentum(bn, "dynamic")
    assert bn.momentum is None
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(3)]
    reset_bn_running_stats(bn)
    bn.train()
    for x in batches:
        bn(x)
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches])
    variances = torch.stack([x.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for x in batches])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-4)
    assert int(bn.num_batches_tracked) == 3
    reset_bn_running_stats(bn)  # a new epoch forgets the previous one
    bn(batches[2])
    assert torch.allclose(bn.running_mean, means[2], atol=1e-5)
    set_bn_momentum(bn, 0.01)
    assert bn.momentum == 0.01
