"""The recipes that reproduce the seeds' own tables: torch-residual-networks' CIFAR-10 protocol and mmcls's CIFAR and
ImageNet ResNets. Each names a registered model, states the seed's number, and its schedule gives the seed's
learning rate at the seed's epochs."""
import pytest
import torch

from deepres.core.config import load_config
from deepres.models import create_model, list_models
from deepres.train.optim import create_optimizer, scaled_lr
from deepres.train.schedules import lr_at

# recipe: (registered model, the seed's top-1 %). torch-residual-networks README, "CIFAR: Effect of model size"
# (test error -> accuracy); mmcls ResNet page, CIFAR-10 / CIFAR-100 / ImageNet-1k tables.
SEED_NUMBERS = {
    "cifar10/resnet20_trn": ("resnet20", 100 - 8.29),
    "cifar10/resnet32_trn": ("resnet32", 100 - 7.63),
    "cifar10/resnet44_trn": ("resnet44", 100 - 7.14),
    "cifar10/resnet56_trn": ("resnet56", 100 - 6.94),
    "cifar10/resnet110_trn": ("resnet110", 100 - 6.73),
    "cifar10/resnet18_mmcls": ("cifar_resnet18", 94.82),
    "cifar10/resnet34_mmcls": ("cifar_resnet34", 95.34),
    "cifar10/resnet50_mmcls": ("cifar_resnet50", 95.55),
    "cifar10/resnet101_mmcls": ("cifar_resnet101", 95.58),
    "cifar10/resnet152_mmcls": ("cifar_resnet152", 95.76),
    "cifar100/resnet50_mmcls": ("cifar_resnet50", 79.90),
    "imagenet/resnet50_8xb32": ("resnet50", 76.55),
}

CIFAR10_STEPS_PER_EPOCH = 391  # ceil(50000 / 128)


def lr_at_epoch(cfg, epoch, iters_per_epoch, step_in_epoch=0, global_batch=None):
    step = epoch * iters_per_epoch + step_in_epoch
    base = scaled_lr(cfg.optim, global_batch or cfg.data.batch_size)
    return lr_at(step, cfg.schedule, base, iters_per_epoch, cfg.train.epochs * iters_per_epoch)


@pytest.mark.parametrize("recipe", SEED_NUMBERS)
def test_seed_recipe_names_a_registered_model_and_states_the_seeds_number(recipe):
    cfg = load_config(recipe)
    model, accuracy = SEED_NUMBERS[recipe]
    assert cfg.model.name == model and model in list_models()
    assert cfg.expect.metric == "top1" and cfg.expect.accuracy == pytest.approx(accuracy, abs=1e-9)
    assert cfg.data.val_split == ("val" if recipe.startswith("imagenet") else "test")  # what the tables report


@pytest.mark.parametrize("recipe", [r for r in SEED_NUMBERS if r.endswith("_trn")])
def test_torch_residual_networks_protocol(recipe):
    # train-cifar.lua: Nesterov SGD, lr 0.1 -> 0.01 at epoch 80 -> 0.001 at epoch 120, 200 epochs of batch 128
    cfg = load_config(recipe)
    opt = create_optimizer(torch.nn.Linear(2, 2), cfg.optim)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9 and cfg.data.batch_size == 128
    assert cfg.train.max_iters == 0 and cfg.train.epochs == 200
    lrs = {epoch: lr_at_epoch(cfg, epoch, CIFAR10_STEPS_PER_EPOCH, step_in_epoch=CIFAR10_STEPS_PER_EPOCH - 1)
           for epoch in (1, 79, 80, 119, 120, 199)}
    assert lrs == pytest.approx({1: 0.1, 79: 0.1, 80: 0.01, 119: 0.01, 120: 0.001, 199: 0.001})


def test_the_110_layer_run_starts_at_0_001_for_400_iterations():
    cfg = load_config("cifar10/resnet110_trn")
    lrs = [lr_at(step, cfg.schedule, cfg.optim.lr, CIFAR10_STEPS_PER_EPOCH, 200 * CIFAR10_STEPS_PER_EPOCH)
           for step in (0, 399, 400, 80 * CIFAR10_STEPS_PER_EPOCH)]
    assert lrs == pytest.approx([0.001, 0.001, 0.1, 0.01])
    assert load_config("cifar10/resnet56_trn").schedule.warm_start_iters == 0  # only the 110 warms up


@pytest.mark.parametrize("recipe, milestones, gamma", [
    ("cifar10/resnet18_mmcls", (100, 150), 0.1), ("cifar10/resnet152_mmcls", (100, 150), 0.1),
    ("cifar100/resnet50_mmcls", (60, 120, 160), 0.2)])
def test_mmcls_cifar_schedules(recipe, milestones, gamma):
    cfg = load_config(recipe)
    opt = create_optimizer(torch.nn.Linear(2, 2), cfg.optim)
    assert not opt.defaults["nesterov"] and cfg.train.epochs == 200 and cfg.model.zero_init_last
    for k, epoch in enumerate(milestones):
        assert lr_at_epoch(cfg, epoch - 1, CIFAR10_STEPS_PER_EPOCH, CIFAR10_STEPS_PER_EPOCH - 1) == \
            pytest.approx(0.1 * gamma**k)
        assert lr_at_epoch(cfg, epoch, CIFAR10_STEPS_PER_EPOCH) == pytest.approx(0.1 * gamma ** (k + 1))


def test_mmcls_8xb32_imagenet_schedule():
    cfg = load_config("imagenet/resnet50_8xb32")
    steps = 1_281_167 // 256 + 1  # 8 processes x 32 images
    assert scaled_lr(cfg.optim, 8 * cfg.data.batch_size) == pytest.approx(0.1)
    lrs = [lr_at_epoch(cfg, epoch, steps, global_batch=256) for epoch in (0, 29, 30, 60, 90, 99)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.0001, 0.0001])
    assert cfg.train.epochs == 100 and cfg.data.eval_preset == "crop224_resize256"


def test_mmcls_cifar_model_takes_32px_and_keeps_4x4_before_the_pool():
    # the point of the 3x3 stem: no early downsampling, so a 32 px image is 4x4 in the last stage (1x1 in resnet18)
    model = create_model(load_config("cifar10/resnet18_mmcls").model.name).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 32, 32))
        assert features.shape == (1, 512, 4, 4)
        assert create_model("resnet18").eval().forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)
