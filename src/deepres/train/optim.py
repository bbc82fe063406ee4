"""Optimizer factory: SGD (momentum, Nesterov), RMSprop, Adagrad, Adadelta, Adam, AdamW."""
import torch
import torch.nn as nn

from deepres.core.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
    """Trainable parameters in one group, or two with BN weights and biases (ndim <= 1) in a no-decay group."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not exclude_bn_bias or weight_decay == 0:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay, "group": "all"}]
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]  # BN gamma/beta, conv/fc biases
    return [{"params": decay, "weight_decay": weight_decay, "group": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"}]


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build the optimizer named by cfg.name; lr is the peak lr (the schedule overwrites it each step)."""
    groups = param_groups(model, cfg.weight_decay, cfg.wd_exclude_bn_bias)
    eps = {} if cfg.eps is None else {"eps": cfg.eps}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "rmsprop":
        alpha = 0.99 if cfg.alpha is None else cfg.alpha
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=alpha, momentum=cfg.momentum, **eps)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, **eps)
    if cfg.name == "adadelta":
        rho = 0.9 if cfg.alpha is None else cfg.alpha
        return torch.optim.Adadelta(groups, lr=cfg.lr, rho=rho, **eps)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **eps)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **eps)
    raise ValueError(f"optim.name={cfg.name!r}: expected sgd, rmsprop, adagrad, adadelta, adam or adamw")


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The peak lr used: cfg.lr, or with lr_scaling="linear" cfg.lr x global_batch / lr_base_batch (Goyal et al.)."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch / cfg.lr_base_batch
    if cfg.lr_scaling != "none":
        raise ValueError(f"optim.lr_scaling={cfg.lr_scaling!r}: expected 'none' or 'linear'")
    return cfg.lr
