"""BatchNorm momentum settings, including the "dynamic" cumulative-average strategy.

What PyTorch does with momentum=None (torch/nn/modules/batchnorm.py, _BatchNorm.forward): in training
mode it first increments num_batches_tracked to n, then updates
    running = (1 - 1/n) · running + (1/n) · batch_statistic
so after n batches the running mean/var are the plain average of the n per-batch statistics (the variance
term is the unbiased batch variance). The first batch after a reset (n = 1) replaces the initial 0 / 1
values entirely. We reset at every epoch start, so the stats used at evaluation are the average over the
last epoch's batches: momentum 1/(1+k) for the batch that follows k earlier batches of the epoch.
"""
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def set_bn_momentum(model: nn.Module, momentum: float | str | None) -> None:
    """Set every BN layer's momentum: a float, or "dynamic" (PyTorch's momentum=None cumulative average)."""
    value = None if momentum == "dynamic" else momentum
    for bn in batchnorm_layers(model):
        bn.momentum = value


def reset_bn_running_stats(model: nn.Module) -> None:
    """running_mean = 0, running_var = 1, num_batches_tracked = 0 for every BN layer."""
    for bn in batchnorm_layers(model):
        if bn.track_running_stats:
            bn.reset_running_stats()


def freeze_bn_stats(model: nn.Module) -> None:
    """Put every BN layer in eval mode: it normalises with its running statistics and no longer updates them,
    while its weight and bias still train (model.freeze_bn; call after each model.train())."""
    for bn in batchnorm_layers(model):
        bn.eval()
